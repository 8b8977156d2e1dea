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

from . import functional, quant
from .finite import check_policy, finite_flags
from .precision import (
    check_quantizable,
    get_buffer,
    has_buffer,
    load,
    new_buffer,
    pop_buffer,
    put_buffer,
    state_dtype,
)
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
    "skipped_steps": 0,
    "state_precision": "param",
    "stochastic_rounding": False,
    "rounding_seed": 0,
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
        nonfinite: what a step does when a gradient holds NaN or ±Inf:
            "propagate" (PyTorch's behaviour), "skip" (change nothing, count
            it in ``skipped_steps``) or "raise" (``FloatingPointError``
            before anything changes); optimizer-wide (default: "propagate").
            See :mod:`rmsprop.finite`.
        state_precision: how a group's buffers are stored: "param" (the
            parameter's dtype, PyTorch's maths), "fp32" (float32 state and
            maths, for bf16/fp16 parameters), "bf16" (bfloat16 state,
            float32 maths) or "int8" (block-wise 8-bit state, float32 maths;
            tensors under 4096 elements keep float32 state); per group
            (default: "param"). See :mod:`rmsprop.precision` and
            :mod:`rmsprop.quant`; a loaded state dict is converted to this
            optimizer's choice.
        stochastic_rounding: write bfloat16 parameters back with unbiased
            stochastic rounding instead of rounding to nearest, so updates
            smaller than half an ulp still count on average; needs
            state_precision "fp32", "bf16" or "int8"; per group (default: False).
        rounding_seed: the seed of that rounding's random bits, which are a
            function of (seed, step, tensor position, element): no generator
            state to save, and a resumed run draws the same bits (default: 0).

    State dicts have PyTorch's layout and cross-load with
    ``torch.optim.RMSprop`` both ways; a group saved by PyTorch reads as the
    "torch" preset, one saved by timm's ``RMSpropTF`` as the "timm" preset,
    and by default the saved groups' knobs replace the current ones, as in
    PyTorch (``load_state_dict(sd, knobs="current" | "strict")`` otherwise).
    ``load_state_dict`` checks everything (group and parameter counts, state
    keys, buffer shapes and dtypes, steps, layout version, knob values) after
    its pre-hooks and before it changes anything; a mismatch raises ValueError.

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
        nonfinite: str = "propagate",
        state_precision: str = "param",
        stochastic_rounding: bool = False,
        rounding_seed: int = 0,
    ) -> None:
        check_policy(nonfinite)
        self.nonfinite = nonfinite
        self._pending_skips: Tensor | None = None
        self._backward_handle: Any = None  # set by rmsprop.step_in_backward
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
            "skipped_steps": 0,
            "state_precision": state_precision,
            "stochastic_rounding": stochastic_rounding,
            "rounding_seed": rounding_seed,
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
            if self.param_groups:  # the count is optimizer-wide: every group holds it
                param_group["skipped_steps"] = self.skipped_steps
        super().add_param_group(param_group)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        # GradScaler.step hands the whole step to an optimizer that says this,
        # so with step_in_backward attached it meets step()'s clear error
        # instead of failing on the gradients backward already freed.
        return self._backward_handle is not None

    @property
    def skipped_steps(self) -> int:
        """Steps that ``nonfinite="skip"`` skipped, over the optimizer's life
        (kept in every param group, so state dicts carry it)."""
        self._settle_skips()
        return self.param_groups[0]["skipped_steps"] if self.param_groups else 0

    def _settle_skips(self) -> None:
        """Add the skips decided on an accelerator (one host read, here) to the groups."""
        if self._pending_skips is not None:
            pending, self._pending_skips = int(self._pending_skips.item()), None
            for group in self.param_groups:
                group["skipped_steps"] += pending

    def state_dict(self) -> dict[str, Any]:
        self._settle_skips()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any], *, knobs: str = "saved") -> None:
        """Load a state dict, checked in full before anything changes.

        ``knobs`` says whose hyperparameters and semantic knobs win where the
        saved groups and this optimizer's differ (the per-parameter state and
        the skipped-step count always come from the file):

        - ``"saved"`` (PyTorch's rule): the saved groups' values replace ours;
        - ``"current"``: this optimizer's values stay (lr included); buffers
          the current knobs need and the file lacks start at zero;
        - ``"strict"``: any difference in a semantic knob (everything but lr)
          is a ValueError naming it; otherwise as "saved".
        """
        if knobs not in _KNOB_MODES:
            raise ValueError(f"Invalid knobs value: {knobs!r} (one of {', '.join(map(repr, _KNOB_MODES))})")
        # Our own last pre-hook: it sees what the user's hooks return, and
        # checks the layout before PyTorch's loader indexes into it.
        handle = self.register_load_state_dict_pre_hook(_check_layout)
        self._loading_knobs = knobs
        try:
            super().load_state_dict(state_dict)
        finally:
            handle.remove()
            del self._loading_knobs
            self.__dict__.pop("_loading_raw", None)

    def __getstate__(self) -> dict[str, Any]:
        self._settle_skips()
        return {**super().__getstate__(), "_explicit": self._explicit, "nonfinite": self.nonfinite}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Everything is checked before anything is set: load_state_dict calls
        # this with the loaded groups and state, so a mismatch leaves us as we were.
        groups = state["param_groups"]
        for group in groups:
            _translate_foreign_group(group)
            for key, value in _TORCH_GROUP_DEFAULTS.items():
                group.setdefault(key, value)
        # PyTorch's loader casts every state tensor to its parameter's dtype,
        # 8-bit codes included: the buffers come from the file again (below),
        # the codes and scales before they are checked.
        raw = getattr(self, "_loading_raw", {})
        for p, saved in raw.items():
            for key, value in saved.items():
                if key.endswith((quant.CODES, quant.ABSMAX)) and p in state["state"]:
                    state["state"][p][key] = value
        check_loaded(groups, state["state"], LAYOUT_VERSION)
        knobs = getattr(self, "_loading_knobs", None)  # set by load_state_dict only
        if knobs is not None:
            # How the state is stored is this optimizer's choice, as its
            # parameters' dtype and device are in PyTorch's loader: the file's
            # buffers are converted to it (rmsprop.precision), whatever knobs says.
            for loaded, current in zip(groups, self.param_groups):
                loaded["state_precision"] = current["state_precision"]
        for group in groups:
            check_group(group, lr_required=True)
            group["layout_version"] = LAYOUT_VERSION
        if knobs == "strict":
            _check_same_knobs(groups, self.param_groups)
        elif knobs == "current":
            for loaded, current in zip(groups, self.param_groups):
                loaded.update({k: v for k, v in current.items() if k not in ("params", "skipped_steps")})
        for group in groups:
            for p in group["params"]:
                saved = raw.get(p, {})
                if p in state["state"] and (group["state_precision"] != "param"
                                            or any(k.endswith(quant.CODES) for k in saved)):
                    _restore_buffers(p, group["state_precision"], state["state"][p], saved)
        if "_explicit" in state:  # pickled optimizer; load_state_dict passes none
            self._explicit = state.pop("_explicit")
            self.nonfinite = state.pop("nonfinite", "propagate")
            self._pending_skips = None
        elif not hasattr(self, "_explicit"):
            self._explicit = {}
            self.nonfinite = "propagate"
            self._pending_skips = None
        if not hasattr(self, "_backward_handle"):  # unpickled: the hooks stay with the original
            self._backward_handle = None
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
            state = self._ensure_state(p, group)
            params.append(p)
            grads.append(grad)
            square_avgs.append(get_buffer(state, "square_avg"))
            steps.append(state["step"])
            if group["momentum"] != 0:
                momentum_buffers.append(get_buffer(state, "momentum_buffer"))
            if group["centered"]:
                grad_avgs.append(get_buffer(state, "grad_avg"))
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
                [get_buffer(s, "square_avg") for s in states],
                [get_buffer(s, "grad_avg") for s in states] if group["centered"] else [],
                [get_buffer(s, "momentum_buffer") for s in states] if group["momentum"] != 0 else [],
                [s["step"] for s in states],
                **self._path_arguments(group),
            )

    def share_memory(self) -> RMSprop:
        """Create every state buffer now and move it into shared memory, for
        A3C-style training: worker processes (``torch.multiprocessing``) that
        receive this optimizer each hold their own optimizer object over the
        one shared model and the one set of shared statistics, and step
        without locks (Hogwild). Call ``model.share_memory()`` too. Returns self.
        """
        for group in self.param_groups:
            for p in group["params"]:
                for value in self._ensure_state(p, group).values():
                    value.share_memory_()
        return self

    def _ensure_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """``p``'s state with every buffer the group's knobs need. Buffers are
        created when first needed, so switching momentum or centering on
        mid-run works."""
        state = self.state[p]
        if not state:
            state.update(self._new_state(p, group))
        if group["momentum"] != 0 and not has_buffer(state, "momentum_buffer"):
            put_buffer(state, "momentum_buffer", _buffer(p, group, "momentum_buffer"))
        if group["centered"] and not has_buffer(state, "grad_avg"):
            put_buffer(state, "grad_avg", _buffer(p, group, "grad_avg"))
        return state

    @staticmethod
    def _new_state(p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """Fresh state for ``p``: PyTorch's keys, the buffers the knobs use."""
        step_device = p.device if group["capturable"] else None
        state = {"step": torch.zeros((), dtype=_get_scalar_dtype(), device=step_device)}
        put_buffer(state, "square_avg", _buffer(p, group, "square_avg", group["initial_square_avg"]))
        if group["momentum"] != 0:
            put_buffer(state, "momentum_buffer", _buffer(p, group, "momentum_buffer"))
        if group["centered"]:
            put_buffer(state, "grad_avg", _buffer(p, group, "grad_avg"))
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
        if self._backward_handle is not None:
            raise RuntimeError(
                "step() while step_in_backward is attached: backward already stepped every parameter "
                "(this includes GradScaler.step and closures); call handle.remove() to step here again"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        finite = None  # or a 0-d bool tensor that the paths obey on the device
        if self.nonfinite != "propagate":
            verdict = self._check_finite()
            if verdict is False:
                return loss
            if isinstance(verdict, Tensor):
                finite = verdict
        for group in self.param_groups:
            lists = self._gather_group(group)
            if lists[0]:
                self._apply(group, lists, finite)
        return loss

    @staticmethod
    def _apply(group: dict[str, Any], lists: tuple[list[Tensor], ...], finite: Tensor | None = None) -> None:
        """Run one group's update on its gathered tensors."""
        hyper = functional.make_hyper(
            group["lr"], group["capturable"], maximize=group["maximize"],
            **{k: group[k] for k in _HYPER_KNOBS},
        )
        functional.apply(*lists, hyper, foreach=group["foreach"], differentiable=group["differentiable"],
                         fused=group["fused"], finite=finite,
                         rounding_seed=group["rounding_seed"] if group["stochastic_rounding"] else None)

    def _check_finite(self) -> bool | Tensor:
        """Apply the nonfinite policy before anything changes: True (go on),
        False (skip this step; counted), or, where the gradients live on an
        accelerator and the policy is "skip", a 0-d bool tensor that the paths
        obey without a host sync. Raises FloatingPointError for "raise"."""
        where = [(g, j, p) for g, group in enumerate(self.param_groups)
                 for j, p in enumerate(group["params"]) if p.grad is not None]
        if not where:
            return True
        flags = finite_flags([p.grad for _, _, p in where])
        if self.nonfinite == "raise":
            if not bool(flags.all()):
                g, j, p = where[int((~flags).nonzero()[0])]
                names = self.param_groups[g].get("param_names")
                who = f"'{names[j]}'" if names else f"{j} of param group {g}"
                step = int(self.state[p]["step"]) + 1 if self.state.get(p) else 1
                raise FloatingPointError(
                    f"non-finite gradient (NaN or Inf) for parameter {who} at step {step}; "
                    "nothing was changed (nonfinite='raise')"
                )
            return True
        finite = flags.all()
        if finite.is_cpu:
            if bool(finite):
                return True
            for group in self.param_groups:
                group["skipped_steps"] += 1
            return False
        skipped = (~finite).to(torch.int64)
        self._pending_skips = skipped if self._pending_skips is None else self._pending_skips + skipped
        return finite

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


_BUFFERS = ("square_avg", "grad_avg", "momentum_buffer")


def _buffer(p: Tensor, group: dict[str, Any], key: str, fill: float = 0.0) -> Tensor | quant.Blockwise:
    """State buffer ``key`` for ``p``, filled with ``fill``, stored as the group's state_precision says."""
    return new_buffer(p, group["state_precision"], signed=key != "square_avg", fill=fill)


def _restore_buffers(p: Tensor, precision: str, loaded: dict[str, Any], raw: dict[str, Any]) -> None:
    """Put one parameter's loaded buffers into the form ``precision`` stores them in.

    ``raw`` holds the buffers as the file had them (PyTorch's loader has cast
    ``loaded``'s to the parameter's dtype, codes included). A buffer already
    in its storage form is taken exactly; otherwise it is decoded or widened to
    float32 (float64 for float64 parameters) and stored anew, so a full-precision
    state dict loads into an int8 optimizer and the other way round.
    """
    for key in _BUFFERS:
        source = get_buffer(raw, key)
        if source is None:
            continue
        pop_buffer(loaded, key)
        to_codes = precision == "int8" and quant.quantized(p)
        if quant.is_quantized(source) and to_codes:
            buf = quant.Blockwise(*(x.to(device=p.device, copy=True).contiguous() for x in source))
        else:
            wide = torch.promote_types(p.dtype, torch.float32) if not p.is_complex() else p.dtype
            values = load(source, wide)
            if to_codes:
                check_quantizable(p)
                buf = quant.encode(values.to(p.device), signed=key != "square_avg")
            elif precision == "param":  # PyTorch's rule: the parameter's dtype and device
                buf = values.to(device=p.device, dtype=p.dtype, copy=True)
            else:
                buf = values.to(device=p.device, dtype=state_dtype(p, precision), copy=True)
        put_buffer(loaded, key, buf)


_KNOB_MODES = ("saved", "current", "strict")

# The knobs that define the update (lr and the path choices are not among them).
_SEMANTIC_KNOBS = (*(k for k in KNOBS if k != "lr"), "maximize")


def _check_layout(opt: Optimizer, state_dict: Any) -> None:
    """A state dict's outer layout and counts, with messages that say what differs."""
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
        raise ValueError("loaded state dict must be a dict with 'state' and 'param_groups' keys")
    saved = state_dict["param_groups"]
    if len(saved) != len(opt.param_groups):
        raise ValueError(
            f"loaded state dict has a different number of parameter groups: {len(saved)} saved, "
            f"{len(opt.param_groups)} in this optimizer"
        )
    for g, (ours, theirs) in enumerate(zip(opt.param_groups, saved)):
        if len(ours["params"]) != len(theirs["params"]):
            raise ValueError(
                f"loaded state dict contains a parameter group that doesn't match the size of optimizer's "
                f"group: group {g} has {len(theirs['params'])} parameters saved, {len(ours['params'])} here"
            )
    # The per-parameter checks, here too: PyTorch's loader casts every buffer
    # to its parameter's dtype next, which would hide a complex or integer one.
    state = state_dict["state"]
    raw = {p: state[i] for ours, theirs in zip(opt.param_groups, saved)
           for i, p in zip(theirs["params"], ours["params"]) if i in state}
    check_loaded([{**theirs, "params": ours["params"]} for ours, theirs in zip(opt.param_groups, saved)],
                 raw, LAYOUT_VERSION)
    opt._loading_raw = raw  # type: ignore[attr-defined]  # the buffers before PyTorch casts them


def _check_same_knobs(loaded: list[dict[str, Any]], current: list[dict[str, Any]]) -> None:
    differences = [
        f"group {g} {key}: saved {theirs[key]!r}, current {ours[key]!r}"
        for g, (theirs, ours) in enumerate(zip(loaded, current))
        for key in _SEMANTIC_KNOBS
        if theirs[key] != ours[key]
    ]
    if differences:
        raise ValueError("loaded state dict's knobs differ (knobs='strict'): " + "; ".join(differences))


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
