"""Hostile input for the property tests: hypothesis strategies and builders.

A case is data (a list of tensor specs, the knobs, the gradient profile of
each step); the builders turn it into tensors, so that every path runs the
same case on its own fresh copies. Values are drawn in float64 and rounded
to the tensor's dtype, clipped to its finite range: an infinite or NaN input
is the non-finite policy's business, not this file's.

Every choice is weighted (:func:`mostly`): ordinary values first and three
times as often as the extremes (lr = 0, α = 1, no gradient, 1e±30, a 0-size
dimension). Hypothesis draws, and shrinks towards, the first element of
``sampled_from`` more often than the others: with an extreme there, it took
over the examples and left little to compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from rmsprop.engine import OP_ORDERS
from rmsprop.precision import BUFFERS
from rmsprop.quant import ABSMAX, CODES

REAL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DTYPES = (*REAL_DTYPES, torch.complex64)

# Fixed example counts and no example database: `make test` is deterministic.
_COMMON = dict(deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def examples(n: int) -> settings:
    return settings(max_examples=n, **_COMMON)


# How the values of a tensor are drawn (magnitudes before rounding to the dtype):
# the tame profiles' squares stay inside every dtype's range.
TAME_PROFILES = ("normal", "tiny", "subnormal", "zero")
PROFILES = (*TAME_PROFILES, "mixed", "huge")


LAYOUTS = ("contiguous", "transposed", "sliced", "channels_last")


def mostly(ordinary: tuple, extremes: tuple = (), odds: int = 3) -> st.SearchStrategy:
    """One of ``ordinary`` (each as likely), or, ``odds`` times less often
    each, one of ``extremes``; shrinks towards ``ordinary[0]``."""
    return st.sampled_from(tuple(ordinary) * odds + tuple(extremes))


@dataclass(frozen=True)
class Spec:
    """One parameter: its shape, memory layout, dtype and value profile."""

    shape: tuple[int, ...]
    layout: str
    dtype: torch.dtype
    profile: str


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def values(shape: tuple[int, ...], dtype: torch.dtype, profile: str, seed: int) -> torch.Tensor:
    """Contiguous values of ``dtype``: random signs, magnitudes by ``profile``,
    always finite."""
    gen = torch.Generator().manual_seed(seed)
    real = real_dtype(dtype)
    info = torch.finfo(real)
    n = 2 if dtype.is_complex else 1
    x = torch.randn((*shape, n), generator=gen, dtype=torch.float64)
    if profile == "huge":
        x *= 1e30
    elif profile == "tiny":
        x *= 1e-30
    elif profile == "subnormal":
        x = x.sign() * torch.rand(x.shape, generator=gen, dtype=torch.float64) * info.smallest_normal
    elif profile == "zero":
        x = x.sign() * 0.0  # ±0
    elif profile == "mixed":  # every decade from 1e-30 to 1e30, with zeros
        decade = torch.randint(-30, 31, x.shape, generator=gen).double()
        x = x * 10.0**decade * (torch.rand(x.shape, generator=gen) > 0.2)
    x = x.clamp(-info.max / 2, info.max / 2).to(real)
    return torch.view_as_complex(x) if dtype.is_complex else x.squeeze(-1)


def empty_with_layout(shape: tuple[int, ...], layout: str, dtype: torch.dtype) -> torch.Tensor:
    """A fresh tensor of ``shape`` whose strides are those of ``layout``."""
    if layout == "transposed" and len(shape) >= 2:
        return torch.empty(shape[::-1], dtype=dtype).permute(*reversed(range(len(shape))))
    if layout == "sliced" and len(shape) >= 1:  # every other element: not dense
        return torch.empty((*shape[:-1], 2 * shape[-1]), dtype=dtype)[..., ::2]
    if layout == "channels_last" and len(shape) == 4:
        return torch.empty(shape, dtype=dtype).to(memory_format=torch.channels_last)
    return torch.empty(shape, dtype=dtype)


def build(spec: Spec, profile: str, seed: int, grad: bool = False) -> torch.Tensor:
    """The tensor of ``spec`` (a leaf Parameter, or a gradient when ``grad``)
    holding the values of ``profile``; the same arguments give the same bits."""
    t = empty_with_layout(spec.shape, spec.layout, spec.dtype)
    t.copy_(values(spec.shape, spec.dtype, profile, seed))
    return t if grad else torch.nn.Parameter(t)


@st.composite
def specs(draw, dtypes=DTYPES, max_tensors: int = 3) -> list[Spec]:
    out = []
    for _ in range(draw(st.integers(1, max_tensors))):
        layout = draw(st.sampled_from(LAYOUTS))
        ndim = 4 if layout == "channels_last" else draw(st.integers(0 if layout == "contiguous" else 1, 3))
        shape = tuple(draw(st.lists(mostly((3, 2, 4, 1), (0,)), min_size=ndim, max_size=ndim)))
        profile = draw(mostly(TAME_PROFILES, ("mixed", "huge")))
        out.append(Spec(shape, layout, draw(st.sampled_from(dtypes)), profile))
    return out


Choice = tuple[tuple[float, ...], tuple[float, ...]]  # (ordinary values, extremes): see mostly()


@st.composite
def knobs(draw, lr: Choice = ((0.01, 1e-3, 0.1, 1.0), (0.0,)),
          eps: Choice = ((1e-8, 1e-3), (1e-30, 0.0)),
          weight_decay: Choice = ((0.0, 0.1), (1e4,)),
          momentum: Choice = ((0.0, 0.9, 0.5), ()),
          alpha: Choice = ((0.9, 0.99, 0.5), (0.0, 1.0))) -> dict[str, Any]:
    """Every knob, extreme values included (each a pair: ordinary values,
    extremes): α = 0 and 1, lr = 0, ε = 0, λ = 1e4."""
    alpha = draw(mostly(*alpha))
    mu = draw(mostly(*momentum))
    return dict(
        lr=draw(mostly(*lr)),
        alpha=alpha,
        eps=draw(mostly(*eps)),
        weight_decay=draw(mostly(*weight_decay)),
        momentum=mu,
        centered=draw(st.booleans()),
        eps_in_sqrt=draw(st.booleans()),
        lr_in_momentum=draw(st.booleans()),
        nesterov=mu > 0 and draw(st.booleans()),
        decoupled_weight_decay=draw(st.booleans()),
        bias_correction=alpha < 1 and draw(st.booleans()),
        maximize=draw(st.booleans()),
        initial_square_avg=draw(st.sampled_from((0.0, 1.0))),
        op_order=draw(st.sampled_from(OP_ORDERS)),
        caution=mu > 0 and draw(st.booleans()),
        agc_clip=draw(mostly((0.0, 0.01), (1e-30,))),
        max_grad_norm=draw(mostly((None, 1.0), (1e-30,))),
        ema_decay=draw(mostly((0.0, 0.9), (0.999999,))),
        ema_every=draw(st.sampled_from((1, 3))),
        ema_warmup=draw(st.booleans()),
    )


# Per step, per tensor: a gradient profile, or None for no gradient this step.
def grad_profiles(n_tensors: int, steps: int):
    every = mostly(TAME_PROFILES, ("mixed", "huge", None))
    return st.lists(st.lists(every, min_size=n_tensors, max_size=n_tensors), min_size=steps, max_size=steps)


def finite(t: torch.Tensor | None) -> bool:
    return t is None or bool(torch.isfinite(t).all())


def has_nan(t: torch.Tensor | None) -> bool:
    return t is not None and bool(torch.isnan(t).any())


def as_real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def overflow_limit(dtype: torch.dtype) -> float:
    """A value beyond this, in exact arithmetic, may overflow the dtype on the
    way (a margin of 64 covers the rounding between paths)."""
    return torch.finfo(real_dtype(dtype)).max / 64


def beyond(t: torch.Tensor | None, limit: float) -> bool:
    return t is not None and t.numel() > 0 and not bool((as_real(t).abs() <= limit).all())




_BUFFERS = ("square_avg", "grad_avg", "momentum_buffer", "ema", "step", "kahan_comp",
            # state_precision="int8": a quantized buffer's codes and block scales
            *(f"{spec.key}{part}" for spec in BUFFERS for part in (CODES, ABSMAX)))


class Trial:
    """One path's run of a case: its own fresh parameters (the spec's layout and
    values), an optimizer, and the case's gradients built anew at every step."""

    def __init__(self, specs: list[Spec], knobs: dict[str, Any], seed: int, cls: type | None = None,
                 **path: Any):
        import rmsprop

        self.specs, self.seed = specs, seed
        self.params = [build(s, s.profile, seed + i) for i, s in enumerate(specs)]
        self.opt = (cls or rmsprop.RMSprop)(self.params, **knobs, **path)

    def grads(self, step: int, profiles: list[str | None]) -> list[torch.Tensor | None]:
        """The step's gradients: the parameter's layout on even steps, contiguous on odd ones."""
        out = []
        for i, (spec, profile) in enumerate(zip(self.specs, profiles)):
            if profile is None:
                out.append(None)
                continue
            layout = spec.layout if step % 2 == 0 else "contiguous"
            out.append(build(Spec(spec.shape, layout, spec.dtype, profile), profile,
                             self.seed + 1000 * (step + 1) + i, grad=True))
        return out

    def step(self, step: int, profiles: list[str | None]) -> None:
        for p, g in zip(self.params, self.grads(step, profiles)):
            p.grad = g
        self.opt.step()

    def tensors(self) -> list[torch.Tensor]:
        """Everything a step writes, in a fixed order: θ, then its state."""
        out = []
        for p in self.params:
            out.append(p.detach())
            state = self.opt.state.get(p, {})
            out += [state[k] for k in _BUFFERS if k in state]
        return out


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.complex128 if x.is_complex() else torch.float64)


