"""The one definition of the RMSProp update.

:func:`rmsprop_update` is a pure function of (θ, g, state, knobs) that returns
the new values; it changes none of its inputs. The reference path calls it per
tensor and copies the results into place; later paths (a compiled, fused one)
call the very same function, so they cannot drift from it. The foreach path is
the only restatement of the maths, and the tests hold it to this function in
float64.

The numbered lines (0)…(16) are those of :class:`rmsprop.RMSprop`'s docstring.

The operations are PyTorch's own fused primitives (``addcmul``, ``addcdiv``,
``lerp``, ``add(alpha=)``) in PyTorch's order wherever the knobs are PyTorch's,
so that the "torch" preset reproduces ``torch.optim.RMSprop`` bit for bit:
those kernels round differently from the same formula written with ``*`` and
``+`` (they fuse multiply-adds).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Hyper", "NewState", "OP_ORDERS", "rmsprop_update", "cautious", "bias_correction_factor",
           "denominator_can_vanish", "clip_adaptive", "ema_weight", "average", "AGC_EPS", "CLIP_EPS"]

Scalar = float | Tensor

#: Whose order of operations lines (4) and (5) follow. The same numbers in
#: exact arithmetic; each rounds as that framework's kernels do, so a preset
#: matches its framework bit for bit:
#:
#: - "torch": PyTorch 2's for-loop, v ← addcmul(α·v, g, g, 1 − α) and
#:   ḡ ← lerp(ḡ, g, 1 − α);
#: - "torch-1.5": PyTorch 1.5's, which SB3's ``RMSpropTFLike`` keeps: v as
#:   above, ḡ ← α·ḡ + (1 − α)·g (``mul_`` then ``add_(alpha=)``);
#: - "tf": TensorFlow's kernels, which timm's ``RMSpropTF`` follows:
#:   v ← v + (1 − α)·(g² − v) and ḡ ← ḡ + (1 − α)·(g − ḡ) (``add_(alpha=)``).
OP_ORDERS = ("torch", "torch-1.5", "tf")


class Hyper(NamedTuple):
    """The resolved knobs of one param group, as the engine reads them: the
    "runtime" and "structure" rows of :data:`rmsprop.settings.SETTINGS`.

    Numbers are Python scalars, so no value is rounded below the parameter's
    precision, or 0-d tensors: ``lr`` when the group is capturable, and on the
    fused path every value but a zero ``weight_decay`` or ``momentum``, so that
    changing one never recompiles. A Python zero ``weight_decay`` or
    ``momentum`` switches its lines off.
    """

    lr: Scalar
    alpha: Scalar
    eps: Scalar
    weight_decay: Scalar
    momentum: Scalar
    centered: bool
    maximize: bool
    eps_in_sqrt: bool
    lr_in_momentum: bool
    nesterov: bool
    decoupled_weight_decay: bool
    bias_correction: bool
    op_order: str
    caution: bool
    agc_clip: Scalar
    ema_decay: Scalar
    ema_every: int
    ema_warmup: bool


class NewState(NamedTuple):
    """What one step produces; ``None`` for a buffer the knobs do not use."""

    param: Tensor
    square_avg: Tensor
    grad_avg: Tensor | None
    momentum_buffer: Tensor | None
    ema: Tensor | None = None


def bias_correction_factor(alpha: Scalar, step: Tensor, like: Tensor) -> Tensor:
    """1 − αᵗ as a 0-d tensor on ``like``'s device, at ``like``'s precision or wider.

    Computed from the step tensor, never read back to the host.
    """
    dtype = torch.promote_types(like.dtype, torch.float32)
    t = step.to(device=like.device, dtype=dtype)
    return 1 - torch.pow(torch.as_tensor(alpha, dtype=dtype, device=like.device), t)


def denominator_can_vanish(hyper: Hyper, dtype: torch.dtype) -> bool:
    """Whether d of line (8) can be exactly 0 for tensors of ``dtype`` (real),
    so that (9) needs its rule u = 0 where d = 0.

    Decided from the knobs alone, never from the data. Every form has d ≥ ε,
    so d > 0 once ε is a normal number of ``dtype``, except centered with ε
    inside the root, where rounding can push r + ε below 0 and the clamp
    makes it 0. A smaller ε can round to 0 (PyTorch's 1e-8 does in float16,
    whose smallest number is 6e-8). A tensor ε (the fused path) is not read:
    there the rule is compiled into the same pass.
    """
    eps = hyper.eps
    if isinstance(eps, Tensor) or (hyper.centered and hyper.eps_in_sqrt):
        return True
    return eps < torch.finfo(dtype).tiny


def _is_zero(x: Scalar) -> bool:
    """A knob that switches its formula line off: only a Python zero does.

    The fused path passes every nonzero value as a 0-d tensor, so which lines
    run is decided when the step is traced, never by the data.
    """
    return not isinstance(x, Tensor) and x == 0


def _addcmul(x: Tensor, a: Tensor, b: Tensor, value: Scalar) -> Tensor:
    """x + value·a·b, with PyTorch's fused kernel when value is a number."""
    if isinstance(value, Tensor):
        return x + value * a * b
    return torch.addcmul(x, a, b, value=value)


