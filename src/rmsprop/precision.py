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

``kahan_summation=True`` (bfloat16 parameters, a wider update) keeps one
more tensor per parameter, :data:`KAHAN_COMP` (bfloat16, the parameter's
shape): what rounding θ to bfloat16 lost at the last step. The update runs
on x = θ + c and writes θ ← x' rounded to nearest, c ← x' − θ
(:func:`kahan_read`, :func:`kahan_write_`), so θ + c carries about 16
mantissa bits where θ alone has 8.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch

from . import quant
from .counter import random_bits
from .settings import PRECISIONS, check_precision

__all__ = ["PRECISIONS", "BUFFERS", "Buffer", "BufferSpec", "STATE_KEYS", "state_dtype", "buffer_dtype",
           "working_dtype", "check_precision", "stochastic_round_", "write_param_", "new_buffer",
           "storage_refusal", "to_storage", "restore_", "load", "store_", "get_buffer", "put_buffer",
           "has_buffer", "pop_buffer", "stored_keys", "KAHAN_COMP", "new_comp", "kahan_read", "kahan_write_"]

Buffer = torch.Tensor | quant.Blockwise  # a state buffer as the paths see it


class BufferSpec(NamedTuple):
    """One state buffer: its key (PyTorch's), whether its values have a sign
    (which 8-bit code map it takes), the stream that tells its random bits
    apart from the other buffers' (rmsprop.counter), and whether it is kept
    ``wide``: at the parameter's precision or float32, whichever is wider,
    whatever the group's ``state_precision`` (never 8-bit or bfloat16)."""

    key: str
    signed: bool
    stream: int | None  # None: never rounded stochastically (a wide buffer)
    wide: bool = False


#: The state layout, once: every buffer a parameter's state may hold.
#:
#: The weights' average ``ema`` is wide: its change per step, (1 − δ)·(θ − e),
#: is far below half a bfloat16 step of e at the usual δ ≥ 0.99, so a bfloat16
#: or 8-bit average stops moving (benchmarks/ema_precision.py measures it).
BUFFERS: tuple[BufferSpec, ...] = (
    BufferSpec("square_avg", signed=False, stream=0),
    BufferSpec("grad_avg", signed=True, stream=1),
    BufferSpec("momentum_buffer", signed=True, stream=2),
    BufferSpec("ema", signed=True, stream=None, wide=True),
)
SPEC = {b.key: b for b in BUFFERS}


def stored_keys(key: str) -> tuple[str, ...]:
    """The state keys buffer ``key`` may be stored under: itself, or its 8-bit parts."""
    return (key, key + quant.CODES, key + quant.ABSMAX)


#: The state key of a bfloat16 parameter's Kahan compensation (``kahan_summation=True``):
#: bfloat16, the parameter's shape, whatever ``state_precision`` says.
KAHAN_COMP = "kahan_comp"

#: Every key a parameter's state may hold.
STATE_KEYS = frozenset(("step", KAHAN_COMP, *(k for b in BUFFERS for k in stored_keys(b.key))))


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


def buffer_dtype(param: torch.Tensor, precision: str, key: str) -> torch.dtype:
    """The dtype buffer ``key`` of ``param`` is stored at (or its 8-bit codes decode to)."""
    if SPEC[key].wide:
        return torch.promote_types(param.dtype, torch.complex64 if param.is_complex() else torch.float32)
    return state_dtype(param, precision)


def _quantized(param: torch.Tensor, precision: str, key: str) -> bool:
    """Whether buffer ``key`` of ``param`` is stored as 8-bit codes."""
    return precision == "int8" and not SPEC[key].wide and quant.quantized(param)


def new_buffer(param: torch.Tensor, precision: str, key: str, fill: float = 0.0) -> Buffer:
    """State buffer ``key`` for ``param`` holding ``fill`` everywhere, stored as ``precision`` says."""
    dtype = buffer_dtype(param, precision, key)
    if _quantized(param, precision, key):
        value = torch.full(param.shape, fill, dtype=torch.float32, device=param.device)
        return quant.encode(value, signed=SPEC[key].signed)
    buf = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
    if fill != 0:
        (torch.view_as_real(buf) if buf.is_complex() else buf).fill_(fill)
    return buf