def overflows(trial: Trial, step: int, profiles: list[str | None], knobs: dict[str, Any]) -> bool:
    """Whether the coming step of ``trial`` takes a value out of its dtype's
    range in exact arithmetic: the step is replayed in float64 from the same
    state, and the gradient after weight decay, its square, v̂, ḡ̂², θ and b
    are compared with :func:`overflow_limit` of the narrowest dtype."""
    limit = min(overflow_limit(s.dtype) for s in trial.specs)
    return any(beyond(w, limit) for ws in _witnesses(trial, step, profiles, knobs) for w in ws)


def overflowing(trial: Trial, step: int, profiles: list[str | None], knobs: dict[str, Any]) -> list[bool]:
    """Per tensor, whether the coming step takes one of its values out of its
    own dtype's range (as :func:`overflows`). The update is elementwise, so a
    tensor that overflows says nothing about the others."""
    return [any(beyond(w, overflow_limit(s.dtype)) for w in ws)
            for s, ws in zip(trial.specs, _witnesses(trial, step, profiles, knobs))]


def _witnesses(trial: Trial, step: int, profiles: list[str | None],
               knobs: dict[str, Any]) -> list[list[torch.Tensor]]:
    """Per tensor, the values of the coming step replayed in float64 that
    must stay in range: g after weight decay squared, θ, v̂, ḡ̂² and b."""
    import rmsprop

    params = [torch.nn.Parameter(_wide(p.detach()).clone()) for p in trial.params]
    opt = rmsprop.RMSprop(params, **knobs, foreach=False)
    for p, q in zip(trial.params, params):
        if p in trial.opt.state:
            opt.state[q] = {k: v.clone() if k == "step" else _wide(v).clone()
                            for k, v in trial.opt.state[p].items()}
    grads = trial.grads(step, profiles)
    witnesses: list[list[torch.Tensor]] = [[] for _ in params]
    for q, g, ws in zip(params, grads, witnesses):
        q.grad = None if g is None else _wide(g)
        if g is not None:
            g = -q.grad if knobs["maximize"] else q.grad
            if knobs["weight_decay"] and not knobs.get("decoupled_weight_decay"):
                g = g + knobs["weight_decay"] * q.detach()
            ws.append(as_real(g).abs() ** 2)
    opt.step()
    for q, g, ws in zip(params, grads, witnesses):
        if g is None:
            continue
        state = opt.state[q]
        c = 1 - knobs["alpha"] ** state["step"].item() if knobs.get("bias_correction") else 1.0
        ws += [q.detach(), state["square_avg"] / c]
        if "grad_avg" in state:
            ws.append(as_real(state["grad_avg"] / c) ** 2)
        if "momentum_buffer" in state:
            ws.append(state["momentum_buffer"])
    return witnesses