def _lerp(x: Tensor, end: Tensor, weight: Scalar) -> Tensor:
    """x + weight·(end − x), with PyTorch's kernel when weight is a number."""
    if isinstance(weight, Tensor):
        return x + weight * (end - x)
    return torch.lerp(x, end, weight)


def _add(x: Tensor, y: Tensor, alpha: Scalar) -> Tensor:
    """x + alpha·y, with PyTorch's fused kernel when alpha is a number."""
    if isinstance(alpha, Tensor):
        return x + alpha * y
    return torch.add(x, y, alpha=alpha)


def _addcdiv(x: Tensor, a: Tensor, b: Tensor, value: Scalar) -> Tensor:
    """x + value·a/b, with PyTorch's fused kernel when value is a number."""
    if isinstance(value, Tensor):
        return x + value * (a / b)
    return torch.addcdiv(x, a, b, value=value)


def _real(t: Tensor | None) -> Tensor | None:
    return None if t is None else torch.view_as_real(t)


def _complex(t: Tensor | None) -> Tensor | None:
    return None if t is None else torch.view_as_complex(t)


def rmsprop_update(
    param: Tensor,
    grad: Tensor,
    square_avg: Tensor,
    grad_avg: Tensor | None,
    momentum_buffer: Tensor | None,
    step: Tensor,
    hyper: Hyper,
    ema: Tensor | None = None,
    grad_scale: Tensor | None = None,
    ema_w: Scalar | None = None,
) -> NewState:
    """One RMSProp step for one tensor, out of place.

    Args:
        param: θ. A complex θ is updated as its real view (``view_as_real``)
            from line (4) on; lines (1)-(3) run in complex arithmetic, as in
            PyTorch's for-loop (its complex multiply-add rounds differently
            from the real one).
        grad: g, the gradient of θ.
        square_avg: v, the running average of g².
        grad_avg: ḡ, the running average of g (used when ``hyper.centered``).
        momentum_buffer: b (used when ``hyper.momentum > 0``).
        step: t, the step count *after* this step (used by bias correction).
        hyper: the group's knobs.
        ema: e, the average of the weights (used when ``hyper.ema_decay > 0``).
        grad_scale: line (0)'s factor min(1, c/(‖g‖ + 10⁻⁶)), a 0-d tensor
            computed over every gradient of the step (``max_grad_norm``), or None.
        ema_w: (16)'s weight, :func:`ema_weight` of this step, when the caller
            computed it already (the fused path: once per step, not per element).

    Returns:
        The new θ, v, ḡ, b and e; ḡ, b and e are ``None`` when the knobs do not use them.
    """
    if grad_scale is not None:
        # (0) g ← g·min(1, c/(‖g‖ + 10⁻⁶)), as clip_grad_norm_ scales it: in place, so the product keeps
        # g's dtype, also where g is 0-d (two 0-d tensors would promote to the factor's wider dtype)
        grad = grad.mul(grad_scale).to(grad.dtype)
    if not _is_zero(hyper.agc_clip):
        grad = clip_adaptive(grad, param, hyper.agc_clip)  # (0')
    new = _update(param, grad, square_avg, grad_avg, momentum_buffer, step, hyper)
    if ema is None:
        return new
    weight = ema_weight(hyper, step) if ema_w is None else ema_w
    return new._replace(ema=average(ema, new.param, weight))  # (16)


