"""Parameter groups by rule: weight decay off for biases and norms, learning-rate scales by layer.

:func:`param_groups` turns a model and a few rules into ordinary parameter-group dicts
(``"params"`` plus ``"weight_decay"``, and ``"lr"`` / ``"lr_scale"`` where asked for) that any
``torch.optim`` optimizer accepts, :class:`rmsprop.RMSprop` included. The rules are the ones
timm's ``param_groups_weight_decay`` and ``param_groups_layer_decay`` (after BEiT) apply;
``integration/test_groups_timm.py`` checks that both give the same groups on timm models.

Every rule is checked before anything is returned: a rule that selects nothing, a parameter
given two different scales, or a non-positive factor raises ``ValueError`` naming it.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["ONE_D", "param_groups"]

ONE_D = "1-D"
"""The ``no_weight_decay`` rule for every parameter with ``ndim <= 1`` (biases, norm scales and shifts)."""

Rule = str | type
LayerId = Callable[[str], int] | Mapping[str, int]


def param_groups(
    model: nn.Module,
    *,
    lr: float | None = None,
    weight_decay: float = 0.0,
    no_weight_decay: Rule | Iterable[Rule] = (ONE_D,),
    lr_scale: Mapping[str, float] | None = None,
    layer_decay: float | None = None,
    layer_id: LayerId | None = None,
    named: bool = False,
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into groups by rule.

    Each trainable parameter (``requires_grad=True``) lands in exactly one group; frozen ones
    are left out. A parameter's settings are its weight decay (``weight_decay``, or 0 where a
    ``no_weight_decay`` rule selects it) and its learning-rate scale (the product of its
    ``lr_scale`` factor and its layer's ``layer_decay`` factor). Parameters with equal
    settings share one group. Groups come in the order of their first parameter in
    ``model.named_parameters()``, and parameters within a group in that order too, so the
    same model gives the same groups every time.

    The learning-rate scale is written two ways. With ``lr=``, each group gets its absolute
    ``"lr"`` (``lr * scale``): torch's optimizers and LR schedulers know only ``"lr"``, and a
    scheduler that multiplies each group's initial ``lr`` (cosine, step, warm-up, ...) keeps
    the ratios. ``"lr_scale"`` stays beside it as a record. Without ``lr=``, groups carry
    ``"lr_scale"`` alone, as timm's functions return them: timm's schedulers multiply it in;
    a plain torch optimizer would ignore it (each group then takes the optimizer's ``lr``).

    Layers (for ``layer_decay``): with ``layer_id=None``, the model's top-level children
    that hold parameters, in registration order, are layers 0, 1, ...; parameters registered
    on the model itself join layer 0 (the stem: embeddings, class tokens). Otherwise
    ``layer_id`` maps a parameter name to its layer (a function or a dict holding every
    parameter name), e.g. timm's ``group_parameters(model, model.group_matcher(), reverse=True)``.
    The number of layers ``n`` counts frozen parameters' layers too, so freezing a layer
    does not shift the others' scales. Layer ``i`` gets ``layer_decay ** (n - 1 - i)``: the
    last layer (the head) trains at the full rate, each earlier layer at ``layer_decay``
    times the next one's.

    Args:
        model: the module whose ``named_parameters()`` are grouped. A parameter shared by
            several modules (tied weights) is one parameter, matched under any of its names.
        lr: the base learning rate; when given, every group holds ``"lr": lr * scale``
            (default: None, groups carry ``"lr_scale"`` only where a scale is asked for).
        weight_decay: the weight decay of every parameter no ``no_weight_decay`` rule
            selects (default: 0.0).
        no_weight_decay: the rules, one or several, for parameters that get weight decay 0:
            ``"1-D"`` (:data:`ONE_D`) for every parameter with ``ndim <= 1``; any other string
            is an ``fnmatch`` glob on parameter names (``"pos_embed"``, ``"*.bias"``,
            ``"blocks.*.norm?.*"``); an ``nn.Module`` subclass (``torch.nn.LayerNorm``) selects
            the parameters registered directly on modules of that type, subclasses included
            (default: ``("1-D",)``, timm's default; pass ``()`` to decay every parameter).
        lr_scale: ``{glob: factor}``: the parameters a glob matches get that factor; one
            parameter matched by several globs must get the same factor from each. It
            multiplies with the layer factor (default: None, factor 1).
        layer_decay: the layer-wise decay of the learning rate, as BEiT and timm apply it,
            e.g. 0.75 (default: None, every layer factor 1).
        layer_id: how to find a parameter's layer, see above (default: None, the top-level
            children).
        named: give ``"params"`` as ``(name, parameter)`` pairs, which torch's optimizers
            record as the group's ``"param_names"`` (default: False, parameters only).

    Returns:
        A list of dicts, each with ``"params"`` and ``"weight_decay"``, plus ``"lr"`` when
        ``lr`` is given and ``"lr_scale"`` when ``lr_scale`` or ``layer_decay`` is.

    Raises:
        ValueError: a glob or module type that selects no parameter (a frozen one counts:
            freezing is not a typo); a parameter that two ``lr_scale`` globs give different
            factors; a factor, ``layer_decay``, ``lr`` or ``weight_decay`` out of range; a layer
            id that is not a non-negative integer or a ``layer_id`` dict that lacks a name.
        TypeError: a ``no_weight_decay`` rule that is neither a string nor a module type, or an
            ``lr_scale`` key that is not a string.

    Example:
        >>> import torch, rmsprop
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
        >>> groups = rmsprop.param_groups(model, lr=1e-2, weight_decay=0.05, layer_decay=0.5)
        >>> tuple((len(g["params"]), g["weight_decay"], g["lr"]) for g in groups)
        ((1, 0.05, 0.0025), (1, 0.0, 0.0025), (2, 0.0, 0.005), (1, 0.05, 0.01), (1, 0.0, 0.01))
        >>> optimizer = rmsprop.RMSprop(groups, lr=1e-2)
    """
    rules = _as_rules(no_weight_decay)
    scales = dict(lr_scale or {})
    _check_number("weight_decay", weight_decay, positive=False)
    if lr is not None:
        _check_number("lr", lr, positive=False)
    if layer_decay is not None:
        _check_number("layer_decay", layer_decay, positive=True)
    for pattern, factor in scales.items():
        if not isinstance(pattern, str):
            raise TypeError(f"lr_scale's keys are parameter-name globs, not {pattern!r}")
        _check_number(f"lr_scale[{pattern!r}]", factor, positive=True)

    names = _names_by_parameter(model)
    owners = _owner_types(model)
    # Decide every parameter's settings first; nothing is returned unless all rules hold.
    used: set[Rule] = set()
    settings: list[tuple[str, nn.Parameter, float, float]] = []
    layers = _layers(model, names, layer_id) if layer_decay is not None else {}
    n_layers = max(layers.values(), default=0) + 1
    for param, aliases in names.items():
        no_decay = False
        for rule in rules:
            if _selects(rule, param, aliases, owners[param]):
                used.add(rule)
                no_decay = True
        factor = 1.0
        chosen: str | None = None
        for pattern, pattern_factor in scales.items():
            if any(fnmatch.fnmatchcase(name, pattern) for name in aliases):
                used.add(pattern)
                if chosen is not None and pattern_factor != factor:
                    raise ValueError(
                        f"parameter {aliases[0]!r} matches lr_scale patterns {chosen!r} ({factor}) and "
                        f"{pattern!r} ({pattern_factor}): give it one factor"
                    )
                chosen, factor = pattern, float(pattern_factor)
        if layer_decay is not None:
            factor *= float(layer_decay) ** (n_layers - 1 - layers[param])
        if param.requires_grad:
            settings.append((aliases[0], param, 0.0 if no_decay else float(weight_decay), factor))
    unused = [rule for rule in (*rules, *scales) if rule != ONE_D and rule not in used]
    if unused:
        what = ", ".join(rule.__name__ if isinstance(rule, type) else repr(rule) for rule in unused)
        raise ValueError(f"no parameter of the model matches {what}")

    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param, decay, factor in settings:
        group = groups.get((decay, factor))
        if group is None:
            group = groups[(decay, factor)] = {"params": [], "weight_decay": decay}
            if lr is not None:
                group["lr"] = lr * factor
            if lr_scale is not None or layer_decay is not None:
                group["lr_scale"] = factor
        group["params"].append((name, param) if named else param)
    return list(groups.values())