__all__ = ["DTYPES", "REAL_DTYPES", "PROFILES", "TAME_PROFILES", "LAYOUTS", "Spec", "Trial", "examples",
           "mostly", "values", "build", "specs", "knobs", "grad_profiles", "finite", "has_nan", "as_real",
           "overflow_limit", "overflows", "overflowing", "beyond", "real_dtype", "empty_with_layout"]


# Edits a hostile user makes to an optimizer between two steps, after the
# steps before have let it keep its plan (rmsprop.plan._Reusable). Each takes
# the optimizer, its parameters (the first two 2-D, the first alone in the
# first group) and a generator, and is applied to twin optimizers with equal
# generators: the one that may reuse its plan must do exactly what the one
# that plans every step afresh does.
def _state(opt, p) -> dict:
    return opt.state[p]


def _new_param(opt, params, gen) -> None:
    """One more parameter in the first group: the later groups' parameters move up."""
    p = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=params[0].dtype))
    p.grad = torch.randn(3, generator=gen, dtype=p.dtype)
    params.append(p)
    opt.param_groups[0]["params"].append(p)


def _drop_param(opt, params, gen) -> None:
    dropped = opt.param_groups[-1]["params"].pop()
    del params[next(i for i, p in enumerate(params) if p is dropped)]


def _swap_param(opt, params, gen) -> None:
    """The last parameter replaced by a copy, which takes over its state."""
    old = opt.param_groups[-1]["params"][-1]
    new = torch.nn.Parameter(old.detach().clone())
    new.grad = old.grad
    opt.param_groups[-1]["params"][-1] = new
    opt.state[new] = opt.state.pop(old)
    params[next(i for i, p in enumerate(params) if p is old)] = new


