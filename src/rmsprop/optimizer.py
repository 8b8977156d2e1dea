"""``rmsprop.RMSprop``: the drop-in door onto the engine.

The class holds the optimizer's life cycle; the parts live beside it: the
settings a group may hold (:mod:`rmsprop.settings`), planning and writing a
step (:mod:`rmsprop.plan`), the non-finite policy (:mod:`rmsprop.finite`),
loading state dicts (:mod:`rmsprop.checkpoint`) and the state's storage
(:mod:`rmsprop.precision`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    ParamsT,
    _global_optimizer_post_hooks,
    _global_optimizer_pre_hooks,
    _use_grad_for_differentiable,
)

from .checkpoint import KNOB_MODES, LAYOUT_VERSION, check_layout, settle
from .finite import check_max_norm, check_policy, grad_norms, verdict
from .plan import GroupPlan, check_settings, new_state, new_step, plan_group, run_group, step_device
from .precision import storage_refusal
from .presets import KNOBS, get_preset
from .settings import SETTINGS, check_group

__all__ = ["RMSprop", "LAYOUT_VERSION", "describe"]


class RMSprop(Optimizer):
    r"""RMSProp with every major framework's semantics, selectable by name or knob.

    Positional order, names and (with no ``preset``) defaults are those of
    :class:`torch.optim.RMSprop`, which this class reproduces bit for bit.

    The update, for each parameter θ with gradient g, square average v
    (``square_avg``), gradient average ḡ (``grad_avg``), momentum buffer b
    (``momentum_buffer``) and step count t (after this step), with η = ``lr``,
    α = ``alpha``, ε = ``eps``, λ = ``weight_decay``, μ = ``momentum``. Every
    path marks its code with these numbers::

        (0)  g ← g·min(1, c/(‖G‖ + 10⁻⁶))             if max_grad_norm = c; ‖G‖ over every gradient
        (0') g ← g·min(1, κ·max(‖θ‖, 10⁻³)/max(‖g‖, 10⁻⁶))   per unit, if agc_clip = κ > 0
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
             caution (μ > 0): the step s that (12)/(14) subtract (b, or the nesterov sum),
        (15) s ← s ⊙ c/max(mean(c), 10⁻³),  c = [s·g > 0]   per tensor; b is stored unmasked
             ema_decay = δ > 0: the weights' average e, after the update,
        (16) e ← e + w·(θ − e),  w = 1 at t = 1, 1 − δ every ema_every-th step, else 0

    In (0') a unit is a slice along dim 0 (a weight's output row), or the
    whole tensor when it has at most one dim; (0') applies where ‖g‖ ≥ the
    limit. In (16), with ``ema_warmup``, the n-th averaging step uses
    δₙ = min(δ, 1 − n^(−2/3)) instead of δ.

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
            (the same update compiled by Inductor), False never to compile,
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
        op_order: whose order of operations (4) and (5) round in: "torch",
            "torch-1.5" (SB3's ``RMSpropTFLike``) or "tf" (TensorFlow, timm);
            equal in exact arithmetic, each matches its framework's bits
            (:data:`rmsprop.engine.OP_ORDERS`) (default: the preset's; "torch").
        caution: cautious momentum, (15): step only where the momentum step
            and the gradient agree in sign, as timm's ``RMSpropTF(caution=True)``
            and the Cautious Optimizers paper (Liang et al., 2024); nothing
            changes without momentum. Refused for sharded (FSDP2) parameters,
            whose per-tensor mean a rank cannot see whole (default: False).
        agc_clip: κ of adaptive gradient clipping, (0'): each unit's gradient
            is scaled down to at most κ times its weights' norm, as NFNets
            (Brock et al., 2021) and timm's ``adaptive_clip_grad``; per
            group, works with ``step_in_backward`` (default: 0, off).
        max_grad_norm: c of global-norm clipping, (0): the gradients of a
            step are scaled as ``torch.nn.utils.clip_grad_norm_(params, c)``
            scales them, inside the step and in the same read of the
            gradients as the ``nonfinite`` check; the gradients themselves
            are left as they are. The norm is kept as ``grad_norm``, a
            device tensor. Optimizer-wide; refused with ``step_in_backward``
            (default: None, off).
        ema_decay: δ of an exponential moving average of the weights, (16),
            kept in the state (``"ema"``, float32 or wider whatever
            ``state_precision``) and updated in the same pass as the weights;
            it starts from the weights after the first step, as Keras's
            ``use_ema`` and timm's ``ModelEmaV3`` (given the step). Use it
            through :meth:`ema_weights` and :meth:`copy_ema_to`; per group
            (default: 0, off).
        ema_every: average every this many steps (steps 1, 1 + k, 1 + 2k, …)
            (default: 1).
        ema_warmup: warm δ up as timm's ``ModelEmaV3(use_warmup=True)``
            with its defaults (γ = 1, p = 2/3) (default: False).
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
            function of (seed, step, the parameter's index in the optimizer,
            element): no generator state to save, every path and
            ``step_in_backward`` draw the same bits, and a resumed run draws
            them again (default: 0).
        kahan_summation: keep a bfloat16 compensation c per bfloat16
            parameter (Kahan summation, as optimi does): the update runs on
            θ + c in float32, θ is written rounded to nearest and c keeps
            what the rounding lost, so updates below half a bfloat16 step
            add up, deterministically, for 2 more bytes per parameter
            (state key ``"kahan_comp"``). Needs bfloat16 parameters and
            state_precision "fp32", "bf16" or "int8"; not with
            stochastic_rounding. Switched off, the compensation is dropped
            at the group's next step; per group (default: False).

    State dicts have PyTorch's layout and cross-load with
    ``torch.optim.RMSprop`` both ways; by default the values a saved group
    states replace the current ones, as in PyTorch, and a setting it does not
    state keeps this optimizer's value (a group saved by PyTorch's class, or by
    SB3's ``RMSpropTFLike``, says nothing about where ε sits); one saved by
    timm's ``RMSpropTF`` reads as the "timm" preset
    (``load_state_dict(sd, knobs="current" | "strict")`` otherwise).
    ``load_state_dict`` checks everything (group and parameter counts, state
    keys, buffer shapes and dtypes, steps, layout version, knob values) after
    its pre-hooks and before it changes anything; a mismatch raises ValueError.

    Every setting a group holds is a row of :data:`rmsprop.settings.SETTINGS`.
    Validation is PyTorch's, tightened: ``alpha`` must lie in [0, 1] (PyTorch
    accepts any α ≥ 0), and numbers must be finite. It runs when a group is
    built, when a state dict loads, and at every step for each group whose
    settings changed since they last passed (``param_groups`` edited by hand),
    before anything is written.

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
        op_order: str | None = None,
        caution: bool = False,
        agc_clip: float = 0.0,
        max_grad_norm: float | None = None,
        ema_decay: float = 0.0,
        ema_every: int = 1,
        ema_warmup: bool = False,
        nonfinite: str = "propagate",
        state_precision: str = "param",
        stochastic_rounding: bool = False,
        rounding_seed: int = 0,
        kahan_summation: bool = False,
    ) -> None:
        check_policy(nonfinite)
        check_max_norm(max_grad_norm)
        self._nonfinite = nonfinite
        self._max_grad_norm = max_grad_norm
        self._grad_norm: Tensor | None = None
        self._pending_skips: Tensor | None = None
        self._backward_handle: Any = None  # set by rmsprop.step_in_backward
        self._checked: dict[int, Any] = {}  # id(group) -> what its last check found (rmsprop.plan)
        self._shared = False  # share_memory() was called: new buffers go to shared memory too
        base = get_preset("torch" if preset is None else preset)
        arguments = dict(
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
            capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable,
            fused=fused, eps_in_sqrt=eps_in_sqrt, initial_square_avg=initial_square_avg,
            lr_in_momentum=lr_in_momentum, nesterov=nesterov, decoupled_weight_decay=decoupled_weight_decay,
            bias_correction=bias_correction, op_order=op_order, caution=caution, agc_clip=agc_clip,
            ema_decay=ema_decay, ema_every=ema_every, ema_warmup=ema_warmup, state_precision=state_precision,
            stochastic_rounding=stochastic_rounding, rounding_seed=rounding_seed,
            kahan_summation=kahan_summation,
        )
        # Preset knobs the caller passed: they beat any preset, a group's own included.
        self._explicit = {k: arguments[k] for k in KNOBS if arguments[k] is not None}
        defaults = {s.name: s.default for s in SETTINGS}  # every row, from the table
        defaults.update(base.knobs(), **self._explicit, preset=base.name)
        defaults.update({k: v for k, v in arguments.items() if k not in KNOBS})
        check_group(defaults, lr_required=False)
        super().__init__(params, defaults)

    @property
    def nonfinite(self) -> str:
        """What a step does with NaN or ±Inf gradients (:mod:`rmsprop.finite`);
        optimizer-wide, checked when set."""
        return self._nonfinite

    @nonfinite.setter
    def nonfinite(self, value: str) -> None:
        check_policy(value)
        if value != "propagate" and self._backward_handle is not None:
            raise ValueError(f"nonfinite={value!r} cannot be honoured while step_in_backward is attached: it "
                             "updates each parameter as its gradient completes, so no decision can wait for "
                             "all the gradients")
        self._nonfinite = value

    @property
    def max_grad_norm(self) -> float | None:
        """Line (0)'s c: every step scales the gradients by min(1, c/(‖g‖ + 10⁻⁶)),
        ‖g‖ the L2 norm over every gradient of the step, as
        ``torch.nn.utils.clip_grad_norm_`` (None: off); optimizer-wide, checked when set."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value: float | None) -> None:
        check_max_norm(value)
        if value is not None and self._backward_handle is not None:
            raise ValueError(_NO_GLOBAL_CLIP_IN_BACKWARD)
        self._max_grad_norm = value

    @property
    def grad_norm(self) -> Tensor | None:
        """The global gradient norm of the last step, before clipping, as a 0-d
        tensor on the gradients' device (never read back to the host); None
        before the first step with ``max_grad_norm`` set."""
        return self._grad_norm

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its missing knobs come from the explicit
        constructor arguments, then its own ``"preset"`` (if it names one),
        then the optimizer's defaults. Raises before anything changes; with
        ``step_in_backward`` attached, the new parameters step in backward too."""
        if isinstance(param_group, dict):
            if "params" in param_group and not isinstance(param_group["params"], (Tensor, list)):
                param_group["params"] = list(param_group["params"])  # as PyTorch does: a generator runs once
            fill = {}
            if "preset" in param_group:
                fill = {**get_preset(param_group["preset"]).knobs(), **self._explicit}
            merged = {**self.defaults, **fill, **param_group}
            where = f"param group {len(self.param_groups)}"
            check_group(merged, where)
            params = merged.get("params", [])
            for j, p in enumerate([params] if isinstance(params, Tensor) else params):
                if isinstance(p, tuple):  # named parameters
                    p = p[1]
                reason = storage_refusal(p, merged["state_precision"], merged["stochastic_rounding"],
                                         merged["kahan_summation"]) if isinstance(p, Tensor) else None
                if reason is not None:
                    raise ValueError(f"parameter {j} of {where}: {reason}")
            for key, value in fill.items():
                param_group.setdefault(key, value)
            if self.param_groups:  # the count is optimizer-wide: every group holds it
                param_group["skipped_steps"] = self.skipped_steps
        super().add_param_group(param_group)
        if getattr(self, "_backward_handle", None) is not None:
            self._backward_handle.attach(self.param_groups[-1])

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
        """Load a state dict, checked in full before anything changes
        (:mod:`rmsprop.checkpoint`).

        ``knobs`` says whose hyperparameters and semantic knobs win where the
        saved groups and this optimizer's differ (the per-parameter state and
        the skipped-step count always come from the file):

        - ``"saved"`` (PyTorch's rule): the values the saved groups state
          replace ours; a setting a group does not state (a file written by
          PyTorch's class or SB3's ``RMSpropTFLike`` holds none of ours) keeps
          this optimizer's value;
        - ``"current"``: this optimizer's values stay (lr included); buffers
          the current knobs need and the file lacks start at zero;
        - ``"strict"``: any difference in a setting that changes the numbers
          (every ``strict`` row of :data:`rmsprop.settings.SETTINGS`: all but
          lr, the path choices, the storage, which the loading optimizer
          decides, and the records) that the file states is a ValueError
          naming it; otherwise as "saved".
        """
        if knobs not in KNOB_MODES:
            raise ValueError(f"Invalid knobs value: {knobs!r} (one of {', '.join(map(repr, KNOB_MODES))})")
        # Our own last pre-hook: it sees what the user's hooks return, and
        # checks the layout before PyTorch's loader indexes into it.
        handle = self.register_load_state_dict_pre_hook(check_layout)
        self._loading_knobs = knobs
        try:
            super().load_state_dict(state_dict)
        finally:
            handle.remove()
            del self._loading_knobs
            self.__dict__.pop("_loading_raw", None)

    def __getstate__(self) -> dict[str, Any]:
        self._settle_skips()
        return {**super().__getstate__(), "_explicit": self._explicit, "nonfinite": self.nonfinite,
                "_shared": self._shared, "max_grad_norm": self.max_grad_norm}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Everything is checked before anything is set: load_state_dict calls
        # this with the loaded groups and state, so a mismatch leaves us as we were.
        knobs = getattr(self, "_loading_knobs", None)  # set by load_state_dict only
        current = self.param_groups if knobs is not None else state["param_groups"]
        settle(state["param_groups"], state["state"], current, knobs, getattr(self, "_loading_raw", {}))
        if "_explicit" in state:  # pickled optimizer; load_state_dict passes none
            self._explicit = state.pop("_explicit")
            self._nonfinite = state.pop("nonfinite", "propagate")
            self._shared = state.pop("_shared", False)
            self._max_grad_norm = state.pop("max_grad_norm", None)
            self._pending_skips = None
            self._grad_norm = None
        elif not hasattr(self, "_explicit"):
            self._explicit = {}
            self._nonfinite = "propagate"
            self._shared = False
            self._max_grad_norm = None
            self._pending_skips = None
            self._grad_norm = None
        if not hasattr(self, "_backward_handle"):  # unpickled: the hooks stay with the original
            self._backward_handle = None
        self._checked = {}
        super().__setstate__(state)
        for group in self.param_groups:
            for p in group["params"]:
                p_state = self.state.get(p, {})
                step = p_state.get("step") if p_state else None
                if step is None:
                    continue
                if not (torch.is_tensor(step) and step.is_floating_point()):
                    p_state["step"] = new_step(p, group, float(step))
                elif step.device != step_device(p, group):  # e.g. a CPU run's checkpoint on a GPU
                    p_state["step"] = step.to(step_device(p, group))

    def _plan(self) -> list[GroupPlan]:
        """Every group's step, decided (:mod:`rmsprop.plan`); nothing written."""
        plans, offset = [], 0
        for g, group in enumerate(self.param_groups):
            plan = plan_group(self, g, group, offset)
            if plan is not None:
                plans.append(plan)
            offset += len(group["params"])
        return plans

    @torch.no_grad()
    def warm_up(self) -> None:
        """Run one step on scratch copies of the parameters and state.

        Nothing the optimizer holds changes; what it buys is that the fused
        path compiles now, for the very structures ``step()`` will run, so the
        first real ``step()`` runs at full speed. Every parameter that
        requires grad is assumed to get a gradient of its own layout.
        """
        offset = 0
        for g, group in enumerate(self.param_groups):
            start, offset = offset, offset + len(group["params"])
            check_settings(self, g, group)
            # Scratch copies in the same layout, in the same places (so each
            # keeps its parameter's index, which salts stochastic rounding).
            scratch = [torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device=p.device).copy_(p)
                       for p in group["params"]]
            for copy, p in zip(scratch, group["params"]):
                if p.requires_grad:
                    copy.grad = torch.zeros_like(p)  # autograd's layout: the parameter's where it is dense
            plan = plan_group(self, g, {**group, "params": scratch}, start, settings_checked=True)
            if plan is None:
                continue
            finite = None
            if self.nonfinite == "skip" and not all(grad.is_cpu for grad in plan.grads):
                finite = torch.ones((), dtype=torch.bool, device=plan.grads[0].device)
            scale = None if self.max_grad_norm is None else torch.ones_like(grad_norms(plan.grads)[0])
            run_group(_Scratch(group, scratch, group["params"]), plan, finite, scale)  # type: ignore[arg-type]

    def _averages(self) -> list[tuple[Tensor, Tensor]]:
        """(parameter, its average) for every parameter whose group averages
        its weights (line (16)) and that has stepped."""
        pairs = []
        for group in self.param_groups:
            for p in group["params"]:
                ema = self.state.get(p, {}).get("ema") if group["ema_decay"] != 0 else None
                if ema is not None:
                    pairs.append((p, ema))
        return pairs

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Swap the weights' averages (``ema_decay=``, line (16)) into the
        parameters for the ``with`` block (evaluation, a checkpoint of the
        averaged model), and the weights back after it, bit for bit.

        Parameters without an average (their group has ``ema_decay=0``, or
        they never stepped) keep their weights. A bfloat16 or float16
        parameter holds its average rounded to nearest. Do not step inside
        the block: the step would run from the averages."""
        with torch.no_grad():
            saved = [(p, p.detach().clone()) for p, _ in self._averages()]
            for p, ema in self._averages():
                p.copy_(ema)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, weights in saved:
                    p.copy_(weights)

    @torch.no_grad()
    def copy_ema_to(self, model: torch.nn.Module) -> None:
        """Write the weights' averages into ``model``'s parameters, for export.

        ``model`` is the model this optimizer trains (its parameters are
        this optimizer's: the averages replace the weights for good), or a
        copy of it when the optimizer was built from named parameters
        (``model.named_parameters()``: matched by name). Everything is
        matched before anything is written; a parameter that cannot be
        matched is a ValueError. ``copy.deepcopy(model)`` inside
        ``with optimizer.ema_weights():`` exports a copy in every case."""
        by_id = {id(p): p for p in model.parameters()}
        by_name = dict(model.named_parameters())
        targets = []
        for g, group in enumerate(self.param_groups):
            names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                ema = self.state.get(p, {}).get("ema") if group["ema_decay"] != 0 else None
                if ema is None:
                    continue
                target = by_id.get(id(p))
                if target is None and names is not None:
                    target = by_name.get(names[j])
                if target is None:
                    who = f"parameter {names[j]!r}" if names else f"parameter {j} of param group {g}"
                    hint = "" if names else " (built from named_parameters(), it matches a copy by name)"
                    raise ValueError(f"copy_ema_to: {who} is not a parameter of the model given{hint}")
                if target.shape != ema.shape:
                    who = repr(names[j]) if names else f"parameter {j} of param group {g}"
                    raise ValueError(f"copy_ema_to: the model's {who} has shape {tuple(target.shape)}, "
                                     f"its average {tuple(ema.shape)}")
                targets.append((target, ema))
        for target, ema in targets:
            target.copy_(ema)

    def share_memory(self) -> RMSprop:
        """Create every state buffer now and move it into shared memory, for
        A3C-style training: worker processes (``torch.multiprocessing``) that
        receive this optimizer each hold their own optimizer object over the
        one shared model and the one set of shared statistics, and step
        without locks (Hogwild). Buffers created later (momentum switched on
        mid-run) go to shared memory too. Call ``model.share_memory()`` too.
        Returns self.
        """
        from .plan import ensure_state

        self._shared = True
        for group in self.param_groups:
            for p in group["params"]:
                for value in ensure_state(self, p, group).values():
                    value.share_memory_()
        return self

    @staticmethod
    def profile_hook_step(func: Callable[..., Any]) -> Callable[..., Any]:
        """PyTorch's wrapper around ``step`` (the step pre- and post-hooks, the
        profiler's range and entry point), except that the profiler range is
        opened only while a profiler records: opening it costs more than a
        small model's whole update. ``Optimizer`` applies this to ``step``.

        Inside a user's ``torch.compile`` the wrapper, hooks included, runs
        as one eager region: the only graph break a step adds is the one at
        its call (the profiler query would otherwise add one of its own)."""

        @torch.compiler.disable
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if torch._C._autograd._profiler_enabled():
                with torch.autograd.profiler.record_function(f"Optimizer.step#{type(args[0]).__name__}.step"):
                    return _hooked_step(func, args, kwargs)
            return _hooked_step(func, args, kwargs)

        return wrapper

    # Inside a user's torch.compile the step runs as its own region (a clean
    # graph break): the fused path brings its own compiled code.
    @torch.compiler.disable
    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step: plan every group (every check
        that can fail), decide the non-finite verdict, then write.

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
        plans = self._plan()
        decision, scale = verdict(self, plans)  # one read of the gradients: (0)'s factor and the verdict
        if decision is False:
            return loss
        finite = decision if isinstance(decision, Tensor) else None  # obeyed on the device
        for plan in plans:
            run_group(self, plan, finite, scale)
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


_NO_GLOBAL_CLIP_IN_BACKWARD = (
    "max_grad_norm cannot be honoured while step_in_backward is attached: it updates each parameter as its "
    "gradient completes, before the global norm over all of them exists; clip per tensor with agc_clip= "
    "instead, or step with optimizer.step()")


class _Scratch:
    """What warm_up's step sees as its optimizer: state that goes nowhere."""

    def __init__(self, group: dict[str, Any], scratch: list[Tensor], params: list[Tensor]) -> None:
        self.state = {copy: new_state(p, group) for copy, p in zip(scratch, params)}
        self._shared = False


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
    if mu != 0 and group["caution"]:
        parts.append("cautious: the step only where it agrees with g in sign, rescaled")
    if group["agc_clip"]:
        parts.insert(0, f"g clipped per unit to {group['agc_clip']:g}·‖θ‖")
    if group["ema_decay"]:
        every = f" every {group['ema_every']} steps" if group["ema_every"] != 1 else ""
        warm = " (warmed up)" if group["ema_warmup"] else ""
        parts.append(f"e ← lerp(e, θ, 1 − {group['ema_decay']:g}){every}{warm}")
    return f"[{group['preset']}] " + "; ".join(parts)
