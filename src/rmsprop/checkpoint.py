"""Loading a state dict: translate, check everything, then apply.

``RMSprop.load_state_dict`` registers :func:`check_layout` as its last load
pre-hook (it sees what the user's hooks return, before PyTorch's loader
indexes into the dict or casts a tensor), and PyTorch's loader then hands the
mapped groups and state to ``RMSprop.__setstate__``, which calls
:func:`settle` before it sets anything. Every check runs before anything in
the optimizer changes; a mismatch is a ValueError saying what differs.

What is checked is what a step relies on: whatever ``load_state_dict``
accepts, ``step`` runs, and whatever ``state_dict`` writes loads back.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from . import quant
from .precision import BUFFERS, KAHAN_COMP, SPEC, STATE_KEYS, restore_, storage_refusal
from .presets import PRESETS
from .settings import STRICT, by_role, check_group, saved_defaults

__all__ = ["LAYOUT_VERSION", "KNOB_MODES", "check_layout", "settle", "translate_foreign_group"]

#: Version of the state-dict layout, stored in every param group. 1: PyTorch's
#: state keys plus this library's settings as plain scalars in each group.
LAYOUT_VERSION = 1

KNOB_MODES = ("saved", "current", "strict")

_WIDE = frozenset(spec.key for spec in BUFFERS if spec.wide)

# Param groups written by timm's RMSpropTF, recognised by its own key
# `decoupled_decay`: they read as the "timm" preset, with timm's names mapped
# onto ours. Options of timm's that have no equivalent here are refused.
_TIMM_RENAMES = {"decoupled_decay": "decoupled_weight_decay"}
_TIMM_UNSUPPORTED = ("corrected_weight_decay",)
_TIMM_INTERNAL = ("max_lr_snapshot",)  # bookkeeping for corrected_weight_decay


def translate_foreign_group(group: dict[str, Any]) -> None:
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


def check_layout(opt: Optimizer, state_dict: Any) -> None:
    """A state dict's outer layout, counts and per-parameter state, with
    messages that say what differs (a load pre-hook: nothing has changed yet)."""
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
        raise ValueError("loaded state dict must be a dict with 'state' and 'param_groups' keys")
    saved, state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved, list) or not all(isinstance(g, dict) and "params" in g for g in saved):
        raise ValueError("loaded state dict's param_groups must be a list of dicts with 'params'")
    if not isinstance(state, dict):
        raise ValueError(f"loaded state dict's state must be a dict, not {type(state).__name__}")
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
    # The per-parameter checks, here: PyTorch's loader casts every buffer to
    # its parameter's dtype next, which would hide a complex or integer one.
    raw = {}
    for g, (ours, theirs) in enumerate(zip(opt.param_groups, saved)):
        for j, (i, p) in enumerate(zip(theirs["params"], ours["params"])):
            if i in state:
                _check_param_state(state[i], p, f"parameter {j} of group {g}")
                raw[p] = state[i]
    opt._loading_raw = raw  # type: ignore[attr-defined]  # the buffers before PyTorch casts them


def settle(groups: list[dict[str, Any]], state: dict[Tensor, dict[str, Any]],
           current: list[dict[str, Any]], knobs: str | None, raw: dict[Tensor, dict[str, Any]]) -> None:
    """Translate, check and complete loaded ``groups`` and ``state`` in place,
    raising before anything of the optimizer's changes.

    ``knobs`` is None when an optimizer is unpickled (its groups are its own),
    else load_state_dict's mode; ``raw`` maps parameters to their state as
    the file had it."""
    defaults = saved_defaults()
    for g, group in enumerate(groups):
        translate_foreign_group(group)
        for key, value in _unstated(defaults, current[g] if knobs is not None else None).items():
            group.setdefault(key, value)
    # PyTorch's loader casts every state tensor to its parameter's dtype, 8-bit
    # codes included: the codes and scales come from the file again.
    for p, saved in raw.items():
        for key, value in saved.items():
            if key.endswith((quant.CODES, quant.ABSMAX)) and p in state:
                state[p][key] = value
    if knobs is not None:
        # How the state is stored is this optimizer's choice, as its
        # parameters' dtype and device are in PyTorch's loader: the file's
        # buffers are converted to it (rmsprop.precision), whatever knobs says.
        for loaded, ours in zip(groups, current):
            loaded["state_precision"] = ours["state_precision"]
    for g, group in enumerate(groups):
        version = group["layout_version"]
        if isinstance(version, int) and not isinstance(version, bool) and version > LAYOUT_VERSION:
            raise ValueError(
                f"loaded state dict's parameter group {g} has layout_version {version!r}; "
                f"this version of rmsprop reads layouts 0 to {LAYOUT_VERSION}"
            )
        check_group(group, f"loaded state dict's param group {g}")
        for j, p in enumerate(group["params"]):
            reason = storage_refusal(p, group["state_precision"], group["stochastic_rounding"],
                                     group["kahan_summation"])
            if reason is not None:
                raise ValueError(f"loaded state dict's param group {g}, parameter {j}: {reason}")
    if knobs == "strict":
        differences = [
            f"group {g} {key}: saved {theirs[key]!r}, current {ours[key]!r}"
            for g, (theirs, ours) in enumerate(zip(groups, current))
            for key in STRICT
            if theirs[key] != ours[key]
        ]
        if differences:
            raise ValueError("loaded state dict's knobs differ (knobs='strict'): " + "; ".join(differences))
    # Nothing can fail from here on.
    for group in groups:
        group["layout_version"] = LAYOUT_VERSION
    if knobs == "current":
        for loaded, ours in zip(groups, current):
            loaded.update({k: v for k, v in ours.items() if k not in ("params", "skipped_steps")})
    for group in groups:
        for p in group["params"]:
            saved = raw.get(p, {})
            # (PyTorch's loader cast every buffer to the parameter's dtype: a
            # wide one, or 8-bit codes, come from the file again.)
            if p in state and (group["state_precision"] != "param"
                               or any(k.endswith(quant.CODES) or k in _WIDE for k in saved)):
                restore_(state[p], p, group["state_precision"], saved)


def _unstated(defaults: dict[str, Any], ours: dict[str, Any] | None) -> dict[str, Any]:
    """What a loaded group that does not state a setting reads as.

    A file says nothing about a setting it lacks, so the loading optimizer's
    own value stands: a group saved by PyTorch's class, or by SB3's
    ``RMSpropTFLike`` (whose groups look like PyTorch's), loaded into
    ``RMSprop(preset="sb3")`` keeps ε inside the root. The records (the
    layout version, the skipped-step count) are the file's: absent, they read
    as a foreign layout and zero skips. An unpickled optimizer has no other
    values than its own: there, PyTorch's semantics (:func:`saved_defaults`).
    """
    if ours is None:
        return defaults
    records = set(by_role("bookkeeping"))
    return {key: defaults[key] if key in records else ours[key] for key in defaults}


def _check_param_state(p_state: Any, p: Tensor, who: str) -> None:
    where = f"loaded state dict's state for {who}"
    if not isinstance(p_state, dict):
        raise ValueError(f"{where} is a {type(p_state).__name__}, not a dict")
    alien = sorted(map(str, p_state.keys() - STATE_KEYS))
    if alien:
        raise ValueError(f"{where} has unknown keys {alien} (RMSprop keeps {sorted(STATE_KEYS)})")
    missing = [k for k in ("step", "square_avg") if p_state.get(k) is None and k + quant.CODES not in p_state]
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    _check_step(p_state["step"], where)
    if KAHAN_COMP in p_state:
        _check_comp(p_state[KAHAN_COMP], p, where)
    for spec in BUFFERS:
        key = spec.key
        if key + quant.CODES in p_state or key + quant.ABSMAX in p_state:
            _check_codes(p_state, key, p, where)
            continue
        if key not in p_state:
            continue  # created when the knobs first need it
        value = p_state[key]
        if not isinstance(value, Tensor):
            raise ValueError(f"{where} has a {type(value).__name__} as {key}, not a tensor")
        if value.layout != torch.strided or value.is_meta:
            raise ValueError(f"{where} has {key} with layout {value.layout} on device {value.device}; "
                             "a buffer is a dense tensor holding data")
        if value.shape != p.shape:
            raise ValueError(
                f"loaded state dict's {key} for {who} has shape "
                f"{tuple(value.shape)}, the parameter has shape {tuple(p.shape)}"
            )
        if value.is_complex() != p.is_complex() or not (value.is_floating_point() or value.is_complex()):
            raise ValueError(f"{where} has {key} of dtype {value.dtype}, the parameter is {p.dtype}")
        if value.numel() > 1 and torch._debug_has_internal_overlap(value) == 1:
            raise ValueError(f"{where} has {key} with overlapping memory (stride {tuple(value.stride())}): "
                             "an in-place update would write one element through several indices")
        real = torch.view_as_real(value) if value.is_complex() else value
        if bool(real.isnan().any()):
            raise ValueError(f"{where} has NaN in {key} (a NaN gradient under nonfinite='propagate' "
                             "leaves such state; its parameters are NaN too)")
        if not spec.signed and bool((real < 0).any()):
            raise ValueError(f"{where} has negative values in {key}, an average of squares")


def _check_comp(comp: Any, p: Tensor, where: str) -> None:
    """A Kahan compensation (kahan_summation): dense, bfloat16, the parameter's shape, finite."""
    if not isinstance(comp, Tensor) or comp.layout != torch.strided or comp.is_meta:
        kind = f"{comp.layout} tensor on {comp.device}" if isinstance(comp, Tensor) else type(comp).__name__
        raise ValueError(f"{where} has {KAHAN_COMP} as a {kind}; it is a dense bfloat16 tensor")
    if comp.dtype != torch.bfloat16 or comp.shape != p.shape:
        raise ValueError(f"{where} has {KAHAN_COMP} of dtype {comp.dtype} and shape {tuple(comp.shape)}; "
                         f"expected torch.bfloat16 and the parameter's shape {tuple(p.shape)}")
    if comp.numel() > 1 and torch._debug_has_internal_overlap(comp) == 1:
        raise ValueError(f"{where} has {KAHAN_COMP} with overlapping memory (stride {tuple(comp.stride())})")
    if not bool(comp.isfinite().all()):
        raise ValueError(f"{where} has NaN or infinite values in {KAHAN_COMP} (a compensation is finite)")


def _check_step(step: Any, where: str) -> None:
    if isinstance(step, Tensor):
        if step.numel() != 1 or step.is_complex() or step.dtype == torch.bool or step.is_meta:
            raise ValueError(f"{where} has a step of shape {tuple(step.shape)} and dtype {step.dtype} "
                             f"on {step.device}; a step count is one real number")
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 <= step < math.inf \
            or step != int(step):
        raise ValueError(f"{where} has step {step!r}; a step count is a whole number ≥ 0")


def _check_codes(p_state: dict[str, Any], key: str, p: Tensor, where: str) -> None:
    """An 8-bit buffer (rmsprop.quant): both parts, valid, and no plain copy beside them."""
    codes, absmax = p_state.get(key + quant.CODES), p_state.get(key + quant.ABSMAX)
    if key in p_state:
        raise ValueError(f"{where} holds {key} both as a tensor and as 8-bit codes")
    if not isinstance(codes, Tensor) or not isinstance(absmax, Tensor):
        raise ValueError(f"{where} needs both {key}{quant.CODES} and {key}{quant.ABSMAX} as tensors")
    if codes.layout != torch.strided or absmax.layout != torch.strided or codes.is_meta or absmax.is_meta:
        raise ValueError(f"{where} has {key}'s 8-bit parts as sparse or meta tensors")
    if codes.shape != p.shape:
        raise ValueError(f"{where} has {key}{quant.CODES} of shape {tuple(codes.shape)}; "
                         f"expected the parameter's shape {tuple(p.shape)}")
    reason = quant.check_stored(codes, absmax, signed=SPEC[key].signed)
    if reason is not None:
        raise ValueError(f"{where}: {key} {reason}")
