"""How the optimizer state is stored: ``RMSprop(..., state_precision=)``, per group.

- ``"param"`` (default): every buffer in the parameter's dtype and the maths
  as PyTorch does it (the drop-in promise);
- ``"fp32"``: float32 buffers (complex64 for complex parameters) and float32
  maths, for bfloat16 / float16 parameters: the update is computed from the
  parameter widened to float32 and rounded once when written back;
- ``"bf16"``: bfloat16 buffers (half the bytes of float32), float32 maths;
- ``"int8"``: block-wise 8-bit buffers (:mod:`rmsprop.quant`: a byte per
  element and a float32 scale per 256), float32 maths; buffers under 4096
  elements stay float32.

The algorithm never sees the storage: a path that finds the state in another
dtype than the parameter widens θ, g and the buffers to the *working dtype*
(:func:`working_dtype`), runs the same update, and writes every result back
into its own storage with one rounding (the fused path does this inside its
one pass). The step count is unaffected. :func:`get_buffer` and
:func:`put_buffer` are the one place that knows how a buffer sits in the
optimizer's state: a plain tensor under its key (``state["square_avg"]``) or,
quantized, two plain tensors under ``"square_avg_codes"`` and
``"square_avg_absmax"``.
"""

from __future__ import annotations

from typing import Any

import torch

from . import quant
from .counter import random_bits

__all__ = ["PRECISIONS", "state_dtype", "working_dtype", "check_precision", "stochastic_round_",
           "write_param_", "new_buffer", "check_quantizable", "load", "store_", "get_buffer", "put_buffer",
           "has_buffer", "pop_buffer"]

PRECISIONS = ("param", "fp32", "bf16", "int8")


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
        raise ValueError(f"state_precision={precision!r} needs real parameters (there is no complex "
                         f"{'bfloat16' if precision == 'bf16' else '8-bit state'})")
    # int8: the dtype of the buffers kept plain; larger ones hold 8-bit codes (new_buffer)
    return torch.float32 if precision == "int8" else torch.bfloat16


def new_buffer(param: torch.Tensor, precision: str, signed: bool, fill: float = 0.0
               ) -> torch.Tensor | quant.Blockwise:
    """A state buffer for ``param`` holding ``fill`` everywhere, stored as
    ``precision`` says; ``signed`` is False for square_avg (it picks the 8-bit code map)."""
    dtype = state_dtype(param, precision)
    if precision == "int8" and quant.quantized(param):
        check_quantizable(param)
        value = torch.full(param.shape, fill, dtype=torch.float32, device=param.device)
        return quant.encode(value, signed=signed)
    buf = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
    if fill != 0:
        (torch.view_as_real(buf) if buf.is_complex() else buf).fill_(fill)
    return buf


def check_quantizable(param: torch.Tensor) -> None:
    """Raise for parameters whose state cannot be 8-bit: tensor subclasses
    such as FSDP2's DTensor, whose blocks would be cut per shard."""
    if type(param) not in (torch.Tensor, torch.nn.Parameter):
        raise ValueError(
            f"state_precision='int8' does not support {type(param).__name__} parameters: its blocks "
            "would be cut per shard, so a state dict would not reshard; use 'bf16' (e.g. under FSDP2)"
        )


def has_buffer(state: dict[str, Any], key: str) -> bool:
    return key in state or key + quant.CODES in state


def get_buffer(state: dict[str, Any], key: str) -> torch.Tensor | quant.Blockwise | None:
    """The buffer ``key`` of one parameter's state, as the paths take it (None if absent)."""
    if key + quant.CODES in state:
        return quant.Blockwise(state[key + quant.CODES], state[key + quant.ABSMAX])
    return state.get(key)


def put_buffer(state: dict[str, Any], key: str, buf: torch.Tensor | quant.Blockwise) -> None:
    """Set the buffer ``key`` of one parameter's state, replacing any other form of it."""
    pop_buffer(state, key)
    if quant.is_quantized(buf):
        state[key + quant.CODES], state[key + quant.ABSMAX] = buf.codes, buf.absmax
    else:
        state[key] = buf


def pop_buffer(state: dict[str, Any], key: str) -> torch.Tensor | quant.Blockwise | None:
    buf = get_buffer(state, key)
    for name in (key, key + quant.CODES, key + quant.ABSMAX):
        state.pop(name, None)
    return buf


def working_dtype(param_dtype: torch.dtype, stored: torch.dtype) -> torch.dtype:
    """The dtype the update runs in: the parameter's own when the state shares
    it (PyTorch's behaviour), else the widest of the two and float32."""
    if stored == param_dtype:
        return param_dtype
    return torch.promote_types(torch.promote_types(param_dtype, stored), torch.float32)


# ------------------------------------------------------------ stochastic rounding
# The random bits come from rmsprop.counter: a hash of (seed, step, salt, element).


def stochastic_round_(dest: torch.Tensor, value: torch.Tensor, seed: int, step: torch.Tensor,
                      salt: int) -> None:
    """Write float32 ``value`` into bfloat16 ``dest``, rounding up or down at
    random with the probabilities that make the result unbiased: a float32
    keeps 16 more mantissa bits than a bfloat16, so adding 16 random bits
    below the cut and truncating rounds up with probability equal to the
    dropped fraction. Non-finite values round to nearest."""
    noise = (random_bits(value.shape, seed, step, salt, value.device) & 0xFFFF).to(torch.int32)
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


# ------------------------------------------------------------ reading and writing state
def load(buf: torch.Tensor | quant.Blockwise, dtype: torch.dtype) -> torch.Tensor:
    """A buffer's values at ``dtype``: widened, or decoded."""
    return quant.decode(buf, dtype) if quant.is_quantized(buf) else buf.to(dtype)


def store_(buf: torch.Tensor | quant.Blockwise, value: torch.Tensor, keep: torch.Tensor | None = None,
           step: torch.Tensor | None = None, stream: int = 0) -> None:
    """Write a step's new ``value`` into a buffer's storage: copied, rounded or encoded.

    Where the 0-d bool ``keep`` is given and False, the buffer is left as it
    was. Given ``step`` (the step count, a tensor), 8-bit codes are written
    with unbiased stochastic rounding (:func:`rmsprop.quant.encode`; a plain
    buffer is rounded to nearest). The random bits are a hash of (step,
    ``stream``, the tensor's size, element) (:mod:`rmsprop.counter`): every
    path draws the same ones, whatever the grouping, and a resumed run draws
    them again. ``stream`` tells a parameter's buffers apart (0 square_avg,
    1 grad_avg, 2 momentum_buffer).
    """
    salt = stream * 0x9E3779B1 + value.numel()
    if quant.is_quantized(buf):
        new = quant.encode(value, signed=buf.codes.dtype == torch.int8,
                           rounding=None if step is None else (step, salt))
        parts = ((buf.codes, new.codes), (buf.absmax, new.absmax))
    else:
        parts = ((buf, value),)
    for dest, new_value in parts:
        dest.copy_(new_value if keep is None else torch.where(keep, new_value, dest))
