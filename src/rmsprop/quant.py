"""Block-wise 8-bit state: ``RMSprop(..., state_precision="int8")``.

A buffer of n elements is cut into blocks of :data:`BLOCK` consecutive
elements (in the parameter's logical, row-major order; the last block may be
short). Each block keeps one float32 scale, the largest finite magnitude in
it (``absmax``), and each element one 8-bit code for its value relative to that
scale, ``y = x / absmax`` in [−1, 1]. The idea is Dettmers et al.'s
block-wise quantization (8-bit Optimizers via Block-wise Quantization, 2022);
the code maps are this library's own, chosen for what each buffer holds:

- ``square_avg`` (v ≥ 0, with a wide range inside one block when input
  features are scaled unevenly): unsigned codes c ∈ 0…253 with
  ``y = (c/253)⁸``. A code step is 8/c of the value: 3.2% at the block's
  top, 5.6% a hundred times lower, 18% a million times lower; the grid
  reaches down to 6.0e-20 of the block's largest value. A nonzero v always
  gets a code ≥ 1: v read back as 0 would turn ``g/(√v + ε)`` into ``g/ε``.
  The power was measured (``benchmarks/low_memory_quality.py``, whose inputs
  spread v over six decades per block; with the grid's top at 255 then): 1
  (linear) and 2 read the small v far too large and miss fp32 state's loss
  by +60% and +27%; 4 reads them coarsely enough to shift it by −1.2%; 6 and
  8 are within 0.3%, and 8 takes three square roots where 6 needs a pow.
- ``grad_avg`` and ``momentum_buffer`` (signed): int8 codes q ∈ −126…126 with
  ``y = sign(q)·(q/126)²``.

The block's largest finite element always gets the top code, which reads
back as exactly its value; decoding and encoding again to nearest reproduces
every code and scale (tested).

Every value keeps to its own element. The scale is the largest *finite*
magnitude in the block, and what float32 cannot hold takes a code of its
own and reads back as itself: +inf is 255 (±inf ±127 in the signed map),
NaN 254 (−128); a float64 value beyond float32's range is ±inf, as float32
state would store it. So one gradient element of 1e25, whose square
overflows, makes that element's v +inf and it stops moving (u = g/∞ = 0),
exactly as with float32 state, while the rest of its block is encoded as if
it were 0; a NaN gradient under ``nonfinite="propagate"`` leaves NaN in its
own element only. The scales stay finite, so every state the optimizer
writes loads back (:func:`check_stored` is the loader's test). Every code
of either map stands for a value; reserving three costs the grids one
step of resolution (top 253 and 126 instead of 255 and 127), within the
quality benchmark's noise.

What a block cannot hold is *finite* values spread wider than its grid.
After one gradient element of 1e20 (v = 1e38, no overflow) the other v of
its block read back as the grid's floor, 6.0e-20 · 1e38 = 6e18, and those
parameters stall until the spike's v has decayed by α per step; below the
grid's fine part the codes are far apart (code 2 reads 256 times code 1),
and the unbiased rounding then reads their v low most of the time, so they
step up to about 5 times too far for a while. Measured with α = 0.99
(``benchmarks/low_memory_quality.py --outlier``): a spike of 1e5 changes
nothing, 1e10 gives 528 steps of over 2× fp32 state's, 1e20 stalls 4,164
steps below half, then 694 over 2×. Centered, the spike's ḡ sets its
grad_avg block's scale the same way, and a ḡ read far above its value
(the coarse bottom of the signed grid) makes v − ḡ² ≤ 0 and d = ε: after a
spike of only 1e5, steps up to 2e6 times fp32 state's (this holds for an
overflowing g too, whose ḡ = (1 − α)·g is finite).

An optimizer step writes the codes with unbiased stochastic rounding (up
with the probability that makes the decoded value's mean the true one):
with α = 0.99 a step moves v by about 1% of itself, less than half the
grid's spacing, so rounding to nearest leaves v stuck wherever it changes
slowly (measured on the quality benchmark: the first layer's v ends 15% low
in geometric mean, and the loss 1.4% lower than fp32 state's). Conversions (a state
dict loaded from full precision) round to nearest.

Buffers under :data:`MIN_NUMEL` elements stay float32, as bitsandbytes does:
the codes' savings there are smaller than the scale's overhead matters and
those tensors (biases, norms) are the most sensitive.

The optimizer's state holds the two parts as plain tensors under their own
keys, ``f"{key}_codes"`` (uint8 or int8, the parameter's shape) and
``f"{key}_absmax"`` (float32, one per block): state dicts, ``torch.save``
with ``weights_only=True``, pickling and ``share_memory()`` need nothing
special. The paths see a :class:`Blockwise` pair and use
:func:`rmsprop.precision.load` and :func:`rmsprop.precision.store_`, which work
the same for plain tensors: the update itself never knows how its state is
stored. Everything here is plain torch ops, so the fused path compiles the
decoding, the update and the encoding into its pass.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .counter import uniform

__all__ = ["BLOCK", "MIN_NUMEL", "Blockwise", "is_quantized", "quantized", "encode", "decode",
           "check_stored", "stored_dtype", "num_blocks", "CODES", "ABSMAX", "SEED"]

#: Elements per block (one float32 scale each).
BLOCK = 256
#: Buffers with fewer elements than this stay float32.
MIN_NUMEL = 4096

CODES, ABSMAX = "_codes", "_absmax"  # suffixes of a quantized buffer's state keys
#: The seed of the state's stochastic rounding (rmsprop.counter); the step
#: count and the buffer's salt vary the bits.
SEED = 0x5EED

# The grids: y = (c / _U_TOP) ** _U_POWER for square_avg, sign(q)·(|q| / _S_TOP) ** _S_POWER otherwise,
# and the codes above them, reserved for what float32 cannot hold on a grid.
_U_TOP, _U_POWER, _U_NAN, _U_INF = 253, 8, 254, 255
_S_TOP, _S_POWER, _S_NAN, _S_INF = 126, 2, -128, 127  # ±_S_INF is ±inf
_FLOAT32_MAX = torch.finfo(torch.float32).max


class Blockwise(NamedTuple):
    """One quantized buffer as the paths see it: the codes (uint8 for an
    unsigned buffer, int8 for a signed one, the parameter's shape) and the
    float32 block scales."""

    codes: Tensor
    absmax: Tensor

    @property
    def dtype(self) -> torch.dtype:  # the storage's dtype, as a plain buffer's
        return self.codes.dtype


def is_quantized(buf: object) -> bool:
    return isinstance(buf, Blockwise)


def quantized(param: Tensor) -> bool:
    """Whether ``param``'s buffers are 8-bit under state_precision="int8"."""
    return param.numel() >= MIN_NUMEL


def num_blocks(numel: int) -> int:
    return math.ceil(numel / BLOCK)


def stored_dtype(buf: Tensor | Blockwise) -> torch.dtype:
    """The dtype a buffer is stored in: a plain tensor's own, the codes' for a quantized one."""
    return buf.dtype


def _pieces(numel: int) -> list[tuple[int, int, int]]:
    """The blocks as (start, stop, width) runs: the full blocks, then the short
    last one alone. (A short block is never broadcast against its scale inside
    a padded row: Inductor 2.13's CPU code reads the last scale of such a
    broadcast, or of a gather by index // BLOCK, as 0.)"""
    full = numel // BLOCK * BLOCK
    runs = [(0, full, BLOCK)] if full else []
    return runs + [(full, numel, numel - full)] if full < numel else runs


def _root(a: Tensor, power: int) -> Tensor:
    """a ** (1/power), with square roots where they do it (cheaper than pow)."""
    if power == 8:
        return a.sqrt().sqrt().sqrt()
    if power == 4:
        return a.sqrt().sqrt()
    if power == 2:
        return a.sqrt()
    return a if power == 1 else a ** (1 / power)


def _pow(a: Tensor, power: int) -> Tensor:
    """a ** power by multiplications, so every path rounds it the same way."""
    if power == 8:
        sq = a * a
        quad = sq * sq
        return quad * quad
    if power == 4:
        sq = a * a
        return sq * sq
    if power == 2:
        return a * a
    return a if power == 1 else a**power


def _grid(code: Tensor, top: int, power: int) -> Tensor:
    """The value of a code (a real number, ``|code| ≤ top``) on its grid,
    relative to the block's scale: (code / top) ** power, computed with the
    reciprocal of ``top`` (a multiply where a divide costs several times
    more in the fused pass); ``top · (1/top)`` is exactly 1 for both grids,
    so the top code still reads back as exactly the scale."""
    return _pow(code * (1.0 / top), power)


def encode(x: Tensor, signed: bool, rounding: tuple[Tensor, int] | None = None) -> Blockwise:
    """Quantize a real tensor (computed in float32, or float64 for float64 input).

    Without ``rounding`` each value takes the nearest code. With ``rounding =
    (step, salt)`` it takes the code above or below it at random, with the
    probabilities that make the decoded value unbiased (what the optimizer
    steps with); the random numbers are a hash of (step, salt, element)
    (:mod:`rmsprop.counter`), so every path draws the same ones and a resumed
    run draws them again. Values float32 cannot hold take their reserved codes
    and count for no scale.
    """
    work = torch.promote_types(x.dtype, torch.float32)
    flat = x.reshape(-1).to(work)
    noise = None
    if rounding is not None:
        step, salt = rounding
        noise = uniform((flat.numel(),), SEED, step, salt, flat.device).to(work)
    top, power = (_S_TOP, _S_POWER) if signed else (_U_TOP, _U_POWER)
    codes, scales = [], []
    for start, stop, width in _pieces(flat.numel()):
        rows = flat[start:stop].view(-1, width)
        # what float32 holds goes on the grid; ±inf, NaN and float64 beyond float32 take reserved codes
        # (comparisons, not isfinite/isnan: Inductor's CPU code vectorizes them)
        on_grid = rows.abs() <= _FLOAT32_MAX
        finite = torch.where(on_grid, rows, 0)
        absmax = finite.abs().amax(dim=1, keepdim=True)
        y = finite / torch.where(absmax > 0, absmax, 1)
        a = y.abs() if signed else y.clamp_min(0)
        r = _root(a, power) * top  # the code as a real number, in [0, top]
        if noise is None:
            c = torch.round(r)
        else:  # up with probability (a − a_lo)/(a_hi − a_lo): E[decoded] = a
            lo = torch.floor(r).clamp_max(top - 1)
            a_lo, a_hi = _grid(lo, top, power), _grid(lo + 1, top, power)
            c = lo + (noise[start:stop].view(-1, width) * (a_hi - a_lo) < a - a_lo).to(work)
        if signed:
            c = c.copysign(y)
            inf, minus_inf, nan = float(_S_INF), float(-_S_INF), float(_S_NAN)
        else:  # a nonzero v never reads back as 0 (nor −inf as anything but 0)
            c = torch.where(y > 0, c.clamp_min(1), 0)
            inf, minus_inf, nan = float(_U_INF), 0.0, float(_U_NAN)
        off_grid = torch.where(rows > 0, inf, torch.where(rows < 0, minus_inf, nan))  # NaN is neither
        code_dtype = torch.int8 if signed else torch.uint8
        codes.append(torch.where(on_grid, c, off_grid).to(code_dtype).reshape(-1))
        scales.append(absmax.reshape(-1))
    return Blockwise(_cat(codes).view(x.shape), _cat(scales).to(torch.float32))


def _cat(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def decode(buf: Blockwise, dtype: torch.dtype = torch.float32) -> Tensor:
    """The values a quantized buffer stands for, as a ``dtype`` tensor of the codes' shape."""
    flat, scale = buf.codes.reshape(-1), buf.absmax.to(dtype)
    values, block = [], 0
    for start, stop, width in _pieces(flat.numel()):
        rows = flat[start:stop].view(-1, width).to(dtype)
        if buf.codes.dtype == torch.int8:
            y = _grid(rows.abs(), _S_TOP, _S_POWER) * rows.sign()
            off_grid = rows.abs() >= _S_INF
            special = torch.where(rows == _S_NAN, math.nan, rows.sign() * math.inf)
        else:
            y = _grid(rows, _U_TOP, _U_POWER)
            off_grid = rows >= _U_NAN
            special = torch.where(rows == _U_NAN, math.nan, math.inf)
        value = torch.where(off_grid, special.to(dtype), y * scale[block: block + rows.shape[0], None])
        values.append(value.reshape(-1))
        block += rows.shape[0]
    return _cat(values).view(buf.codes.shape)


def check_stored(codes: Tensor, absmax: Tensor, signed: bool) -> str | None:
    """Why loaded codes and scales cannot be used as they are, or None if they can.

    Every code of either map stands for a value (the grid, ±inf or NaN), so
    the codes are checked against their scales instead: the map's dtype, one
    finite, non-negative float32 scale per block, and in each block with a
    nonzero scale an element at the top of the grid (the block's largest
    finite value, which reads back as the scale: :func:`encode` always
    writes it so; codes written before the reserved codes existed fail this).
    The codes' shape is the loader's to check against the parameter.

    Args:
        codes: the codes (uint8 for square_avg, int8 for a signed buffer).
        absmax: the block scales.
        signed: which map: True for grad_avg and momentum_buffer, False for square_avg.

    Returns:
        The reason, a phrase to follow the buffer's name (``"scales negative
        or non-finite"``), or None.

    Example:
        >>> buf = encode(torch.tensor([1e25, 2.0]).square(), signed=False)  # 1e50 overflows
        >>> check_stored(buf.codes, buf.absmax, signed=False) is None
        True
    """
    want = torch.int8 if signed else torch.uint8
    if codes.dtype != want:
        return f"codes of dtype {codes.dtype}; expected {want}"
    blocks = num_blocks(codes.numel())
    if absmax.dtype != torch.float32 or tuple(absmax.shape) != (blocks,):
        return (f"scales of dtype {absmax.dtype} and shape {tuple(absmax.shape)}; "
                f"expected float32 of shape ({blocks},)")
    if not bool((absmax.isfinite() & (absmax >= 0)).all()):
        return "scales negative or non-finite"
    top = _S_TOP if signed else _U_TOP
    magnitude = codes.reshape(-1).to(torch.int16).abs()
    on_grid = torch.where(magnitude <= top, magnitude, 0)
    padded = torch.nn.functional.pad(on_grid, (0, blocks * BLOCK - codes.numel()))
    missing = (absmax.to(codes.device) > 0) & (padded.view(blocks, BLOCK).amax(dim=1) != top)
    if bool(missing.any()):
        return (f"codes that do not fit their scales: block {int(missing.nonzero()[0, 0])} has a nonzero "
                f"scale and no code at the top of the grid ({top}), which its largest finite value takes")
    return None
