"""Recipes and helpers for the training frameworks where users meet an optimizer.

Each submodule serves one framework and imports it only inside the function
that needs it, so ``import rmsprop.integrations`` (and each submodule) works
with torch alone:

- :mod:`rmsprop.integrations.sb3`: ``policy_kwargs`` for Stable-Baselines3's
  A2C, PPO and the other on-policy algorithms (needs nothing from SB3 itself),
  and ``SkippedSteps``, a callback that records the steps ``nonfinite="skip"``
  skipped in SB3's logger.
- :mod:`rmsprop.integrations.timm`: ``register`` puts this optimizer in timm's
  registry, so ``timm.optim.create_optimizer_v2(model, opt="rmsproptfx")`` and
  ``train.py --opt rmsproptfx`` build it.
- :mod:`rmsprop.integrations.lightning`: ``SkippedSteps``, a Lightning callback
  that logs the steps ``nonfinite="skip"`` skipped.

Each framework's page in the documentation (docs/integrations/) has the
recipe and says which test proves what. :func:`skipped_steps`, which both
callbacks log, is here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..optimizer import RMSprop

__all__ = ["lightning", "sb3", "skipped_steps", "timm"]


def skipped_steps(optimizers: Any) -> dict[str, int]:
    """The skipped-step count of each :class:`rmsprop.RMSprop` among ``optimizers``.

    Args:
        optimizers: an optimizer or a list of them (Lightning's
            ``trainer.optimizers``); wrappers with an ``optimizer`` attribute
            (Lightning's ``LightningOptimizer``) are unwrapped, and optimizers of
            other classes are left out.

    Returns:
        ``{"skipped_steps": n}`` for one of ours; for several,
        ``{"skipped_steps/0": n0, "skipped_steps/1": n1, ..., "skipped_steps": n0 + n1 + ...}``
        keyed by position in ``optimizers``.
    """
    items = optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]
    counts = {}
    for i, opt in enumerate(items):
        opt = getattr(opt, "optimizer", opt)
        if isinstance(opt, RMSprop):
            counts[i] = opt.skipped_steps  # one host read on an accelerator
    if len(counts) == 1:
        return {"skipped_steps": next(iter(counts.values()))}
    out = {f"skipped_steps/{i}": n for i, n in counts.items()}
    if out:
        out["skipped_steps"] = sum(counts.values())
    return out



def built_on_first_use(namespace: dict[str, Any], name: str,
                       build: Callable[[], type]) -> Callable[[str], Any]:
    """A module's ``__getattr__`` that makes ``name`` with ``build()`` when it is
    first asked for, against the framework installed then (``build`` raises
    ImportError saying what to install), and keeps it in ``namespace``."""

    def __getattr__(attr: str) -> Any:
        if attr != name:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {attr!r}")
        made = namespace[name] = build()
        return made

    return __getattr__