def storage_refusal(param: torch.Tensor, precision: str, stochastic_rounding: bool,
                    kahan_summation: bool) -> str | None:
    """Why ``param`` cannot be stepped and stored as ``precision`` says, or
    None. Asked before a step or a load writes anything: the paths never refuse."""
    dtype = param.dtype
    if not (dtype.is_floating_point or dtype.is_complex):
        return f"parameters must be floating point or complex, not {dtype}"
    if precision == "param" and not stochastic_rounding and not kahan_summation:
        return None
    if kahan_summation and dtype != torch.bfloat16:
        return f"kahan_summation supports bfloat16 parameters, not {str(dtype).removeprefix('torch.')}"
    if param.is_complex() and precision in ("bf16", "int8"):
        return (f"state_precision={precision!r} needs real parameters (there is no complex "
                f"{'bfloat16' if precision == 'bf16' else '8-bit state'}); this one is {param.dtype}")
    plain = type(param) in (torch.Tensor, torch.nn.Parameter)
    if precision == "int8" and quant.quantized(param) and not plain:
        # FSDP2's DTensor: blocks cut per shard would not reshard.
        return (f"state_precision='int8' does not support {type(param).__name__} parameters: its blocks "
                "would be cut per shard, so a state dict would not reshard; use 'bf16' (e.g. under FSDP2)")
    if stochastic_rounding and param.dtype in (torch.float16, torch.complex32):
        return (f"stochastic_rounding supports bfloat16 parameters (wider ones are written as they are), "
                f"not {param.dtype}")
    return None


def to_storage(values: torch.Tensor, param: torch.Tensor, precision: str, key: str) -> Buffer:
    """Full-precision ``values`` of buffer ``key`` in the form ``precision``
    stores them for ``param``: encoded to nearest (at the parameter's
    precision, float32 at least), rounded, or copied: one rounding."""
    if _quantized(param, precision, key):
        wide = torch.promote_types(param.dtype, torch.float32)
        return quant.encode(values.to(device=param.device, dtype=wide), signed=SPEC[key].signed)
    return values.to(device=param.device, dtype=buffer_dtype(param, precision, key), copy=True)


def in_storage(buf: Buffer, param: torch.Tensor, precision: str, key: str = "square_avg") -> bool:
    """Whether ``buf`` (buffer ``key``) is already in the form ``precision`` stores for ``param``."""
    if _quantized(param, precision, key):
        return quant.is_quantized(buf)
    return not quant.is_quantized(buf) and buf.dtype == buffer_dtype(param, precision, key)


def restore_(state: dict[str, Any], param: torch.Tensor, precision: str,
             raw: dict[str, Any] | None = None) -> None:
    """Put one parameter's buffers into the form ``precision`` stores them in.

    ``raw`` holds the buffers as a file had them (PyTorch's loader casts
    every state tensor to its parameter's dtype, 8-bit codes included); by
    default the state's own. A buffer already in its storage form is kept
    (taken exactly from ``raw``); any other is decoded or widened to float32
    (float64 for float64 parameters) and stored anew. So a full-precision
    state loads into an int8 optimizer and the other way round, and a
    group's changed ``state_precision`` converts its state at the next step.
    """
    source_state = state if raw is None else raw
    for spec in BUFFERS:
        source = get_buffer(source_state, spec.key)
        if source is None:
            continue
        if in_storage(source, param, precision, spec.key):
            if raw is None:
                continue
            copy = functools.partial(torch.Tensor.to, device=param.device, copy=True)
            buf: Buffer = (quant.Blockwise(*(copy(x).contiguous() for x in source))
                           if quant.is_quantized(source) else copy(source))
        else:
            wide = param.dtype if param.is_complex() else torch.promote_types(param.dtype, torch.float32)
            buf = to_storage(load(source, wide), param, precision, spec.key)
        put_buffer(state, spec.key, buf)


_CODES_KEY = {b.key: b.key + quant.CODES for b in BUFFERS}
_ABSMAX_KEY = {b.key: b.key + quant.ABSMAX for b in BUFFERS}


def has_buffer(state: dict[str, Any], key: str) -> bool:
    return key in state or _CODES_KEY[key] in state


def get_buffer(state: dict[str, Any], key: str) -> torch.Tensor | quant.Blockwise | None:
    """The buffer ``key`` of one parameter's state, as the paths take it (None if absent)."""
    buf = state.get(key)
    if buf is None and _CODES_KEY[key] in state:
        return quant.Blockwise(state[_CODES_KEY[key]], state[_ABSMAX_KEY[key]])
    return buf


def put_buffer(state: dict[str, Any], key: str, buf: torch.Tensor | quant.Blockwise) -> None:
    """Set the buffer ``key`` of one parameter's state, replacing any other form of it."""
    pop_buffer(state, key)
    if isinstance(buf, quant.Blockwise):
        state[key + quant.CODES], state[key + quant.ABSMAX] = buf.codes, buf.absmax
    else:
        state[key] = buf


def pop_buffer(state: dict[str, Any], key: str) -> torch.Tensor | quant.Blockwise | None:
    buf = get_buffer(state, key)
    for name in (key, key + quant.CODES, key + quant.ABSMAX):
        state.pop(name, None)
    return buf


