"""Checks that turn bad input into a clear error before anything changes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import quant
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
        raise ValueError("stochastic_rounding=True needs state_precision='fp32', 'bf16' or 'int8': under "
                         "'param' the update runs in the parameter's own dtype, so there is nothing wider "
                         "to round")
    if group["differentiable"] and group["state_precision"] == "int8":
        raise ValueError("differentiable=True cannot run with state_precision='int8': 8-bit codes are "
                         "rounded integers, which carry no autograd history")
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


_STATE_KEYS = frozenset(
    ("step", *_STATE_BUFFERS, *(k + s for k in _STATE_BUFFERS for s in (quant.CODES, quant.ABSMAX)))
)


def _check_param_state(p_state: dict[str, Any], p: Tensor, who: str) -> None:
    where = f"loaded state dict's state for {who}"
    alien = sorted(map(str, p_state.keys() - _STATE_KEYS))
    if alien:
        raise ValueError(f"{where} has unknown keys {alien} (RMSprop keeps {sorted(_STATE_KEYS)})")
    missing = [k for k in ("step", "square_avg") if k not in p_state and k + quant.CODES not in p_state]
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
        if key + quant.CODES in p_state or key + quant.ABSMAX in p_state:
            _check_codes(p_state, key, p, where)
            continue
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


def _check_codes(p_state: dict[str, Any], key: str, p: Tensor, where: str) -> None:
    """An 8-bit buffer (rmsprop.quant): both parts, of the right dtypes and sizes, and no plain copy."""
    codes, absmax = p_state.get(key + quant.CODES), p_state.get(key + quant.ABSMAX)
    if key in p_state:
        raise ValueError(f"{where} holds {key} both as a tensor and as 8-bit codes")
    if not isinstance(codes, Tensor) or not isinstance(absmax, Tensor):
        raise ValueError(f"{where} needs both {key}{quant.CODES} and {key}{quant.ABSMAX} as tensors")
    want = torch.uint8 if key == "square_avg" else torch.int8
    if codes.dtype != want or codes.shape != p.shape:
        raise ValueError(f"{where} has {key}{quant.CODES} of dtype {codes.dtype} and shape "
                         f"{tuple(codes.shape)}; expected {want} of the parameter's shape {tuple(p.shape)}")
    blocks = quant.num_blocks(p.numel())
    if absmax.dtype != torch.float32 or absmax.shape != (blocks,):
        raise ValueError(f"{where} has {key}{quant.ABSMAX} of dtype {absmax.dtype} and shape "
                         f"{tuple(absmax.shape)}; expected float32 of shape ({blocks},)")
    if not bool(torch.isfinite(absmax).all() and (absmax >= 0).all()):
        raise ValueError(f"{where} has {key}{quant.ABSMAX} with negative or non-finite scales")
