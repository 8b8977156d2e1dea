"""Every step plans, then writes.

:func:`plan_group` reads one param group and decides everything that can
fail: its settings (validated when they changed since the last check), each
parameter's gradient (sparse, shape, device, dtype), what its state can be
stored as, the state it already has, and the path. It writes nothing, not
even lazily created state. Only when every group of the step has been
planned (and the non-finite verdict reached: :mod:`rmsprop.finite`) does
:func:`run_group` create the missing state and hand the tensors to a path,
and paths raise no user error. So a step that raises changes nothing.

A group's plan is kept for the next step, which reuses it with its own
gradients only after checking that nothing the plan was made from changed
(:class:`_Reusable`: the same parameters, state objects and layouts): a
small model's step is mostly this Python, and checking costs about half
of planning (``tests/test_reuse.py`` edits an optimizer between
steps in every way it could go stale).
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import is_
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import Parameter
from torch.optim.optimizer import _get_scalar_dtype

from . import functional
from .engine import Hyper
from .guards import Guard, layout_guard
from .paths import choose_path
from .paths.grouping import StepTensors
from .precision import (
    KAHAN_COMP,
    Buffer,
    get_buffer,
    has_buffer,
    in_storage,
    new_buffer,
    new_comp,
    put_buffer,
    restore_,
    storage_refusal,
    stored_keys,
)
from .quant import Blockwise
from .settings import check_group, fingerprint, hyper_from

if TYPE_CHECKING:
    from .optimizer import RMSprop

__all__ = ["GroupPlan", "SparseGradientError", "plan_group", "run_group", "check_settings", "new_state"]


class SparseGradientError(TypeError, RuntimeError):
    """A sparse gradient: a TypeError, and the RuntimeError PyTorch raises."""


@dataclass
class GroupPlan:
    """One group's step, decided: what to update and how; nothing written yet."""

    index: int  # of the group in the optimizer
    group: dict[str, Any]
    positions: list[int]  # of the parameters in the group
    params: list[Tensor]
    grads: list[Tensor]
    idents: list[int]
    hyper: Hyper
    path: str
    states: list[dict[str, Any]] | None = None  # the parameters' states, when nothing is left to create
    tensors: StepTensors | None = None  # everything the path takes, when reused from the last step


class _Checked:
    """What the last check of a group found, to skip the next while nothing changed."""

    __slots__ = ("group", "fingerprint", "preset", "params", "path", "hyper", "last")

    def __init__(self, group: dict[str, Any], fingerprint: tuple, preset: str) -> None:
        self.group, self.fingerprint, self.preset = group, fingerprint, preset
        self.params: tuple[int, ...] | None = None  # ids of the parameters the path was chosen for
        self.path = ""
        self.hyper: Hyper | None = None
        self.last: _Reusable | None = None  # the last plan, while these settings hold


class _Reusable:
    """A group's last plan, made when every parameter had a gradient of its
    own dtype and a complete state, and what the next step checks before it
    reuses it (:func:`_reuse`): the same parameters, in the same places, each
    with a gradient; the same state dict, and in it the same object under
    every key the step reads (a missing key stays missing); and one guard
    (:mod:`rmsprop.guards`) that every parameter, gradient and buffer has
    its layout, type and ``requires_grad`` of then. Those are every fact the
    full plan's checks read, so a plan reused is the plan the checks would
    have made, and every step that could fail is planned in full. The
    settings are checked before (a change drops this record with its
    :class:`_Checked`)."""

    __slots__ = ("all_states", "offset", "params", "positions", "states", "read_from", "read_keys",
                 "read_values", "guard", "buffers", "idents", "state_tensors")

    def __init__(self, opt: RMSprop, group: dict[str, Any], offset: int, params: list[Tensor],
                 states: list[dict[str, Any]], tensors: StepTensors, guard: Guard) -> None:
        self.all_states, self.offset, self.params, self.states = opt.state, offset, params, states
        self.positions = list(range(len(params)))
        self.read_from: list[dict[str, Any]] = []
        self.read_keys: list[str] = []
        for state in states:
            keys = _read_keys(group, state)
            self.read_from += [state] * len(keys)
            self.read_keys += keys
        self.read_values = list(map(dict.get, self.read_from, self.read_keys))
        self.buffers = _buffers(tensors)
        self.idents, self.guard = tensors.idents, guard
        self.state_tensors: tuple[Any, ...] = tuple(tensors)[2:]  # a StepTensors' fields after the gradients


