"""How the optimizer state is stored: ``RMSprop(..., state_precision=)``, per group.

- ``"param"`` (default): every buffer in the parameter's dtype and the maths
  as PyTorch does it (the drop-in promise);
- ``"fp32"``: float32 buffers (complex64 for complex parameters) and float32
  maths, for bfloat16 / float16 parameters: the update is computed from the
  parameter widened to float32 and rounded once when written back;
- ``"bf16"``: bfloat16 buffers (half the bytes of float32), float32 maths.

The algorithm never sees the storage: a path that finds the state in another
dtype than the parameter widens θ, g and the buffers to the *working dtype*
(:func:`working_dtype`), runs the same update, and writes every result back
into its own storage with one rounding (the fused path does this inside its
one pass). The step count is unaffected.
"""

from __future__ import annotations

import torch

__all__ = ["PRECISIONS", "state_dtype", "working_dtype", "check_precision"]

PRECISIONS = ("param", "fp32", "bf16")


def check_precision(precision: object) -> None:
    if precision not in PRECISIONS:
        raise ValueError(
            f"Invalid state_precision value: {precision!r} (one of {', '.join(map(repr, PRECISIONS))})"
        )


def state_dtype(param: torch.Tensor, precision: str) -> torch.dtype:
    """The dtype of ``param``'s buffers under ``precision``."""
    if precision == "param" or not (param.is_floating_point() or param.is_complex()):
        return param.dtype
    if precision == "fp32":
        return torch.complex64 if param.is_complex() else torch.float32
    if param.is_complex():
        raise ValueError("state_precision='bf16' needs real parameters (there is no complex bfloat16)")
    return torch.bfloat16


def working_dtype(param_dtype: torch.dtype, stored: torch.dtype) -> torch.dtype:
    """The dtype the update runs in: the parameter's own when the state shares
    it (PyTorch's behaviour), else the widest of the two and float32."""
    if stored == param_dtype:
        return param_dtype
    return torch.promote_types(torch.promote_types(param_dtype, stored), torch.float32)
