"""The one table of param-group settings: every key a group holds, once.

Each :class:`Setting` row says what a group key is (its role), where its
default comes from (a value, or the preset) and how a value is checked.
Everything else reads this table: the constructor's defaults, what a group
unpickled from an older layout reads as (:func:`saved_defaults`),
validation (:func:`check_group`, run when a group is built, when a state
dict loads, and at every step for a group whose values changed), the
engine's hyperparameters (:func:`hyper_from`), the fused path's compile
key, the presets' fields, ``translate``'s accepted names and
``knobs="strict"``. Adding a knob is one row here and its maths in
:mod:`rmsprop.engine`; ``tests/test_settings.py`` checks that every consumer
reads the table.

Roles:

- ``runtime``: a number the update reads, passed to a compiled step as a
  tensor (a change never recompiles);
- ``structure``: a switch that selects formula lines (compiled in);
- ``initial``: what a new buffer starts from;
- ``storage``: how the state and the parameters are written;
- ``path``: which code path runs the update, and how;
- ``label`` and ``bookkeeping``: records of the group, not inputs to the update.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .engine import OP_ORDERS, Hyper

__all__ = [
    "Setting", "SETTINGS", "FROM_PRESET", "by_role", "check_group", "saved_defaults", "hyper_from",
    "fingerprint", "STRICT", "PRECISIONS", "check_precision", "names",
]


class _FromPreset:
    def __repr__(self) -> str:
        return "FROM_PRESET"


#: The default of a row whose value the group's preset supplies.
FROM_PRESET: Any = _FromPreset()

#: How a group's state may be stored (rmsprop.precision reads this).
PRECISIONS = ("param", "fp32", "bf16", "int8")

Check = Callable[[str, Any], str | None]  # (name, value) -> why it is invalid, or None


def _number(lo: float, hi: float = math.inf, *, hi_open: bool = True) -> Check:
    """A real number in [lo, hi) (or [lo, hi]), finite; PyTorch's wording for its own knobs."""

    def check(name: str, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"TypeError:{name} must be a real number, not {type(value).__name__} {value!r}"
        if not (lo <= value and (value < hi if hi_open else value <= hi)) or math.isnan(value):
            bounds = (f"must lie in [{lo:g}, {hi:g}]" if not hi_open else f"must be ≥ {lo:g} and finite"
                      if hi == math.inf else f"must lie in [{lo:g}, {hi:g})")
            return f"Invalid {_WORDS.get(name, name + ' value')}: {value} ({bounds})"
        return None

    return check


def _lr(name: str, value: Any) -> str | None:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            return "Tensor lr must be 1-element"
        if value.is_complex() or not value.is_floating_point():
            return f"TypeError:Tensor lr must be floating point, not {value.dtype}"
        return None  # its value is never read back at a step (capturable: no host sync)
    return _number(0.0)(name, value)


def _flag(name: str, value: Any) -> str | None:
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        return f"Invalid {name} value: {value!r} (must be True or False)"
    return None


def _maybe_flag(name: str, value: Any) -> str | None:
    return None if value is None else _flag(name, value)


def _one_of(*choices: Any) -> Check:
    def check(name: str, value: Any) -> str | None:
        if not isinstance(value, str) or value not in choices:
            return f"Invalid {name} value: {value!r} (one of {', '.join(map(repr, choices))})"
        return None

    return check


def _preset_name(name: str, value: Any) -> str | None:
    from .presets import PRESETS

    return _one_of(*PRESETS)(name, value)


def _whole(lo: int) -> Check:
    def check(name: str, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            return f"Invalid {name} value: {value!r} (an int ≥ {lo})"
        return None

    return check


_WORDS = {"lr": "learning rate", "eps": "epsilon value"}  # PyTorch's wording


@dataclass(frozen=True)
class Setting:
    """One key of a param group.

    Attributes:
        name: the group key (and the constructor argument).
        role: see the module docstring.
        default: the value a group gets when nothing sets it, or
            :data:`FROM_PRESET`. A loaded group lacking the key keeps the
            loading optimizer's value (a record: :func:`saved_defaults`);
            an unpickled one reads as :func:`saved_defaults`.
        check: returns why a value is invalid (a leading ``"TypeError:"``
            marks a wrong type), or None.
        strict: compared by ``load_state_dict(knobs="strict")``: a
            difference changes the numbers a step produces.
        doc: one line for a reader.
    """

    name: str
    role: str
    default: Any
    check: Check
    strict: bool
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting("lr", "runtime", FROM_PRESET, _lr, False, "learning rate η, a float or a 1-element tensor"),
    Setting("alpha", "runtime", FROM_PRESET, _number(0.0, 1.0, hi_open=False), True, "smoothing constant α"),
    Setting("eps", "runtime", FROM_PRESET, _number(0.0), True, "ε of the denominator"),
    Setting("weight_decay", "runtime", FROM_PRESET, _number(0.0), True, "λ (its zero is structure)"),
    Setting("momentum", "runtime", FROM_PRESET, _number(0.0), True, "μ (its zero is structure)"),
    Setting("centered", "structure", FROM_PRESET, _flag, True, "(5), (7): divide by the variance"),
    Setting("eps_in_sqrt", "structure", FROM_PRESET, _flag, True, "(8): ε inside the root"),
    Setting("initial_square_avg", "initial", FROM_PRESET, _number(0.0), True, "v₀"),
    Setting("lr_in_momentum", "structure", FROM_PRESET, _flag, True, "(13)-(14): η inside the buffer"),
    Setting("nesterov", "structure", FROM_PRESET, _flag, True, "(12') / (14')"),
    Setting("decoupled_weight_decay", "structure", FROM_PRESET, _flag, True, "(2) instead of (3)"),
    Setting("bias_correction", "structure", FROM_PRESET, _flag, True, "(6)"),
    Setting("op_order", "structure", FROM_PRESET, _one_of(*OP_ORDERS), True,
            "(4)-(5): whose rounding, engine.OP_ORDERS"),
    Setting("maximize", "structure", False, _flag, True, "(1)"),
    Setting("caution", "structure", False, _flag, True, "(15): cautious momentum step"),
    Setting("agc_clip", "runtime", 0.0, _number(0.0), True,
            "(0'): adaptive clipping κ (its zero, off, is structure)"),
    Setting("ema_decay", "runtime", 0.0, _number(0.0, 1.0), True,
            "(16): δ of the weights' average (its zero, off, is structure)"),
    Setting("ema_every", "structure", 1, _whole(1), True, "(16): average every this many steps"),
    Setting("ema_warmup", "structure", False, _flag, True, "(16): δ warms up as 1 − n^(−2/3)"),
    Setting("capturable", "path", False, _flag, True, "step count on the device, tensor lr never read"),
    Setting("foreach", "path", None, _maybe_flag, False, "True: foreach path; False: reference; None: auto"),
    Setting("fused", "path", None, _maybe_flag, False, "True: one compiled pass; None: auto"),
    Setting("differentiable", "path", False, _flag, True, "autograd through the step (reference path)"),
    Setting("state_precision", "storage", "param", _one_of(*PRECISIONS), False,
            "how buffers are stored (the loading optimizer's choice)"),
    Setting("stochastic_rounding", "storage", False, _flag, True, "bf16 parameters written unbiased"),
    Setting("rounding_seed", "storage", 0, _whole(0), True, "seed of that rounding's bits"),
    Setting("kahan_summation", "storage", False, _flag, True,
            "bf16 parameters keep a bf16 compensation buffer (Kahan)"),
    Setting("preset", "label", "torch", _preset_name, False, "the preset that filled the knobs"),
    Setting("layout_version", "bookkeeping", 1, _whole(0), False, "state-dict layout"),
    Setting("skipped_steps", "bookkeeping", 0, _whole(0), False, "steps nonfinite='skip' skipped"),
)

_BY_NAME = {s.name: s for s in SETTINGS}
_NAMES = tuple(_BY_NAME)
_GET_ALL = operator.itemgetter(*_NAMES)
assert _NAMES[0] == "lr"  # fingerprint() relies on it

#: Names compared by ``load_state_dict(knobs="strict")``.
STRICT = tuple(s.name for s in SETTINGS if s.strict)


def by_role(*roles: str) -> tuple[str, ...]:
    """The names of the settings with one of ``roles``, in table order."""
    return tuple(s.name for s in SETTINGS if s.role in roles)


def check_precision(precision: object) -> None:
    reason = _one_of(*PRECISIONS)("state_precision", precision)
    if reason:
        raise ValueError(reason)


def saved_defaults() -> dict[str, Any]:
    """What a group without a key means where no optimizer's own value can
    stand in (an unpickled optimizer; a loaded file's records): PyTorch's
    semantics, a foreign layout (version 0), no skipped steps. ``lr`` has no
    default: a group without one is refused."""
    from .presets import PRESETS

    torch_preset = PRESETS["torch"].knobs()
    return {s.name: torch_preset[s.name] if s.default is FROM_PRESET else s.default
            for s in SETTINGS if s.name != "lr"} | {"layout_version": 0}


# Rules between settings: (names read, predicate that is True when invalid, message).
_RULES: tuple[tuple[Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], str]], ...] = (
    (lambda g: g["stochastic_rounding"] and g["state_precision"] == "param",
     lambda g: "stochastic_rounding=True needs state_precision='fp32', 'bf16' or 'int8': under 'param' the "
               "update runs in the parameter's own dtype, so there is nothing wider to round"),
    (lambda g: g["kahan_summation"] and g["stochastic_rounding"],
     lambda g: "kahan_summation=True cannot run with stochastic_rounding=True: each is a way to write "
               "bfloat16 parameters back from a wider update; pick one"),
    (lambda g: g["kahan_summation"] and g["state_precision"] == "param",
     lambda g: "kahan_summation=True needs state_precision='fp32', 'bf16' or 'int8': under 'param' the "
               "update runs in the parameter's own dtype, so there is nothing wider to compensate"),
    (lambda g: g["differentiable"] and g["state_precision"] == "int8",
     lambda g: "differentiable=True cannot run with state_precision='int8': 8-bit codes are rounded "
               "integers, which carry no autograd history"),
    (lambda g: g["nesterov"] and g["momentum"] == 0,
     lambda g: "Invalid nesterov value: True requires momentum > 0"),
    (lambda g: g["bias_correction"] and g["alpha"] == 1,
     lambda g: "Invalid alpha value: 1.0 with bias_correction=True (1 − αᵗ is 0)"),
    (lambda g: g["foreach"] and g["fused"],
     lambda g: "`foreach` and `fused` should not both be True."),
)


