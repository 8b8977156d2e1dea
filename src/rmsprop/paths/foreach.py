"""The foreach path: the update restated with ``torch._foreach_*`` ops.

Tensors are grouped by device and dtype and every line of the formula runs as
one multi-tensor op over the group. This is the one place the maths is written
a second time; ``tests/test_paths.py`` holds it to :func:`rmsprop.engine.rmsprop_update`
in float64. The numbers (0)…(16) are those of :class:`rmsprop.RMSprop`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import cast, overload

import torch
from torch import Tensor

from ..engine import (
    Hyper,
    Scalar,
    average,
    bias_correction_factor,
    clip_adaptive,
    denominator_can_vanish,
    ema_weight,
)
from ..precision import BUFFERS, Buffer, kahan_read, kahan_write_, load, store_, working_dtype, write_param_
from ..quant import is_quantized, stored_dtype
from .grouping import StepTensors, by_device_and_dtype

__all__ = ["foreach_step"]

TensorList = list[Tensor] | tuple[Tensor, ...]  # what the torch._foreach_* ops take (they return tuples)


def foreach_step(t: StepTensors, hyper: Hyper, *, finite: Tensor | None = None,
                 rounding_seed: int | None = None, grad_scale: Tensor | None = None,
                 state_precision: str = "param") -> None:
    """Apply one step to all tensors, one multi-tensor op per formula line.
    Nothing happens where ``finite`` is a False tensor (read on the host)."""
    if not t.params or (finite is not None and not bool(finite)):
        return
    centered, use_momentum = hyper.centered, bool(hyper.momentum != 0)
    for _, dtype, group in by_device_and_dtype(t, centered, use_momentum):
        p, g, v, m, b, steps, idents = group.params, group.grads, group.square_avgs, group.grad_avgs, \
            group.momentum_buffers, group.steps, group.idents
        e, c = group.emas, group.comps
        scale, h = grad_scale, hyper
        if dtype.is_complex:  # complex state is never 8-bit (rmsprop.precision.storage_refusal)
            # (0') reads each unit's norm, which the real view would split: clip first
            g, scale, h = list(_clipped(g, p, hyper, grad_scale)), None, hyper._replace(agc_clip=0.0)
            p, g, v = _real(p), _real(g), _real(_plain(v))
            m, b = _real(_plain(m)), _real(_plain(b))
        stored = stored_dtype(v[0])
        work = working_dtype(p[0].dtype, stored, state_precision, bool(c))  # (rmsprop.precision)
        for chunk in _chunks(p):
            ps, gs, vs = p[chunk], g[chunk], v[chunk]
            ms = m[chunk] if centered else None
            bs = b[chunk] if use_momentum else None
            es = e[chunk] if e else None
            cs = c[chunk] if c else None  # Kahan: x = θ + c
            if work == p[0].dtype and work == stored:  # plain state in θ's own dtype
                _step_group(ps, _clipped(gs, ps, h, scale), _plain(vs), _plain(ms), _plain(bs),
                            steps[chunk], hyper)
                _average(es, ps, steps[chunk], hyper)
            else:  # widen (or decode) a cache-sized chunk, step it, round (or encode) each result once
                xs = _load(ps, work) if cs is None else [kahan_read(x, y, work) for x, y in zip(ps, cs)]
                wide = (xs, _load(gs, work), _load(vs, work), _load(ms, work), _load(bs, work))
                _step_group(wide[0], _clipped(wide[1], wide[0], h, scale), *wide[2:], steps[chunk], hyper)
                _average(es, wide[0], steps[chunk], hyper)
                for spec, bufs, values in zip(BUFFERS, (vs, ms, bs), wide[2:]):  # v, ḡ, b
                    if bufs is None:
                        continue
                    assert values is not None  # loaded from bufs
                    if is_quantized(bufs[0]):  # 8-bit codes (rmsprop.precision.store_)
                        for buf, value, step, ident in zip(bufs, values, steps[chunk], idents[chunk]):
                            store_(buf, value, rounding=(step, ident), key=spec.key)
                    else:
                        torch._foreach_copy_(_plain(bufs), values)
                if cs is not None:
                    for param, comp, new in zip(ps, cs, wide[0]):
                        kahan_write_(param, comp, new)
                elif rounding_seed is None:
                    torch._foreach_copy_(ps, wide[0])
                else:
                    for param, new, step, ident in zip(ps, wide[0], steps[chunk], idents[chunk]):
                        write_param_(param, new, rounding_seed, step, ident)


# On CPU a foreach op is a loop over its tensors: each op streams every tensor
# of the group before the next op starts, so a group larger than the cache is
# read from memory once per op. Running the formula on cache-sized chunks of
# tensors (cache blocking) keeps each chunk in cache from line (1) to (14).
# Devices with real multi-tensor kernels (CUDA) take the group whole.
# `make bench` compares the chunk sizes; 2**18 elements (1 MiB of fp32) won.
CPU_CHUNK_NUMEL = 1 << 18


def _chunks(params: list[Tensor]) -> list[slice]:
    """Slices of ``params`` to step together: the whole list off CPU, else
    consecutive runs of at most CPU_CHUNK_NUMEL elements (a larger tensor
    alone), never cut between two listings of one tensor: a parameter listed
    twice is stepped line by line as in one foreach call, as PyTorch's foreach
    path steps it, at every size."""
    if not params or not params[0].is_cpu or sum(p.numel() for p in params) <= CPU_CHUNK_NUMEL:
        return [slice(0, len(params))]
    last = {id(p): i for i, p in enumerate(params)}
    chunks, start, size, reach = [], 0, 0, -1  # reach: the last listing of a tensor in this chunk
    for i, p in enumerate(params):
        if size and size + p.numel() > CPU_CHUNK_NUMEL and i > reach:
            chunks.append(slice(start, i))
            start, size = i, 0
        size += p.numel()
        reach = max(reach, last[id(p)])
    chunks.append(slice(start, len(params)))
    return chunks


def _step_group(p: TensorList, g: TensorList, v: TensorList, m: TensorList | None, b: TensorList | None,
                t: TensorList, hyper: Hyper) -> None:
    # lr is a 0-d tensor when the group is capturable; the other knobs are Python numbers (validated
    # groups), which the `type: ignore`s below pass where torch's stubs type a Scalar as a number only
    # (its parser takes a 0-d tensor too).
    lr, alpha, eps, wd, mu = hyper.lr, hyper.alpha, hyper.eps, hyper.weight_decay, hyper.momentum

    if t[0].is_cpu:  # one wrapped scalar instead of one per tensor on the slow path
        torch._foreach_add_(t, _CPU_ONE, alpha=1.0)
    else:
        torch._foreach_add_(t, 1)

    if hyper.maximize:
        g = torch._foreach_neg(g)  # (1)
    if wd != 0:
        if hyper.decoupled_weight_decay:
            _scale_(p, 1 - lr * wd)  # (2) θ ← θ·(1 − η·λ)
        else:
            g = torch._foreach_add(g, p, alpha=wd)  # type: ignore[arg-type]  # (3) g ← g + λ·θ

    if hyper.op_order == "tf":  # (4) v ← v + (1 − α)·(g² − v)
        change = torch._foreach_mul(g, g)
        torch._foreach_sub_(change, v)
        torch._foreach_add_(v, change, alpha=1 - alpha)  # type: ignore[arg-type]
    else:
        _scale_(v, alpha)  # (4) v ← α·v + (1 − α)·g²
        torch._foreach_addcmul_(v, g, g, value=1 - alpha)  # type: ignore[arg-type]
    if m is not None:
        if hyper.op_order == "tf":  # (5) ḡ ← ḡ + (1 − α)·(g − ḡ)
            torch._foreach_add_(m, torch._foreach_sub(g, m), alpha=1 - alpha)  # type: ignore[arg-type]
        elif hyper.op_order == "torch-1.5":  # (5) ḡ ← α·ḡ + (1 − α)·g
            _scale_(m, alpha)
            torch._foreach_add_(m, g, alpha=1 - alpha)  # type: ignore[arg-type]
        else:
            torch._foreach_lerp_(m, g, 1 - alpha)  # type: ignore[arg-type]  # (5) ḡ ← ḡ + (1 − α)(g − ḡ)

    v_hat, m_hat = v, m
    if hyper.bias_correction:  # (6) v̂ ← v/(1 − αᵗ), ḡ̂ ← ḡ/(1 − αᵗ)
        corrections = [bias_correction_factor(alpha, s, x) for s, x in zip(t, p)]
        v_hat = _same_dtype(torch._foreach_div(v, corrections), v)
        if m is not None:
            m_hat = _same_dtype(torch._foreach_div(m, corrections), m)

    if m_hat is not None:  # (7) r ← v̂ − ḡ̂²
        denom = torch._foreach_addcmul(v_hat, m_hat, m_hat, value=-1)
        if hyper.eps_in_sqrt:  # (8) d ← sqrt(max(r + ε, 0))
            _plus_(denom, eps)
            torch._foreach_clamp_min_(denom, 0)
            torch._foreach_sqrt_(denom)
        else:  # (8) d ← sqrt(max(r, 0)) + ε
            torch._foreach_clamp_min_(denom, 0)
            torch._foreach_sqrt_(denom)
            _plus_(denom, eps)
    elif hyper.eps_in_sqrt:  # (8) d ← sqrt(v̂ + ε)
        denom = _plus(v_hat, eps)
        torch._foreach_sqrt_(denom)
    else:  # (8) d ← sqrt(v̂) + ε
        denom = torch._foreach_sqrt(v_hat)
        _plus_(denom, eps)

    if denominator_can_vanish(hyper, denom[0].dtype):  # (9) u = 0 where d = 0
        _zero_to_infinity(denom)

    if b is None:  # (10) θ ← θ − η·u, u = g/d  (9)
        if isinstance(lr, Tensor):
            torch._foreach_add_(p, torch._foreach_mul(torch._foreach_div(g, denom), -lr))
        else:
            torch._foreach_addcdiv_(p, g, denom, value=-lr)
        return

    _scale_(b, mu)
    inc: TensorList
    if hyper.lr_in_momentum:
        if isinstance(lr, Tensor):  # (13) b ← μ·b + η·u
            torch._foreach_add_(b, torch._foreach_mul(torch._foreach_div(g, denom), lr))
        else:
            torch._foreach_addcdiv_(b, g, denom, value=lr)
        if hyper.nesterov:  # (14') θ ← θ − (η·u + μ·b)
            inc = torch._foreach_mul(b, _operand(mu, b))
            if isinstance(lr, Tensor):
                torch._foreach_add_(inc, torch._foreach_mul(torch._foreach_div(g, denom), lr))
            else:
                torch._foreach_addcdiv_(inc, g, denom, value=lr)
        else:  # (14) θ ← θ − b
            inc = b
        if hyper.caution:
            inc = _cautious(inc, g)  # (15)
        torch._foreach_sub_(p, inc)
        return

    torch._foreach_addcdiv_(b, g, denom)  # (11) b ← μ·b + u
    if hyper.nesterov:  # (12') θ ← θ − η·(u + μ·b)
        inc = torch._foreach_mul(b, _operand(mu, b))
        torch._foreach_addcdiv_(inc, g, denom)
    else:  # (12) θ ← θ − η·b
        inc = b
    if hyper.caution:
        inc = _cautious(inc, g)  # (15)
    if isinstance(lr, Tensor):
        torch._foreach_add_(p, torch._foreach_mul(inc, -lr))
    else:
        torch._foreach_add_(p, inc, alpha=-lr)


def _clipped(g: TensorList, p: TensorList, hyper: Hyper, grad_scale: Tensor | None) -> TensorList:
    """(0) and (0'): the gradients scaled to the global norm, then clipped per
    unit (new tensors; the gradients themselves stay as they are)."""
    if grad_scale is not None:
        g = _same_dtype(torch._foreach_mul(g, grad_scale), g)  # (0), at each gradient's dtype
    if hyper.agc_clip != 0:
        g = [clip_adaptive(x, w, hyper.agc_clip) for x, w in zip(g, p)]  # (0')
    return g


def _average(e: Sequence[Tensor] | None, p: TensorList, t: TensorList, hyper: Hyper) -> None:
    """(16) e ← e + w·(θ − e) for each tensor, with its own step's weight (after the update)."""
    if e is None:
        return
    for ema, param, step in zip(e, p, t):
        weight = ema_weight(hyper, step)
        if isinstance(weight, Tensor) or weight != 0:  # (θ, a complex one's real view, after the update)
            ema.copy_(average(ema, torch.view_as_complex(param) if ema.is_complex() else param, weight))


def _same_dtype(results: TensorList, like: TensorList) -> TensorList:
    """Each result at its input's dtype, as the engine rounds it: a 0-d input
    multiplied by the factor of (0) or divided by that of (6) promotes to the
    factor's wider dtype (two 0-d tensors promote as equals), where a tensor
    of any other shape keeps its own."""
    if all(r.dtype == x.dtype for r, x in zip(results, like)):
        return results
    return [r.to(x.dtype) for r, x in zip(results, like)]


def _cautious(steps: TensorList, g: TensorList) -> TensorList:
    """(15) s ⊙ c/max(mean(c), 10⁻³), c = [s·g > 0], per tensor: a new list, b untouched."""
    masks = [(x > 0).to(y.dtype) for x, y in zip(torch._foreach_mul(steps, g), g)]
    shares = [mask.mean() for mask in masks]
    torch._foreach_maximum_(shares, 1e-3)
    torch._foreach_div_(masks, shares)
    return torch._foreach_mul(steps, masks)


_CPU_ONE = torch.tensor(1.0)  # read only
_HALF = (torch.float16, torch.bfloat16)


def _scale_(tensors: TensorList, factor: Scalar) -> None:
    """x ← x·factor in place, rounded as ``Tensor.mul_`` (and the engine) round it.

    PyTorch's in-place foreach multiply by a number rounds the number to a
    float16 or bfloat16 tensor's dtype first (on CPU, torch 2.13: α = 0.99
    becomes 0.98828125 in bfloat16), where every other op keeps it at float
    precision; those dtypes take the out-of-place op, which does not.
    """
    if tensors[0].dtype in _HALF:
        torch._foreach_copy_(tensors, torch._foreach_mul(tensors, factor))
    else:
        torch._foreach_mul_(tensors, _operand(factor, tensors))


def _zero_to_infinity(denom: TensorList) -> None:
    """d ← +∞ where d = 0, in place, so that u = g/d is 0 there (line (9))."""
    if denom[0].is_cpu:
        _zero_to_infinity_by_search(denom)
    else:
        _zero_to_infinity_by_arithmetic(denom)


def _zero_to_infinity_by_search(denom: Sequence[Tensor]) -> None:
    """On CPU: read the smallest d of each tensor (one pass, nothing allocated:
    a new tensor costs CPU memory a pass of page faults) and rewrite only the
    tensors that hold a zero, or a NaN (which could hide one). Reading a CPU
    value back is no device sync."""
    nonempty = [d for d in denom if d.numel()]
    if not nonempty:
        return
    lowest = torch.stack([d.amin() for d in nonempty])
    for i in (~(lowest > 0)).nonzero().flatten().tolist():
        nonempty[i].masked_fill_(nonempty[i] == 0, math.inf)


def _zero_to_infinity_by_arithmetic(denom: TensorList) -> None:
    """With no host read: d + (1/sign(d) − 1) is d where d > 0 (1/1 − 1 = 0)
    and +∞ where d = 0 (1/0 − 1); NaN stays NaN."""
    shift = torch._foreach_sign(denom)
    torch._foreach_reciprocal_(shift)
    torch._foreach_add_(shift, -1.0)
    torch._foreach_add_(denom, shift)

# On CPU the Scalar overloads of _foreach_mul_/_foreach_add_ wrap the number
# into a tensor once per tensor of the list (about 3 µs each: most of a small
# model's step), while the Tensor overloads take one 0-d tensor for the whole
# list. For float32 and float64 tensors a 0-d tensor of their own dtype holds
# exactly the number the Scalar overload computes with, so the bits are the
# same (tests/test_torch_dropin.py); narrower dtypes compute a Python number
# at float32, which a 0-d tensor of theirs would round first: they keep it.
_SAME_BITS = (torch.float32, torch.float64)


@functools.lru_cache(maxsize=256)
def _constant(value: float, dtype: torch.dtype) -> Tensor:
    return torch.tensor(value, dtype=dtype)  # read only


def _operand(x: Scalar, tensors: Sequence[Tensor]) -> Scalar:
    """``x`` for a multi-tensor op over ``tensors``, in its fastest exact form."""
    if isinstance(x, Tensor) or not tensors or not tensors[0].is_cpu or tensors[0].dtype not in _SAME_BITS:
        return x
    return _constant(float(x), tensors[0].dtype)


def _plus(tensors: TensorList, x: Scalar) -> tuple[Tensor, ...]:
    """``tensors + x`` (the Tensor overload is fast only with an explicit alpha)."""
    x = _operand(x, tensors)
    if isinstance(x, Tensor):
        return torch._foreach_add(tensors, x, alpha=1.0)
    return torch._foreach_add(tensors, x)


def _plus_(tensors: TensorList, x: Scalar) -> None:
    """``tensors += x``, as :func:`_plus`."""
    x = _operand(x, tensors)
    if isinstance(x, Tensor):
        torch._foreach_add_(tensors, x, alpha=1.0)
    else:
        torch._foreach_add_(tensors, x)


def _real(tensors: Sequence[Tensor]) -> list[Tensor]:
    return [torch.view_as_real(x) for x in tensors]


@overload
def _plain(bufs: Sequence[Buffer]) -> list[Tensor]: ...
@overload
def _plain(bufs: None) -> None: ...
def _plain(bufs: Sequence[Buffer] | None) -> list[Tensor] | None:
    """Buffers known to be plain tensors, as such: those of a complex group, or
    of a group whose storage is a float dtype (by_device_and_dtype splits
    groups by storage, and 8-bit codes are integers). Lists, as StepTensors
    holds them; nothing is checked or copied."""
    return cast("list[Tensor] | None", bufs)


@overload
def _load(xs: Sequence[Buffer], dtype: torch.dtype) -> list[Tensor]: ...
@overload
def _load(xs: None, dtype: torch.dtype) -> None: ...
def _load(xs: Sequence[Buffer] | None, dtype: torch.dtype) -> list[Tensor] | None:
    """Each tensor's or buffer's values at ``dtype``: widened, or decoded (rmsprop.precision.load)."""
    return None if xs is None else [load(x, dtype) for x in xs]
