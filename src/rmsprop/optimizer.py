"""``rmsprop.RMSprop``: the drop-in door onto the engine."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    ParamsT,
    _get_scalar_dtype,
    _global_optimizer_post_hooks,
    _global_optimizer_pre_hooks,
    _use_grad_for_differentiable,
)

from . import functional
from .presets import KNOBS, PRESETS, get_preset
from .validation import check_group, check_loaded

__all__ = ["RMSprop", "LAYOUT_VERSION"]

#: Version of the state-dict layout, stored in every param group. 1: PyTorch's
#: state keys plus this library's knobs as plain scalars in each group.
LAYOUT_VERSION = 1

# What a group that lacks a key means: a state dict saved by torch.optim.RMSprop
# (or an older layout) reads as PyTorch's semantics.
_TORCH_GROUP_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in PRESETS["torch"].knobs().items() if k != "lr"},
    "preset": "torch",
    "capturable": False,
    "foreach": None,
    "maximize": False,
    "differentiable": False,
    "fused": None,
}

# The group keys that reach the engine as they are (lr needs a look first).
_HYPER_KNOBS = tuple(k for k in KNOBS if k not in ("lr", "initial_square_avg"))

# Param groups written by timm's RMSpropTF, recognised by its own key
# `decoupled_decay`: they read as the "timm" preset, with timm's names mapped
# onto ours. Options of timm's that have no equivalent here are refused.
_TIMM_RENAMES = {"decoupled_decay": "decoupled_weight_decay"}
_TIMM_UNSUPPORTED = ("caution", "corrected_weight_decay")
_TIMM_INTERNAL = ("max_lr_snapshot",)  # bookkeeping for corrected_weight_decay


def _translate_foreign_group(group: dict[str, Any]) -> None:
    """Bring a param group saved by another library into this layout, in place."""
    if "layout_version" in group or "decoupled_decay" not in group:
        return
    for key in _TIMM_UNSUPPORTED:
        if group.pop(key, False):
            raise ValueError(
                f"loaded state dict comes from timm's RMSpropTF with {key}=True, "
                "which rmsprop does not implement"
            )
    for key in _TIMM_INTERNAL:
        group.pop(key, None)
    for theirs, ours in _TIMM_RENAMES.items():
        group[ours] = bool(group.pop(theirs))
    for key, value in PRESETS["timm"].knobs().items():
        group.setdefault(key, value)
    group.setdefault("preset", "timm")


class RMSprop(Optimizer):
    r"""RMSProp with every major framework's semantics, selectable by name or knob.

    Positional order, names and (with no ``preset``) defaults are those of
    :class:`torch.optim.RMSprop`, which this class reproduces bit for bit.

    The update, for each parameter θ with gradient g, square average v
    (``square_avg``), gradient average ḡ (``grad_avg``), momentum buffer b
    (``momentum_buffer``) and step count t (after this step), with η = ``lr``,
    α = ``alpha``, ε = ``eps``, λ = ``weight_decay``, μ = ``momentum``. Every
    path marks its code with these numbers::

        (1)  g ← −g                                  if maximize
        (2)  θ ← θ·(1 − η·λ)                         if λ ≠ 0 and decoupled_weight_decay
        (3)  g ← g + λ·θ                             if λ ≠ 0 and not decoupled_weight_decay
        (4)  v ← α·v + (1 − α)·g²
        (5)  ḡ ← ḡ + (1 − α)·(g − ḡ)                 if centered
        (6)  v̂ ← v/(1 − αᵗ),  ḡ̂ ← ḡ/(1 − αᵗ)         if bias_correction, else v̂ = v, ḡ̂ = ḡ
        (7)  r ← v̂ − ḡ̂²                              if centered, else r ← v̂
        (8)  d ← sqrt(max(r + ε, 0))                 if eps_in_sqrt
             d ← sqrt(max(r, 0)) + ε                 otherwise
        (9)  u ← g/d,  and u ← 0 where d = 0
             μ = 0:
        (10) θ ← θ − η·u
             μ > 0, η outside the buffer (lr_in_momentum=False, PyTorch):
        (11) b ← μ·b + u
        (12) θ ← θ − η·b                             nesterov (12'): θ ← θ − η·(u + μ·b)
             μ > 0, η inside the buffer (lr_in_momentum=True: TF1, Keras, optax, timm):
        (13) b ← μ·b + η·u
        (14) θ ← θ − b                               nesterov (14'): θ ← θ − (η·u + μ·b)

    v starts at ``initial_square_avg``, ḡ and b at 0. Decoupled decay (2) uses
    the θ from before this step; ``maximize`` flips g, never the decay. The
    clamp in (8) only matters when centered: it keeps rounding from making the
    radicand negative (PyTorch's form yields NaN there) and changes nothing
    wherever PyTorch's result is finite. With a learning rate that changes
    between steps, (12) and (14) differ: η outside rescales the whole history,
    η inside only the new term.

    u = 0 where d = 0 in (9) departs from PyTorch's formula, which gives NaN
    there for g = 0 (0/0) and ±Inf otherwise: no scale, no step.
    d = 0 needs ε to be 0 at the parameter's precision (ε = 0, or the default
    1e-8 in float16, where a zero gradient, or one below about 2e-3 on a fresh
    state, otherwise gives a NaN or infinite parameter), or centered with
    ``eps_in_sqrt``, where the clamp in (8) can make d 0. Like the clamp, it
    changes nothing wherever PyTorch's result is finite.

    Args:
        params: iterable of parameters or named parameters to optimize, or of
            dicts defining param groups. A group may set any knob below, and
            ``"preset"`` to take its semantics from another preset.
        lr: learning rate η, a float or a 1-element tensor (default: the
            preset's; 1e-2 for "torch"; "tf1" and "optax" have none).
        alpha: smoothing constant α (default: the preset's; 0.99).
        eps: ε of the denominator (default: the preset's; 1e-8).
        weight_decay: λ (default: the preset's; 0).
        momentum: μ (default: the preset's; 0).
        centered: normalise by an estimate of the variance (default: the
            preset's; False).
        capturable: keep the step count on the parameter's device and a
            tensor ``lr`` as a tensor, so a step never reads a value back to
            the host (default: False).
        foreach: True for the multi-tensor path, False for the reference
            path, None to let :func:`rmsprop.paths.choose_path` pick
            (default: None).
        fused: True for one compiled pass over memory per tensor
            (``torch.compile`` of the same update), False never to compile,
            None to let :func:`rmsprop.paths.choose_path` pick (default: None).
        maximize: maximize the objective instead of minimizing (default: False).
        differentiable: let autograd run through the step (reference path
            only) (default: False).
        preset: name in :data:`rmsprop.PRESETS` whose semantics and defaults
            fill every argument not passed (default: None, meaning "torch").
        eps_in_sqrt: ε inside the root, (8) (default: the preset's; False).
        initial_square_avg: starting value of v, 0 or TF1's 1 (default: the
            preset's; 0).
        lr_in_momentum: η inside the momentum buffer, (13)–(14) (default: the
            preset's; False).
        nesterov: Nesterov momentum, (12') / (14') (default: the preset's; False).
        decoupled_weight_decay: (2) instead of (3) (default: the preset's; False).
        bias_correction: (6), as optax's option (default: the preset's; False).

    State dicts have PyTorch's layout and cross-load with
    ``torch.optim.RMSprop`` both ways; a group saved by PyTorch reads as the
    "torch" preset, one saved by timm's ``RMSpropTF`` as the "timm" preset,
    and the saved groups' knobs replace the current ones, as in PyTorch.
    ``load_state_dict`` checks everything (group and parameter counts, buffer
    shapes, layout version, knob values) after its pre-hooks and before it
    changes anything; a mismatch raises ValueError.

    Argument validation is PyTorch's, tightened in one place: ``alpha`` must
    lie in [0, 1] (PyTorch accepts any α ≥ 0).

    A param group may mix devices and dtypes, as in PyTorch. A gradient whose
    dtype differs from its parameter's (PyTorch's ``grad_dtype``) is cast to
    the parameter's dtype before the step, on every path; PyTorch's own paths
    disagree there, and fail with ``centered=True``.

    Example:
        >>> import torch, rmsprop
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = rmsprop.RMSprop(model.parameters(), lr=1e-3, preset="tf1", momentum=0.9)
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> opt.step()

    References:
        G. Hinton, Neural Networks for Machine Learning, lecture 6e (2012).
        A. Graves, Generating Sequences With Recurrent Neural Networks (2013),
        for the centered form.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor | None = None,
        alpha: float | None = None,
        eps: float | None = None,
        weight_decay: float | None = None,
        momentum: float | None = None,
        centered: bool | None = None,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        fused: bool | None = None,
        preset: str | None = None,
        eps_in_sqrt: bool | None = None,
        initial_square_avg: float | None = None,
        lr_in_momentum: bool | None = None,
        nesterov: bool | None = None,
        decoupled_weight_decay: bool | None = None,
        bias_correction: bool | None = None,
    ) -> None:
        base = get_preset("torch" if preset is None else preset)
        given = dict(
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
            eps_in_sqrt=eps_in_sqrt,
            initial_square_avg=initial_square_avg,
            lr_in_momentum=lr_in_momentum,
            nesterov=nesterov,
            decoupled_weight_decay=decoupled_weight_decay,
            bias_correction=bias_correction,
        )
        # Arguments the caller passed: they beat any preset, a group's own included.
        self._explicit = {k: v for k, v in given.items() if v is not None}
        defaults = {
            **base.knobs(),
            **self._explicit,
            "preset": base.name,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
            "layout_version": LAYOUT_VERSION,
        }
        check_group(defaults, lr_required=False)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its missing knobs come from the explicit
        constructor arguments, then its own ``"preset"`` (if it names one),
        then the optimizer's defaults. Raises before anything changes."""
        if isinstance(param_group, dict):
            fill = {}
            if "preset" in param_group:
                fill = {**get_preset(param_group["preset"]).knobs(), **self._explicit}
            check_group({**self.defaults, **fill, **param_group}, lr_required=True)
            for key, value in fill.items():
                param_group.setdefault(key, value)
        super().add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_explicit": self._explicit}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Everything is checked before anything is set: load_state_dict calls
        # this with the loaded groups and state, so a mismatch leaves us as we were.
        groups = state["param_groups"]
        for group in groups:
            _translate_foreign_group(group)
            for key, value in _TORCH_GROUP_DEFAULTS.items():
                group.setdefault(key, value)
        check_loaded(groups, state["state"], LAYOUT_VERSION)
        for group in groups:
            check_group(group, lr_required=True)
            group["layout_version"] = LAYOUT_VERSION
        if "_explicit" in state:  # pickled optimizer; load_state_dict passes none
            self._explicit = state.pop("_explicit")
        elif not hasattr(self, "_explicit"):
            self._explicit = {}
        super().__setstate__(state)
        for group in self.param_groups:
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state["step"]):
                    device = p.device if group["capturable"] else None
                    p_state["step"] = torch.tensor(
                        float(p_state["step"]), dtype=_get_scalar_dtype(), device=device
                    )

    def _gather_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        params, grads, square_avgs, grad_avgs, momentum_buffers, steps = [], [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            if grad.is_sparse:
                raise RuntimeError("RMSprop does not support sparse gradients")
            if grad.dtype != p.dtype:  # torch's `grad_dtype` allows it: g is read at θ's precision
                grad = grad.to(p.dtype)
            state = self.state[p]
            if not state:
                state.update(self._new_state(p, group))
            # Buffers are created when the knobs first need them, so a group
            # whose momentum or centering is switched on later keeps working.
            if group["momentum"] != 0 and "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["centered"] and "grad_avg" not in state:
                state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

            params.append(p)
            grads.append(grad)
            square_avgs.append(state["square_avg"])
            steps.append(state["step"])
            if group["momentum"] != 0:
                momentum_buffers.append(state["momentum_buffer"])
            if group["centered"]:
                grad_avgs.append(state["grad_avg"])
        return params, grads, square_avgs, grad_avgs, momentum_buffers, steps

    @torch.no_grad()
    def warm_up(self) -> None:
        """Run one step on scratch copies of the parameters and state.

        Nothing the optimizer holds changes; what it buys is that the fused
        path compiles now, so the first real ``step()`` runs at full speed.
        Every parameter that requires grad is assumed to get one.
        """
        for group in self.param_groups:
            params = [p for p in group["params"] if p.requires_grad]
            if not params:
                continue
            scratch = [torch.empty_like(p).copy_(p) for p in params]
            states = [self._new_state(p, group) for p in params]
            functional.rmsprop(
                scratch,
                [torch.zeros_like(p) for p in params],
                [s["square_avg"] for s in states],
                [s["grad_avg"] for s in states] if group["centered"] else [],
                [s["momentum_buffer"] for s in states] if group["momentum"] != 0 else [],
                [s["step"] for s in states],
                **self._path_arguments(group),
            )

    @staticmethod
    def _new_state(p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """Fresh state for ``p``: PyTorch's keys, the buffers the knobs use."""
        step_device = p.device if group["capturable"] else None
        state = {"step": torch.zeros((), dtype=_get_scalar_dtype(), device=step_device)}
        square_avg = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["initial_square_avg"] != 0:
            real = torch.view_as_real(square_avg) if p.is_complex() else square_avg
            real.fill_(group["initial_square_avg"])
        state["square_avg"] = square_avg
        if group["momentum"] != 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @staticmethod
    def _path_arguments(group: dict[str, Any]) -> dict[str, Any]:
        """The functional form's keyword arguments for one group."""
        return {
            "foreach": group["foreach"],
            "maximize": group["maximize"],
            "differentiable": group["differentiable"],
            "capturable": group["capturable"],
            "fused": group["fused"],
            **{k: group[k] for k in KNOBS if k != "initial_square_avg"},
        }

    @staticmethod
    def profile_hook_step(func: Callable[..., Any]) -> Callable[..., Any]:
        """PyTorch's wrapper around ``step`` (the step pre- and post-hooks, the
        profiler's range and entry point), except that the profiler range is
        opened only while a profiler records: opening it costs more than a
        small model's whole update. ``Optimizer`` applies this to ``step``."""

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if torch._C._autograd._profiler_enabled():
                with torch.autograd.profiler.record_function(f"Optimizer.step#{type(args[0]).__name__}.step"):
                    return _hooked_step(func, args, kwargs)
            return _hooked_step(func, args, kwargs)

        return wrapper

    # Inside a user's torch.compile the step runs as its own region (a clean
    # graph break): the fused path brings its own compiled code. (Dynamo also
    # special-cases methods named `_init_group`, hence `_gather_group`.)
    @torch.compiler.disable
    @_use_grad_for_differentiable
    def step(self, closure=None):  # type: ignore[override]
        """Perform a single optimization step.

        Args:
            closure: a callable that re-evaluates the model and returns the
                loss (default: None).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lists = self._gather_group(group)
            if not lists[0]:
                continue
            hyper = functional.make_hyper(
                group["lr"], group["capturable"], maximize=group["maximize"],
                **{k: group[k] for k in _HYPER_KNOBS},
            )
            functional.apply(*lists, hyper, foreach=group["foreach"],
                             differentiable=group["differentiable"], fused=group["fused"])
        return loss

    def __repr__(self) -> str:
        text = super().__repr__()
        lines = text.splitlines()
        out: list[str] = []
        index = 0
        for line in lines:
            out.append(line)
            if line.startswith("Parameter Group "):
                out.append(f"    update: {describe(self.param_groups[index])}")
                index += 1
        return "\n".join(out)


def _hooked_step(func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Run ``func(*args, **kwargs)`` (``args[0]`` the optimizer) between the
    global and per-optimizer step hooks, as ``torch.optim.Optimizer`` does: the
    hooks see the same arguments, and a pre-hook may replace them."""
    opt = args[0]
    for pre_hook in (*_global_optimizer_pre_hooks.values(), *opt._optimizer_step_pre_hooks.values()):
        result = pre_hook(opt, args, kwargs)
        if result is not None:
            if not (isinstance(result, tuple) and len(result) == 2):
                raise RuntimeError(
                    f"{func} must return None or a tuple of (new_args, new_kwargs), but got {result}."
                )
            args, kwargs = result
    out = func(*args, **kwargs)
    opt._optimizer_step_code()
    for post_hook in (*opt._optimizer_step_post_hooks.values(), *_global_optimizer_post_hooks.values()):
        post_hook(opt, args, kwargs)
    return out


def describe(group: dict[str, Any]) -> str:
    """The resolved update of one param group as a line of formulas."""
    a = group["alpha"]
    parts = []
    if group["maximize"]:
        parts.append("g ← −g")
    wd = group["weight_decay"]
    if wd:
        parts.append(f"θ ← θ·(1 − lr·{wd:g})" if group["decoupled_weight_decay"] else f"g ← g + {wd:g}·θ")
    v0 = group["initial_square_avg"]
    parts.append(f"v ← {a:g}·v + {1 - a:g}·g² (v₀ = {v0:g})")
    r = "v"
    if group["centered"]:
        parts.append(f"ḡ ← {a:g}·ḡ + {1 - a:g}·g")
        r = "v − ḡ²"
    if group["bias_correction"]:
        r = f"({r})/(1 − {a:g}ᵗ)" if not group["centered"] else "v̂ − ḡ̂²"
    eps = group["eps"]
    d = f"√({r} + {eps:g})" if group["eps_in_sqrt"] else f"√({r}) + {eps:g}"
    mu = group["momentum"]
    if mu == 0:
        parts.append(f"θ ← θ − lr·g/({d})")
    elif group["lr_in_momentum"]:
        parts.append(f"b ← {mu:g}·b + lr·g/({d})")
        parts.append(f"θ ← θ − (lr·g/({d}) + {mu:g}·b)" if group["nesterov"] else "θ ← θ − b")
    else:
        parts.append(f"b ← {mu:g}·b + g/({d})")
        parts.append(f"θ ← θ − lr·(g/({d}) + {mu:g}·b)" if group["nesterov"] else "θ ← θ − lr·b")
    return f"[{group['preset']}] " + "; ".join(parts)