def _new_states(opt, params, gen) -> None:
    opt.state = type(opt.state)(dict)


REUSE_EDITS: dict[str, Any] = {
    "nothing": lambda opt, ps, gen: None,
    "a gradient is None": lambda opt, ps, gen: setattr(ps[2], "grad", None),
    "a sparse gradient": lambda opt, ps, gen: setattr(ps[0], "grad", ps[0].grad.to_sparse()),
    "a transposed gradient": lambda opt, ps, gen: setattr(ps[0], "grad", ps[0].grad.t().contiguous().t()),
    "a gradient that requires grad": lambda opt, ps, gen: ps[1].grad.requires_grad_(),
    "a parameter's data reshaped": lambda opt, ps, gen: setattr(ps[0], "data", ps[0].data.flatten()),
    "a parameter's data strided": lambda opt, ps, gen: setattr(
        ps[1], "data", ps[1].data.t().contiguous().t()),
    "a parameter's data in float64": lambda opt, ps, gen: setattr(ps[2], "data", ps[2].data.double()),
    "a parameter frozen": lambda opt, ps, gen: ps[2].requires_grad_(False),
    "a state popped": lambda opt, ps, gen: opt.state.pop(ps[1]),
    "the state dict replaced": _new_states,
    "a state replaced by a copy": lambda opt, ps, gen: opt.state.__setitem__(
        ps[0], {k: v.clone() for k, v in _state(opt, ps[0]).items()}),
    "a buffer replaced by a copy": lambda opt, ps, gen: _state(opt, ps[1]).__setitem__(
        "square_avg", _state(opt, ps[1])["square_avg"].clone()),
    "a buffer of another shape": lambda opt, ps, gen: _state(opt, ps[1]).__setitem__(
        "square_avg", torch.zeros(7)),
    "a buffer resized in place": lambda opt, ps, gen: _state(opt, ps[0])["square_avg"].resize_(12),
    "a buffer in float64": lambda opt, ps, gen: setattr(
        _state(opt, ps[1])["square_avg"], "data", _state(opt, ps[1])["square_avg"].data.double()),
    "a buffer deleted": lambda opt, ps, gen: _state(opt, ps[2]).pop("square_avg"),
    "a momentum buffer deleted": lambda opt, ps, gen: _state(opt, ps[0]).pop("momentum_buffer", None),
    "the step count replaced": lambda opt, ps, gen: _state(opt, ps[0]).__setitem__(
        "step", torch.tensor(50.0)),
    "a parameter appended": _new_param,
    "a parameter removed": _drop_param,
    "a parameter replaced, its state kept": _swap_param,
    "the parameters reordered": lambda opt, ps, gen: opt.param_groups[-1].__setitem__(
        "params", opt.param_groups[-1]["params"][::-1]),
    "the learning rate halved": lambda opt, ps, gen: opt.param_groups[-1].__setitem__(
        "lr", opt.param_groups[-1]["lr"] / 2),
    "momentum switched on": lambda opt, ps, gen: opt.param_groups[-1].__setitem__("momentum", 0.5),
    "centering switched off": lambda opt, ps, gen: opt.param_groups[-1].__setitem__("centered", False),
    "the state reloaded": lambda opt, ps, gen: opt.load_state_dict(opt.state_dict()),
}
