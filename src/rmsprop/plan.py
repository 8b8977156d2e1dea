"""Every step plans, then writes.

:func:`plan_group` reads one param group and decides everything that can
fail: its settings (validated when they changed since the last check), each
parameter's gradient (sparse, shape, device, dtype), what its state can be
stored as, the state it already has, and the path. It writes nothing, not
even lazily created state. Only when every group of the step has been
planned (and the non-finite verdict reached: :mod:`rmsprop.finite`) does
:func:`run_group` create the missing state and hand the tensors to a path,
and paths raise no user error. So a step that raises changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype

from . import functional
from .engine import Hyper
from .paths import choose_path
from .paths.grouping import StepTensors
from .precision import (
    BUFFERS,
    Buffer,
    get_buffer,
    has_buffer,
    in_storage,
    new_buffer,
    put_buffer,
    restore_,
    storage_refusal,
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


def check_settings(opt: RMSprop, g: int, group: dict[str, Any]) -> None:
    """Validate group ``g``'s settings, unless nothing changed since they last passed.

    A group's ``preset`` is a record of what filled its knobs when it was
    built: renaming it later changes no knob, so it is refused.
    """
    key = fingerprint(group)
    seen = opt._checked.get(id(group))
    if seen is not None and seen[0] is group and seen[1] == key:
        return
    where = f"param group {g}"
    check_group(group, where)
    if seen is not None and seen[0] is group and seen[2] != group["preset"]:
        raise ValueError(
            f"{where}'s preset changed from {seen[2]!r} to {group['preset']!r}: a preset fills a group's "
            "knobs when the group is built (add_param_group({'params': ..., 'preset': ...})); to change the "
            "update of an existing group, set its knobs"
        )
    opt._checked[id(group)] = (group, key, group["preset"])


def _who(group: dict[str, Any], g: int, j: int) -> str:
    names = group.get("param_names")
    return f"parameter {names[j]!r}" if names else f"parameter {j} of param group {g}"


def plan_group(opt: RMSprop, g: int, group: dict[str, Any], offset: int,
               only: Tensor | None = None, settings_checked: bool = False) -> GroupPlan | None:
    """Decide group ``g``'s step (``offset``: the index of its first parameter
    in the optimizer); None when no parameter of it has a gradient. With
    ``only``, plan that one parameter of the group (step_in_backward)."""
    if not settings_checked:
        check_settings(opt, g, group)
    precision, rounding = group["state_precision"], group["stochastic_rounding"]
    positions, params, grads, idents = [], [], [], []
    for j, p in enumerate(group["params"]):
        if p.grad is None or (only is not None and p is not only):
            continue
        grad = p.grad
        if grad.is_sparse:
            raise SparseGradientError(f"RMSprop does not support sparse gradients ({_who(group, g, j)})")
        if grad.shape != p.shape or grad.device != p.device or grad.is_complex() != p.is_complex():
            raise ValueError(f"{_who(group, g, j)} has shape {tuple(p.shape)}, {p.dtype}, on {p.device}; "
                             f"its gradient has shape {tuple(grad.shape)}, {grad.dtype}, on {grad.device}")
        reason = storage_refusal(p, precision, rounding)
        if reason is not None:
            raise ValueError(f"{_who(group, g, j)}: {reason}")
        state = opt.state.get(p)
        if state:
            for spec in BUFFERS:
                buf = get_buffer(state, spec.key)
                shape = (None if buf is None
                         else buf.codes.shape if isinstance(buf, Blockwise) else buf.shape)
                if shape is not None and shape != p.shape:
                    raise ValueError(f"{_who(group, g, j)} has shape {tuple(p.shape)} but its {spec.key} has "
                                     f"shape {tuple(shape)}: was the parameter's data replaced? Reset its "
                                     "state (optimizer.state.pop(p)) to start it afresh")
        if grad.dtype != p.dtype:  # torch's `grad_dtype` allows it: g is read at θ's precision
            grad = grad.to(p.dtype)
        positions.append(j)
        params.append(p)
        grads.append(grad)
        idents.append(offset + j)
    if not params:
        return None
    local = functional.local_tensors(params, group["differentiable"])
    path = choose_path(local, group["foreach"], group["differentiable"], group["fused"])
    return GroupPlan(g, group, positions, params, grads, idents, hyper_from(group), path)


def who(plan: GroupPlan, i: int) -> str:
    """How an error names the ``i``-th parameter of a plan."""
    return _who(plan.group, plan.index, plan.positions[i])


def run_group(opt: RMSprop, plan: GroupPlan, finite: Tensor | None = None) -> None:
    """Write one planned group's step: complete its state, then run its path."""
    group = plan.group
    centered, use_momentum = group["centered"], group["momentum"] != 0
    square_avgs: list[Buffer] = []
    grad_avgs: list[Buffer] = []
    momentum_buffers: list[Buffer] = []
    steps: list[Tensor] = []
    for p in plan.params:
        state = ensure_state(opt, p, group)
        square_avgs.append(get_buffer(state, "square_avg"))  # type: ignore[arg-type]
        steps.append(state["step"])
        if centered:
            grad_avgs.append(get_buffer(state, "grad_avg"))  # type: ignore[arg-type]
        if use_momentum:
            momentum_buffers.append(get_buffer(state, "momentum_buffer"))  # type: ignore[arg-type]
    tensors = StepTensors(plan.params, plan.grads, square_avgs, grad_avgs, momentum_buffers, steps,
                          plan.idents)
    seed = group["rounding_seed"] if group["stochastic_rounding"] else None
    functional.apply(tensors, plan.hyper, path=plan.path, differentiable=group["differentiable"],
                     finite=finite, rounding_seed=seed)


def ensure_state(opt: RMSprop, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
    """``p``'s state with every buffer the group's knobs need, in the group's
    storage. Buffers are created when first needed (switching momentum or
    centering on mid-run works), a changed ``state_precision`` converts the
    state, and after ``share_memory()`` new buffers go to shared memory too."""
    state = opt.state[p]
    if not state:
        state.update(new_state(p, group))
        _share(opt, state)
        return state
    precision = group["state_precision"]
    square_avg = get_buffer(state, "square_avg")
    if square_avg is not None and not in_storage(square_avg, p, precision):
        restore_(state, p, precision)
        _share(opt, state)
    for spec, needed in (("momentum_buffer", group["momentum"] != 0), ("grad_avg", group["centered"])):
        if needed and not has_buffer(state, spec):
            put_buffer(state, spec, new_buffer(p, precision, spec))
            _share(opt, state)
    return state


def _share(opt: RMSprop, state: dict[str, Any]) -> None:
    if opt._shared:
        for value in state.values():
            if isinstance(value, Tensor) and not value.is_shared():
                value.share_memory_()


def new_state(p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
    """Fresh state for ``p``: PyTorch's keys, the buffers the knobs use."""
    step_device = p.device if group["capturable"] else None
    state: dict[str, Any] = {"step": torch.zeros((), dtype=_get_scalar_dtype(), device=step_device)}
    precision = group["state_precision"]
    put_buffer(state, "square_avg", new_buffer(p, precision, "square_avg", group["initial_square_avg"]))
    if group["momentum"] != 0:
        put_buffer(state, "momentum_buffer", new_buffer(p, precision, "momentum_buffer"))
    if group["centered"]:
        put_buffer(state, "grad_avg", new_buffer(p, precision, "grad_avg"))
    return state