def _buffers(t: StepTensors) -> list[Tensor]:
    """Every state tensor of a step but the counts (8-bit buffers as their two tensors)."""
    out: list[Tensor] = []
    for buffers in (t.square_avgs, t.grad_avgs, t.momentum_buffers, t.emas, t.comps):
        for buffer in buffers:
            if isinstance(buffer, Blockwise):
                out += buffer
            else:
                out.append(buffer)
    return out


def _read_keys(group: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """The keys of a complete state that planning and running a step of this
    group read: the count, the Kahan compensation (present or not), and each
    buffer the knobs use under the key it is stored at (a full-width buffer's
    own key wins over 8-bit parts: rmsprop.precision), with the other forms'
    keys while that one is missing."""
    keys = ["step", KAHAN_COMP]
    for key in ("square_avg", *needed_buffers(group)):
        keys += (key,) if key in state else stored_keys(key)
    return keys


def _reuse(opt: RMSprop, checked: _Checked, g: int, group: dict[str, Any], offset: int) -> GroupPlan | None:
    """The group's last plan with this step's gradients, if nothing it was
    made from changed (:class:`_Reusable`); else None."""
    last = checked.last
    if last is None or opt.state is not last.all_states or offset != last.offset:
        return None
    params = group["params"]
    if len(params) != len(last.params) or not all(map(is_, params, last.params)):
        return None
    grads = [p.grad for p in params]  # (a None refused by the guard)
    if not all(map(is_, map(last.all_states.get, params), last.states)) or not all(
            map(is_, map(dict.get, last.read_from, last.read_keys), last.read_values)):
        return None
    if not last.guard.check(*params, *grads, *last.buffers):
        return None
    assert checked.hyper is not None  # (kept only then)
    return GroupPlan(g, group, last.positions, last.params, grads, last.idents, checked.hyper, checked.path,
                     last.states, StepTensors(last.params, grads, *last.state_tensors))


def _remember(opt: RMSprop, plan: GroupPlan, offset: int) -> _Reusable | None:
    """What the next step needs to reuse ``plan`` (made in full, every
    parameter of the group with a gradient), or None where no guard can be
    built. Sets the plan's tensors: this step runs them too."""
    assert plan.states is not None
    tensors = plan.tensors = _step_tensors(plan.group, plan.params, plan.grads, plan.idents, plan.states)
    guard = layout_guard([*plan.params, *plan.grads, *_buffers(tensors)])
    if guard is None:
        return None
    return _Reusable(opt, plan.group, offset, plan.params, plan.states, tensors, guard)


def check_settings(opt: RMSprop, g: int, group: dict[str, Any]) -> _Checked:
    """Validate group ``g``'s settings, unless nothing changed since they last passed.

    A group's ``preset`` is a record of what filled its knobs when it was
    built: renaming it later changes no knob, so it is refused.
    """
    values, types = fingerprint(group)
    seen = opt._checked.get(id(group))
    # Types first: only then are the values plain numbers, strings and flags.
    if seen is not None and seen.group is group and seen.fingerprint[1] == types \
            and seen.fingerprint[0] == values:
        return seen
    where = f"param group {g}"
    check_group(group, where)
    if seen is not None and seen.group is group and seen.preset != group["preset"]:
        raise ValueError(
            f"{where}'s preset changed from {seen.preset!r} to {group['preset']!r}: a preset fills a group's "
            "knobs when the group is built (add_param_group({'params': ..., 'preset': ...})); to change the "
            "update of an existing group, set its knobs"
        )
    checked = opt._checked[id(group)] = _Checked(group, (values, types), group["preset"])
    return checked


def _sharded(p: Tensor) -> bool:
    """A DTensor (FSDP2) split across ranks: each holds a part of the tensor."""
    return any(placement.is_shard() for placement in getattr(p, "placements", ()))


def _who(group: dict[str, Any], g: int, j: int) -> str:
    names = group.get("param_names")
    return f"parameter {names[j]!r}" if names else f"parameter {j} of param group {g}"


def plan_group(opt: RMSprop, g: int, group: dict[str, Any], offset: int,
               only: Tensor | None = None, settings_checked: bool = False) -> GroupPlan | None:
    """Decide group ``g``'s step (``offset``: the index of its first parameter
    in the optimizer); None when no parameter of it has a gradient. With
    ``only``, plan that one parameter of the group (step_in_backward)."""
    checked = None if settings_checked else check_settings(opt, g, group)
    if checked is not None and checked.last is not None and only is None:
        reused = _reuse(opt, checked, g, group, offset)
        if reused is not None:
            return reused
    precision, rounding = group["state_precision"], group["stochastic_rounding"]
    kahan = bool(group["kahan_summation"])
    plain = precision == "param" and not rounding  # the parameter's dtype; nothing to refuse but the dtype
    needs = needed_buffers(group)
    all_states = opt.state
    positions: list[int] = []
    params: list[Tensor] = []
    grads: list[Tensor] = []
    states: list[dict[str, Any]] = []  # complete only while `ready`
    ready = True  # every state exists, stored as the group says, with every buffer the knobs use
    as_they_are = True  # plain tensors, and gradients of their parameters' dtypes
    for j, p in enumerate(group["params"]):
        grad = p.grad
        if grad is None or (only is not None and p is not only):
            continue
        if grad.is_sparse:
            raise SparseGradientError(f"RMSprop does not support sparse gradients ({_who(group, g, j)})")
        shape, dtype, grad_dtype = p.shape, p.dtype, grad.dtype
        same_dtype = grad_dtype is dtype
        if grad.shape != shape or (not same_dtype and grad_dtype.is_complex != dtype.is_complex) or (
                grad.is_cpu is not p.is_cpu or not p.is_cpu and grad.device != p.device):
            raise ValueError(f"{_who(group, g, j)} has shape {tuple(shape)}, {dtype}, on {p.device}; "
                             f"its gradient has shape {tuple(grad.shape)}, {grad_dtype}, on {grad.device}")
        if not plain or not same_dtype:  # (a gradient is floating point: so is its parameter, if alike)
            reason = storage_refusal(p, precision, rounding, kahan)
            if reason is not None:
                raise ValueError(f"{_who(group, g, j)}: {reason}")
        subclass = type(p) is not Parameter and type(p) is not Tensor
        if subclass:
            as_they_are = False
        if subclass and _sharded(p):  # (a plain tensor is whole)
            if group["caution"]:
                raise ValueError(f"{_who(group, g, j)} is sharded ({p.placements}): caution=True needs each "
                                 "tensor whole, since (15) divides by the mean of its mask over the tensor")
            if group["agc_clip"] != 0 and (p.dim() <= 1 or any(
                    placement.is_shard() and placement.dim != 0 for placement in p.placements)):
                raise ValueError(f"{_who(group, g, j)} is sharded ({p.placements}): agc_clip needs each unit "
                                 "(a row along dim 0, or the whole of a 1-D tensor) on one rank, since (0') "
                                 "reads its norm")
        state = all_states.get(p)
        if state:  # every buffer of a state is made at once, or later at the shape square_avg has
            square_avg = state.get("square_avg")
            if square_avg is None:
                square_avg = get_buffer(state, "square_avg")
            quantized = isinstance(square_avg, Blockwise)
            stored = None if square_avg is None else (
                square_avg.codes.shape if quantized else square_avg.shape)
            if stored is not None and stored != shape:
                raise ValueError(f"{_who(group, g, j)} has shape {tuple(shape)} but its square_avg has shape "
                                 f"{tuple(stored)}: was the parameter's data replaced? Reset its state "
                                 "(optimizer.state.pop(p)) to start it afresh")
            if ready:
                ready = square_avg is not None and (
                    square_avg.dtype is dtype if plain and not quantized
                    else in_storage(square_avg, p, precision)) and (
                    not needs or all(has_buffer(state, k) for k in needs)) and (KAHAN_COMP in state) == kahan
        else:
            ready = False
        if not same_dtype:  # torch's `grad_dtype` allows it: g is read at θ's precision
            grad = grad.to(dtype)
            as_they_are = False
        positions.append(j)
        params.append(p)
        grads.append(grad)
        if ready and state is not None:
            states.append(state)
    if not params:
        return None
    idents = [offset + j for j in positions]
    # The path and the hyperparameters, decided again when the settings or
    # the parameters stepped change (a tensor lr is read at every step).
    ids = tuple(map(id, params))
    if checked is not None and checked.params == ids and checked.hyper is not None:
        path, hyper = checked.path, checked.hyper
    else:
        local = functional.local_tensors(params, group["differentiable"])
        path = choose_path(local, group["foreach"], group["differentiable"], group["fused"], precision,
                           1 + len(needs), lambda i: _who(group, g, positions[i]))
        hyper = hyper_from(group)
        if checked is not None:
            checked.params, checked.path = ids, path
            checked.hyper = None if isinstance(group["lr"], Tensor) else hyper
    plan = GroupPlan(g, group, positions, params, grads, idents, hyper, path, states if ready else None)
    if checked is not None and only is None:  # kept for the next step, when it can be
        reusable = ready and as_they_are and checked.hyper is not None and len(params) == len(group["params"])
        checked.last = _remember(opt, plan, offset) if reusable else None
    return plan


def who(plan: GroupPlan, i: int) -> str:
    """How an error names the ``i``-th parameter of a plan."""
    return _who(plan.group, plan.index, plan.positions[i])


def needed_buffers(group: dict[str, Any]) -> list[str]:
    """The buffers beside ``square_avg`` that the group's knobs use."""
    return [key for key, on in (("momentum_buffer", group["momentum"] != 0), ("grad_avg", group["centered"]),
                                ("ema", group["ema_decay"] != 0)) if on]


def run_group(opt: RMSprop, plan: GroupPlan, finite: Tensor | None = None,
              grad_scale: Tensor | None = None) -> None:
    """Write one planned group's step: complete its state, then run its path.
    ``grad_scale``: line (0)'s factor (``max_grad_norm``), or None."""
    group = plan.group
    tensors = plan.tensors
    if tensors is None:
        states = plan.states if plan.states is not None else [
            ensure_state(opt, p, group) for p in plan.params]
        tensors = _step_tensors(group, plan.params, plan.grads, plan.idents, states)
    seed = group["rounding_seed"] if group["stochastic_rounding"] else None
    functional.apply(tensors, plan.hyper, path=plan.path, differentiable=group["differentiable"],
                     finite=finite, rounding_seed=seed, grad_scale=grad_scale,
                     state_precision=group["state_precision"])


def _step_tensors(group: dict[str, Any], params: list[Tensor], grads: list[Tensor], idents: list[int],
                  states: list[dict[str, Any]]) -> StepTensors:
    """What a path takes: the tensors, and the buffers of complete states that the knobs use."""
    centered, use_momentum, use_ema = group["centered"], group["momentum"] != 0, group["ema_decay"] != 0
    square_avgs: list[Buffer] = []
    grad_avgs: list[Buffer] = []
    momentum_buffers: list[Buffer] = []
    emas: list[Tensor] = []
    comps: list[Tensor] = []
    kahan = group["kahan_summation"]
    steps: list[Tensor] = []
    for state in states:
        square_avgs.append(get_buffer(state, "square_avg"))  # type: ignore[arg-type]
        steps.append(state["step"])
        if centered:
            grad_avgs.append(get_buffer(state, "grad_avg"))  # type: ignore[arg-type]
        if use_momentum:
            momentum_buffers.append(get_buffer(state, "momentum_buffer"))  # type: ignore[arg-type]
        if use_ema:
            emas.append(state["ema"])
        if kahan:
            comps.append(state[KAHAN_COMP])
    return StepTensors(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, idents, emas, comps)


def ensure_state(opt: RMSprop, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
    """``p``'s state with every buffer the group's knobs need, in the group's
    storage. Buffers are created when first needed (switching momentum or
    centering on mid-run works), a changed ``state_precision`` converts the
    state, and after ``share_memory()`` new buffers go to shared memory too.
    The Kahan compensation starts at zero when ``kahan_summation`` is
    switched on, and is dropped when it is switched off (θ keeps the value
    rounded to nearest; what c held, under half a bfloat16 step, is lost)."""
    state = opt.state[p]
    if not state:
        state.update(new_state(p, group))
        _share(opt, state)
        return state
    precision = group["state_precision"]
    square_avg = state.get("square_avg")
    if square_avg is None or square_avg.dtype is not p.dtype or precision != "param":  # else stored as is
        square_avg = get_buffer(state, "square_avg")
        if square_avg is not None and not in_storage(square_avg, p, precision):
            restore_(state, p, precision)
            _share(opt, state)
    if group["momentum"] != 0 and not has_buffer(state, "momentum_buffer"):
        put_buffer(state, "momentum_buffer", new_buffer(p, precision, "momentum_buffer"))
        _share(opt, state)
    if group["centered"] and not has_buffer(state, "grad_avg"):
        put_buffer(state, "grad_avg", new_buffer(p, precision, "grad_avg"))
        _share(opt, state)
    if group["ema_decay"] != 0 and "ema" not in state:
        state["ema"] = _new_average(p, precision)
        _share(opt, state)
    if group["kahan_summation"] and KAHAN_COMP not in state:
        state[KAHAN_COMP] = new_comp(p)
        _share(opt, state)
    elif not group["kahan_summation"]:
        state.pop(KAHAN_COMP, None)
    return state


def _new_average(p: Tensor, precision: str) -> Tensor:
    """The weights' average, starting from the weights as they are (line (16)
    replaces it with the weights after the first step; switched on mid-run,
    it averages from here)."""
    ema = new_buffer(p, precision, "ema")
    assert isinstance(ema, Tensor)  # a wide buffer is never 8-bit
    return ema.copy_(p.detach())


def _share(opt: RMSprop, state: dict[str, Any]) -> None:
    if opt._shared:
        for value in state.values():
            if isinstance(value, Tensor) and not value.is_shared():
                value.share_memory_()


def new_step(p: Tensor, group: dict[str, Any], count: float = 0.0) -> Tensor:
    """``p``'s step count, a 0-d float32 tensor (PyTorch's layout): on the CPU
    for a CPU parameter unless the group is capturable, as PyTorch keeps it,
    and on the parameter's device for a parameter on an accelerator, as
    PyTorch's fused and capturable optimizers keep it. There a step never
    copies it to or from the host: the fused path adds to it on the device,
    under a ``nonfinite="skip"`` verdict that stays on the device."""
    # (a fill, not a copy from a host number: no transfer on an accelerator)
    return torch.full((), float(count), dtype=_get_scalar_dtype(), device=step_device(p, group))


def step_device(p: Tensor, group: dict[str, Any]) -> torch.device:
    """Where :func:`new_step` puts ``p``'s step count."""
    return p.device if group["capturable"] or not p.is_cpu else torch.device("cpu")


def new_state(p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
    """Fresh state for ``p``: PyTorch's keys, the buffers the knobs use."""
    state: dict[str, Any] = {"step": new_step(p, group)}
    precision = group["state_precision"]
    put_buffer(state, "square_avg", new_buffer(p, precision, "square_avg", group["initial_square_avg"]))
    if group["momentum"] != 0:
        put_buffer(state, "momentum_buffer", new_buffer(p, precision, "momentum_buffer"))
    if group["centered"]:
        put_buffer(state, "grad_avg", new_buffer(p, precision, "grad_avg"))
    if group["ema_decay"] != 0:
        state["ema"] = _new_average(p, precision)
    if group["kahan_summation"]:
        state[KAHAN_COMP] = new_comp(p)
    return state
