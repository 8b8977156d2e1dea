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

__all__ = ["PRECISIONS", "state_dtype", "working_dtype", "check_precision", "stochastic_round_",
           "write_param_"]

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


# ------------------------------------------------------------ stochastic rounding
# Counter-based randomness (the idea of Salmon et al.'s Philox/Threefry, with
# a much simpler mixer): the random bits of element j of a tensor at step t are
# a hash of (seed, t, the tensor's position, j), computed with integer tensor
# ops. Nothing to store: the seed lives in the param group and the step count
# in the state, so a resumed run draws the same bits; and the same code runs
# eagerly and inside the fused path's compiled pass (where the index costs no
# memory traffic). Every intermediate stays below 2**62, so int64 never wraps.
_M31 = 0x7FFFFFFF


def _mix(h: torch.Tensor) -> torch.Tensor:
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & _M31
    h = ((h ^ (h >> 12)) * 0x297A2D39) & _M31
    return h ^ (h >> 15)


def stochastic_round_(dest: torch.Tensor, value: torch.Tensor, seed: int, step: torch.Tensor,
                      salt: int) -> None:
    """Write float32 ``value`` into bfloat16 ``dest``, rounding up or down at
    random with the probabilities that make the result unbiased: a float32
    keeps 16 more mantissa bits than a bfloat16, so adding 16 random bits
    below the cut and truncating rounds up with probability equal to the
    dropped fraction. Non-finite values round to nearest."""
    index = torch.arange(value.numel(), device=value.device, dtype=torch.int64).view(value.shape)
    t = step.to(device=value.device, dtype=torch.int64)
    base = (((t & _M31) * 0x5BD1E995) & _M31) + (((seed & _M31) * 0x1B873593) & _M31)
    base = (base + ((salt & _M31) * 0x27D4EB2F & _M31)) & _M31
    noise = (_mix((index + base) & _M31) & 0xFFFF).to(torch.int32)
    bits = value.float().contiguous().view(torch.int32)
    rounded = ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)
    dest.copy_(torch.where(value.isfinite(), rounded, value.to(torch.bfloat16)))


def write_param_(dest: torch.Tensor, value: torch.Tensor, rounding_seed: int | None, step: torch.Tensor,
                 salt: int) -> None:
    """Write an updated parameter back: stochastically rounded when a seed is
    given and a bfloat16 parameter was updated wider, else rounded to nearest."""
    if rounding_seed is None or dest.dtype == value.dtype:
        dest.copy_(value)
    elif dest.dtype == torch.bfloat16:
        stochastic_round_(dest, value, rounding_seed, step, salt)
    else:
        raise ValueError(f"stochastic_rounding supports bfloat16 parameters, not {dest.dtype}")