def _update(
    param: Tensor,
    grad: Tensor,
    square_avg: Tensor,
    grad_avg: Tensor | None,
    momentum_buffer: Tensor | None,
    step: Tensor,
    hyper: Hyper,
) -> NewState:
    """Lines (1)…(15) of :func:`rmsprop_update`."""
    lr, alpha, eps, wd, mu = hyper.lr, hyper.alpha, hyper.eps, hyper.weight_decay, hyper.momentum

    g = grad.neg() if hyper.maximize else grad  # (1)
    if not _is_zero(wd):
        if hyper.decoupled_weight_decay:
            param = param.mul(1 - lr * wd)  # (2) θ ← θ·(1 − η·λ)
        else:
            g = _add(g, param, wd)  # (3) g ← g + λ·θ
    if param.is_complex():
        new = _update(torch.view_as_real(param), torch.view_as_real(g), torch.view_as_real(square_avg),
                             _real(grad_avg), _real(momentum_buffer),
                             step, hyper._replace(maximize=False, weight_decay=0.0))
        return NewState(torch.view_as_complex(new.param), torch.view_as_complex(new.square_avg),
                        _complex(new.grad_avg), _complex(new.momentum_buffer))

    if hyper.op_order == "tf":
        v = _add(square_avg, g.mul(g).sub(square_avg), 1 - alpha)  # (4) v ← v + (1 − α)·(g² − v)
    else:
        v = _addcmul(square_avg.mul(alpha), g, g, 1 - alpha)  # (4) v ← α·v + (1 − α)·g²
    m: Tensor | None = None
    if hyper.centered:
        assert grad_avg is not None, "centered: the caller passes ḡ"
        if hyper.op_order == "tf":
            m = _add(grad_avg, g.sub(grad_avg), 1 - alpha)  # (5) ḡ ← ḡ + (1 − α)·(g − ḡ)
        elif hyper.op_order == "torch-1.5":
            m = _add(grad_avg.mul(alpha), g, 1 - alpha)  # (5) ḡ ← α·ḡ + (1 − α)·g
        else:
            m = _lerp(grad_avg, g, 1 - alpha)  # (5) ḡ ← ḡ + (1 − α)(g − ḡ)

    v_hat, m_hat = v, m
    if hyper.bias_correction:  # (6) v̂ ← v/(1 − αᵗ), ḡ̂ ← ḡ/(1 − αᵗ)
        # At v's dtype for every shape: a 0-d v would otherwise promote to the
        # factor's wider dtype (type promotion treats two 0-d tensors as equals),
        # where a tensor of v's dtype rounds the quotient once to its own dtype.
        correction = bias_correction_factor(alpha, step, param)
        v_hat = (v / correction).to(v.dtype)
        m_hat = (m / correction).to(m.dtype) if m is not None else None

    if m_hat is not None:  # (7) r ← v̂ − ḡ̂²  (centered), else r ← v̂
        radicand = v_hat.addcmul(m_hat, m_hat, value=-1)
        if hyper.eps_in_sqrt:  # (8) d ← sqrt(max(r + ε, 0))
            denom = radicand.add(eps).clamp_min(0).sqrt()
        else:  # (8) d ← sqrt(max(r, 0)) + ε
            denom = radicand.clamp_min(0).sqrt().add(eps)
    elif hyper.eps_in_sqrt:  # (8) d ← sqrt(v̂ + ε)
        denom = v_hat.add(eps).sqrt()
    else:  # (8) d ← sqrt(v̂) + ε
        denom = v_hat.sqrt().add(eps)

    # (9) u ← g/d, with u = 0 where d = 0 (PyTorch: NaN for 0/0, ±Inf for g/0).
    # Dividing by +∞ instead of 0 gives that 0 and keeps the quotient folded
    # into addcdiv below, as PyTorch does; where d > 0 nothing changes.
    if denominator_can_vanish(hyper, denom.dtype):
        denom = torch.where(denom == 0, math.inf, denom)
    if _is_zero(mu):
        return NewState(_addcdiv(param, g, denom, -lr), v, m, None)  # (10) θ ← θ − η·u
    assert momentum_buffer is not None, "momentum: the caller passes b"

    if hyper.lr_in_momentum:
        b = _addcdiv(momentum_buffer.mul(mu), g, denom, lr)  # (13) b ← μ·b + η·u
        s = _addcdiv(b.mul(mu), g, denom, lr) if hyper.nesterov else b  # (14') η·u + μ·b, or (14) b
        if hyper.caution:
            s = cautious(s, g)  # (15)
        return NewState(param - s, v, m, b)  # (14) θ ← θ − s

    b = momentum_buffer.mul(mu).addcdiv(g, denom)  # (11) b ← μ·b + u
    s = b.mul(mu).addcdiv(g, denom) if hyper.nesterov else b  # (12') u + μ·b, or (12) b
    if hyper.caution:
        s = cautious(s, g)  # (15)
    return NewState(_add(param, s, -lr), v, m, b)  # (12) θ ← θ − η·s


