"""timm: this optimizer in timm's optimizer registry.

timm builds optimizers by name (``timm.optim.create_optimizer_v2(model, opt=NAME)``,
``train.py --opt NAME``) from a registry of ``OptimInfo`` records. :func:`register`
adds :class:`rmsprop.RMSprop` under the names of :data:`NAMES`, each timm's own
name for the same update with an ``x`` appended, so switching is one letter
(``--opt rmsproptf`` → ``--opt rmsproptfx``). The names hold no ``_``: timm
splits a name on ``_`` to read a ``lookahead_`` prefix, so ``rmsprop_ours``
would be looked up as ``ours``; ``lookahead_rmsproptfx`` works as timm's other
``lookahead_`` names do.

timm itself is imported only inside :func:`register` (``pip install timm``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..optimizer import RMSprop

__all__ = ["NAMES", "register"]

#: Our registry name → (timm's name for the same update, the defaults timm's
#: registry passes). timm's own records give ``alpha=0.9`` to all three and
#: ``decoupled_decay=True`` to ``rmsproptfw``; ours carry the same values, plus
#: the preset that reproduces timm's class.
NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    "rmsproptfx": ("rmsproptf", {"preset": "timm", "alpha": 0.9}),
    "rmsproptfwx": ("rmsproptfw", {"preset": "timm", "alpha": 0.9, "decoupled_weight_decay": True}),
    "rmspropx": ("rmsprop", {"preset": "torch", "alpha": 0.9}),
}


def register(names: Iterable[str] | None = None, registry: Any = None) -> list[str]:
    """Register :class:`rmsprop.RMSprop` in timm's optimizer registry.

    Calling it again is harmless: a name already registered to this class is
    left as it is. After it, ``create_optimizer_v2(model, opt="rmsproptfx",
    lr=..., weight_decay=..., momentum=...)`` builds this optimizer with timm's
    parameter groups (no weight decay on biases and norm weights) and the
    hyperparameters timm gives its own ``rmsproptf``: ``alpha=0.9``, and
    ``momentum=0.9`` unless ``momentum=`` says otherwise.

    Args:
        names: which of :data:`NAMES` to register (default: all of them).
        registry: the ``timm.optim.OptimizerRegistry`` to add to (default:
            timm's ``default_registry``, the one ``create_optimizer_v2`` and
            ``train.py`` read).

    Returns:
        The names registered, in order.

    Raises:
        ImportError: timm is not installed.
        ValueError: a name that is not in :data:`NAMES`, or one that timm's
            registry already holds for another optimizer.

    Example:
        >>> import timm.optim  # doctest: +SKIP
        >>> from rmsprop.integrations.timm import register  # doctest: +SKIP
        >>> register()  # doctest: +SKIP
        ['rmsproptfx', 'rmsproptfwx', 'rmspropx']
    """
    try:
        from timm.optim import _optim_factory  # type: ignore[import-not-found]
        from timm.optim._optim_factory import OptimInfo  # type: ignore[import-not-found]
    except ImportError as err:
        raise ImportError("rmsprop.integrations.timm needs timm: pip install timm") from err
    chosen = list(NAMES) if names is None else [str(n).lower() for n in names]
    unknown = [n for n in chosen if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown name(s) {unknown}; rmsprop registers {sorted(NAMES)}")
    registry = _optim_factory.default_registry if registry is None else registry
    held = set(registry.list_optimizers())
    todo = []
    for name in chosen:  # decide for every name before registering any
        if name in held:
            opt_class = registry.get_optimizer_info(name).opt_class
            if opt_class is not RMSprop:
                raise ValueError(f"timm's registry already holds {name!r} for {opt_class!r}")
        else:
            todo.append(name)
    for name in todo:
        theirs, defaults = NAMES[name]
        registry.register(
            OptimInfo(
                name=name,
                opt_class=RMSprop,
                description=f"rmsprop.RMSprop with timm's {theirs!r} semantics and defaults",
                has_momentum=True,
                defaults=dict(defaults),
            )
        )
    return chosen