def _as_rules(no_weight_decay: Rule | Iterable[Rule]) -> list[Rule]:
    if isinstance(no_weight_decay, (str, type)):
        return [no_weight_decay]
    rules = list(no_weight_decay)
    for rule in rules:
        if not (isinstance(rule, str) or (isinstance(rule, type) and issubclass(rule, nn.Module))):
            raise TypeError(
                f"no_weight_decay takes parameter-name globs, '1-D' and nn.Module types, not {rule!r}"
            )
    return rules


def _check_number(what: str, value: float, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise ValueError(f"{what} must be a finite number {'> 0' if positive else '>= 0'}, not {value!r}")


def _names_by_parameter(model: nn.Module) -> dict[nn.Parameter, list[str]]:
    """Every parameter once, in ``named_parameters()`` order, with all its names (tied weights)."""
    names: dict[nn.Parameter, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(param, []).append(name)
    return names


def _owner_types(model: nn.Module) -> dict[nn.Parameter, list[type]]:
    owners: dict[nn.Parameter, list[type]] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(param, []).append(type(module))
    return owners


def _selects(rule: Rule, param: torch.Tensor, aliases: list[str], owners: list[type]) -> bool:
    if rule == ONE_D:
        return param.ndim <= 1
    if isinstance(rule, str):
        return any(fnmatch.fnmatchcase(name, rule) for name in aliases)
    return any(issubclass(owner, rule) for owner in owners)


def _layers(
    model: nn.Module, names: dict[nn.Parameter, list[str]], layer_id: LayerId | None
) -> dict[nn.Parameter, int]:
    if layer_id is None:
        children = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
        index = {name: i for i, name in enumerate(children)}
        return {param: index.get(aliases[0].split(".")[0], 0) for param, aliases in names.items()}
    layers = {}
    for param, aliases in names.items():
        name = aliases[0]
        if isinstance(layer_id, Mapping):
            if name not in layer_id:
                raise ValueError(f"layer_id has no layer for parameter {name!r}")
            layer = layer_id[name]
        else:
            layer = layer_id(name)
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise ValueError(f"layer_id gives parameter {name!r} the layer {layer!r}: not an integer >= 0")
        layers[param] = layer
    return layers