def check_group(group: dict[str, Any], where: str = "", *, lr_required: bool = True) -> None:
    """Raise ValueError (TypeError for a wrong type) naming the first invalid
    setting of a resolved group; ``where`` (e.g. "param group 1") is appended.

    PyTorch's wording where PyTorch has one ("Invalid momentum value: -1.0").
    """
    suffix = f" in {where}" if where else ""
    for s in SETTINGS:
        if s.name not in group:
            raise ValueError(f"{where or 'the group'} lacks the setting {s.name!r}")
        value = group[s.name]
        if s.name == "lr" and value is None:
            if lr_required:
                raise ValueError(f"preset '{group['preset']}' has no default lr; pass lr={suffix}")
            continue
        reason = s.check(s.name, value)
        if reason is not None:
            if reason.startswith("TypeError:"):
                raise TypeError(reason.removeprefix("TypeError:") + suffix)
            raise ValueError(reason + suffix)
    for broken, message in _RULES:
        if broken(group):
            raise ValueError(message(group) + suffix)


def fingerprint(group: dict[str, Any]) -> tuple[tuple, tuple]:
    """The group's settings as (values, their types): two fingerprints equal
    only when nothing validation reads has changed. A tensor lr enters by its
    identity, shape and dtype (its value is never read at a step), so
    comparing two fingerprints of validated groups never compares tensors."""
    try:
        values = list(_GET_ALL(group))
    except KeyError:  # a row deleted by hand: validation names it
        values = [group.get(name, _MISSING) for name in _NAMES]
    lr = values[0]
    if isinstance(lr, Tensor):
        values[0] = (id(lr), lr.shape, lr.dtype, lr.device)
    return tuple(values), tuple(map(type, values))


_MISSING = object()


def hyper_from(group: dict[str, Any]) -> Hyper:
    """The engine's hyperparameters of a validated group: the runtime and
    structure rows, as the engine names them. A tensor ``lr`` is read as a
    number unless the group is capturable, as PyTorch does."""
    values = {name: group[name] for name in Hyper._fields}
    lr = values["lr"]
    if isinstance(lr, Tensor):
        values["lr"] = lr.reshape(()) if group["capturable"] else lr.item()
    return Hyper(**values)


def names(roles: Iterable[str] | None = None) -> tuple[str, ...]:
    """Every setting's name (or those of ``roles``), in table order."""
    return tuple(s.name for s in SETTINGS) if roles is None else by_role(*roles)