def working_dtype(param_dtype: torch.dtype, stored: torch.dtype, precision: str = "param",
                  kahan: bool = False) -> torch.dtype:
    """The dtype the update runs in: under ``precision="param"`` the parameter's
    own, where its state is stored too (PyTorch's behaviour); under any other
    state precision, the widest of the parameter's dtype, the state's and
    float32, even where the state is stored in the parameter's dtype
    (``"bf16"`` state of bfloat16 parameters: float32 maths, as for every
    parameter dtype). With a Kahan compensation (``kahan``), float32 at least,
    which holds θ + c exactly."""
    if precision == "param" and stored == param_dtype and not kahan:
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
                 ident: int) -> None:
    """Write an updated parameter back: stochastically rounded when a seed is
    given and a bfloat16 parameter was updated wider, else rounded to nearest.
    ``ident`` is the parameter's stable identity (its index in the optimizer,
    as state dicts number it), so every path and mode draws the same bits.
    (Other dtypes were refused before the step: :func:`storage_refusal`.)"""
    if rounding_seed is None or dest.dtype != torch.bfloat16 or dest.dtype == value.dtype:
        dest.copy_(value)
    else:
        stochastic_round_(dest, value, rounding_seed, step, _salt(ident, _PARAM_STREAM))


# ------------------------------------------------------------ Kahan-compensated parameters
def new_comp(param: torch.Tensor) -> torch.Tensor:
    """A fresh compensation for bfloat16 ``param``: zeros, so that x = θ."""
    return torch.zeros_like(param, dtype=torch.bfloat16, memory_format=torch.preserve_format)


def kahan_read(param: torch.Tensor, comp: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The weight the update runs on, at ``dtype``: θ widened, plus its
    compensation c when it keeps one, x = θ + c (exact in float32: |c| is
    at most half a bfloat16 step of θ)."""
    x = param.to(dtype)
    return x if comp is None else x + comp.to(dtype)


def kahan_write_(param: torch.Tensor, comp: torch.Tensor, value: torch.Tensor,
                 keep: torch.Tensor | None = None) -> None:
    """Write the updated weight x' (float32) back as θ ← x' rounded to the
    nearest bfloat16 and c ← x' − θ rounded to bfloat16 (0 where θ is not
    finite, so an overflowed θ stays ±inf rather than turning NaN). Where the
    0-d bool ``keep`` is given and False, neither changes."""
    value = value.float()
    rounded = _nearest_bf16(value)
    residual = torch.where(rounded.isfinite(), value - rounded, 0.0)  # exact: the two are that close
    if keep is not None:
        rounded, residual = torch.where(keep, rounded, param), torch.where(keep, residual, comp)
    param.copy_(rounded)
    comp.copy_(residual)


def _nearest_bf16(value: torch.Tensor) -> torch.Tensor:
    """float32 ``value`` rounded to the nearest bfloat16 (ties to even), as
    float32: ``value.to(torch.bfloat16)``'s bits, computed on the integer
    bits because Inductor drops a ``.to(bfloat16).to(float32)`` pair inside
    a fused pass, which would make every residual 0. NaN stays NaN."""
    bits = value.contiguous().view(torch.int32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).view(torch.float32)
    return torch.where(value.isnan(), value, rounded)


# ------------------------------------------------------------ reading and writing state
def load(buf: torch.Tensor | quant.Blockwise, dtype: torch.dtype) -> torch.Tensor:
    """A buffer's values at ``dtype``: widened, or decoded."""
    return quant.decode(buf, dtype) if isinstance(buf, quant.Blockwise) else buf.to(dtype)


def store_(buf: Buffer, value: torch.Tensor, keep: torch.Tensor | None = None,
           rounding: tuple[torch.Tensor, int] | None = None, key: str = "square_avg") -> None:
    """Write a step's new ``value`` of buffer ``key`` into its storage: copied, rounded or encoded.

    Where the 0-d bool ``keep`` is given and False, the buffer is left as it
    was. Given ``rounding = (step, ident)`` (the step count, a tensor, and
    the parameter's identity: its index in the optimizer), 8-bit codes are
    written with unbiased stochastic rounding (:func:`rmsprop.quant.encode`;
    a plain buffer is rounded to nearest). The random bits are a hash of
    (step, parameter, buffer, element) (:mod:`rmsprop.counter`): every path
    and mode draws the same ones, whatever the grouping, and a resumed run
    draws them again.
    """
    parts: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (storage, its new value)
    if isinstance(buf, quant.Blockwise):
        stream = SPEC[key].stream
        assert stream is not None, f"{key} is never stored as 8-bit codes"
        salt = None if rounding is None else (rounding[0], _salt(rounding[1], stream))
        new = quant.encode(value, signed=SPEC[key].signed, rounding=salt)
        parts = ((buf.codes, new.codes), (buf.absmax, new.absmax))
    else:
        parts = ((buf, value),)
    for dest, new_value in parts:
        dest.copy_(new_value if keep is None else torch.where(keep, new_value, dest))


_PARAM_STREAM = 3  # the parameter's own rounding, after the streams of the buffers that are rounded


def _salt(ident: int, stream: int) -> int:
    """One salt per (parameter, stream): a buffer's stream, or _PARAM_STREAM."""
    return ident * (_PARAM_STREAM + 1) + stream