def cautious(step: Tensor, grad: Tensor) -> Tensor:
    """(15) The momentum step kept only where it agrees in sign with the
    gradient, rescaled by the share kept: s ⊙ c/max(mean(c), 10⁻³) with
    c = [s·g > 0], per tensor (the Cautious Optimizers paper's mask, in
    timm's ``RMSpropTF(caution=True)`` order of operations). The buffer b
    itself is stored unmasked."""
    mask = (step * grad > 0).to(grad.dtype)
    return step * mask.div(mask.mean().clamp(min=1e-3))


#: timm's and the NFNet paper's floor under a unit's weight norm in (0'), and
#: PyTorch's ``clip_grad_norm_`` term beside the norm in (0).
AGC_EPS = 1e-3
CLIP_EPS = 1e-6


def _unit_norms(x: Tensor, real_view: bool) -> Tensor:
    """The L2 norm of each unit of ``x``: of each slice along dim 0 (an output
    row of a weight), or of the whole tensor when it has at most one dim.
    ``real_view``: ``x`` is a complex tensor's real view, whose last dim
    (real, imaginary) belongs to every element."""
    dims = x.dim() - real_view
    if dims <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True)


def clip_adaptive(grad: Tensor, param: Tensor, factor: Scalar, real_view: bool = False) -> Tensor:
    """(0') Adaptive gradient clipping (Brock et al., 2021, NFNets), per unit:
    where ‖g‖ ≥ κ·max(‖θ‖, 10⁻³), g ← g·κ·max(‖θ‖, 10⁻³)/max(‖g‖, 10⁻⁶); in
    the order of operations of timm's ``adaptive_clip_grad``."""
    limit = _unit_norms(param, real_view).clamp(min=AGC_EPS).mul(factor)
    norm = _unit_norms(grad, real_view)
    return torch.where(norm < limit, grad, grad * (limit / norm.clamp(min=CLIP_EPS)))


def ema_weight(hyper: Hyper, step: Tensor) -> Scalar:
    """(16)'s weight w at step t: 1 at the first step (the average starts from
    the weights after it), 1 − δₙ at the n-th averaging step (every
    ``ema_every``-th, counting the first as n = 1) and 0 in between; with
    ``ema_warmup``, δₙ = min(δ, 1 − n^(−2/3)) (timm's ``ModelEmaV3`` warm-up
    with γ = 1, p = 2/3), else δ.

    A Python number when the step count is on the CPU (reading it is free),
    else a 0-d float64 tensor computed on its device (no host read)."""
    k, decay = hyper.ema_every, hyper.ema_decay
    if step.is_cpu and not torch.compiler.is_compiling() and not isinstance(decay, Tensor):
        t = int(step)
        if (t - 1) % k:
            return 0.0
        n = (t - 1) // k + 1
        if n == 1:
            return 1.0
        return 1.0 - (min(decay, 1.0 - n ** (-2 / 3)) if hyper.ema_warmup else decay)
    since = step.to(torch.float64).reshape(()) - 1  # t − 1
    count = torch.div(since, k, rounding_mode="floor") + 1  # n
    delta = torch.as_tensor(decay, dtype=torch.float64, device=since.device)
    if hyper.ema_warmup:
        delta = torch.minimum(delta, 1 - count.pow(-2 / 3))
    weight = torch.where(count == 1, 1.0, 1 - delta)
    return torch.where(torch.remainder(since, k) == 0, weight, 0.0)


def average(ema: Tensor, param: Tensor, weight: Scalar) -> Tensor:
    """(16) e ← e + w·(θ − e), with PyTorch's lerp (as timm's ``ModelEmaV3``)."""
    if isinstance(weight, Tensor):  # between averaging steps e stays as it is, whatever θ holds
        return torch.where(weight == 0, ema, torch.lerp(ema, param.to(ema.dtype), weight.to(ema.dtype)))
    if weight == 0:
        return ema
    return torch.lerp(ema, param.to(ema.dtype), weight)
