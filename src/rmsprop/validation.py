"""Checks that turn bad input into a clear error before anything changes."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .precision import check_precision

__all__ = ["check_group", "check_loaded"]

_BOOL_KNOBS = (
    "centered",
    "eps_in_sqrt",
    "lr_in_momentum",
    "nesterov",
    "decoupled_weight_decay",
    "bias_correction",
    "maximize",
    "capturable",
    "differentiable",
    "stochastic_rounding",
)
_STATE_BUFFERS = ("square_avg", "grad_avg", "momentum_buffer")


def check_group(group: dict[str, Any], *, lr_required: bool) -> None:
    """Raise ValueError naming the first invalid knob of a resolved group.

    PyTorch's wording where PyTorch has one ("Invalid momentum value: -1.0").
    """
    lr = group["lr"]
    if lr is None:
        if lr_required:
            raise ValueError(f"preset '{group['preset']}' has no default lr; pass lr=")
    else:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= group["eps"]:
        raise ValueError(f"Invalid epsilon value: {group['eps']}")
    if not 0.0 <= group["momentum"]:
        raise ValueError(f"Invalid momentum value: {group['momentum']}")
    if not 0.0 <= group["weight_decay"]:
        raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
    # Tighter than PyTorch (which takes any alpha >= 0): α > 1 makes v grow
    # without bound and (1 − α)·g² negative, which is never what anyone means.
    if not 0.0 <= group["alpha"] <= 1.0:
        raise ValueError(f"Invalid alpha value: {group['alpha']} (must lie in [0, 1])")
    if not 0.0 <= group["initial_square_avg"]:
        raise ValueError(f"Invalid initial_square_avg value: {group['initial_square_avg']}")
    for name in _BOOL_KNOBS:
        value = group[name]
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise ValueError(f"Invalid {name} value: {value!r} (must be True or False)")
    check_precision(group["state_precision"])
    if group["stochastic_rounding"] and group["state_precision"] == "param":
        raise ValueError("stochastic_rounding=True needs state_precision='fp32' or 'bf16': under 'param' "
                         "the update runs in the parameter's own dtype, so there is nothing wider to round")
    if not isinstance(group["rounding_seed"], int) or isinstance(group["rounding_seed"], bool):
        raise ValueError(f"Invalid rounding_seed value: {group['rounding_seed']!r} (an int)")
    if group["nesterov"] and group["momentum"] == 0:
        raise ValueError("Invalid nesterov value: True requires momentum > 0")
    if group["bias_correction"] and group["alpha"] == 1:
        raise ValueError("Invalid alpha value: 1.0 with bias_correction=True (1 − αᵗ is 0)")


def check_loaded(
    param_groups: list[dict[str, Any]], state: dict[Tensor, dict[str, Any]], layout: int
) -> None:
    """Raise ValueError if loaded groups and state do not fit their parameters.

    Runs on what ``Optimizer.load_state_dict`` hands to ``__setstate__``: the
    load pre-hooks have run, saved ids are mapped to parameters, and nothing in
    the optimizer has changed yet. (PyTorch itself checks group and parameter
    counts before that point, and accepts a buffer of the wrong shape.)
    """
    for g, group in enumerate(param_groups):
        version = group.get("layout_version", 0)
        if not isinstance(version, int) or not 0 <= version <= layout:
            raise ValueError(
                f"loaded state dict's parameter group {g} has layout_version {version!r}; "
                f"this version of rmsprop reads layouts 0 to {layout}"
            )
        for j, p in enumerate(group["params"]):
            p_state = state.get(p)
            if p_state:
                _check_param_state(p_state, p, f"parameter {j} of group {g}")


_STATE_KEYS = frozenset(("step", *_STATE_BUFFERS))


def _check_param_state(p_state: dict[str, Any], p: Tensor, who: str) -> None:
    where = f"loaded state dict's state for {who}"
    alien = sorted(map(str, p_state.keys() - _STATE_KEYS))
    if alien:
        raise ValueError(f"{where} has unknown keys {alien} (RMSprop keeps {sorted(_STATE_KEYS)})")
    missing = [key for key in ("step", "square_avg") if key not in p_state]
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    step = p_state["step"]
    if isinstance(step, Tensor):
        if step.numel() != 1 or step.is_complex():
            raise ValueError(f"{where} has a step of shape {tuple(step.shape)} and dtype {step.dtype}")
        step = step.item()
    if not isinstance(step, (int, float)) or not 0 <= step < float("inf") or step != int(step):
        raise ValueError(f"{where} has step {step!r}; a step count is a whole number ≥ 0")
    for key in _STATE_BUFFERS:
        value = p_state.get(key)
        if value is None:
            continue  # created when the knobs first need it
        if not isinstance(value, Tensor):
            raise ValueError(f"{where} has a {type(value).__name__} as {key}, not a tensor")
        if value.shape != p.shape:
            raise ValueError(
                f"loaded state dict's {key} for {who} has shape "
                f"{tuple(value.shape)}, the parameter has shape {tuple(p.shape)}"
            )
        if value.is_complex() != p.is_complex() or not (value.is_floating_point() or value.is_complex()):
            raise ValueError(f"{where} has {key} of dtype {value.dtype}, the parameter is {p.dtype}")
