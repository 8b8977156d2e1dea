"""Stable-Baselines3: this optimizer inside A2C, PPO and the other algorithms.

SB3 builds a policy's optimizer as ``optimizer_class(params, lr=..., **optimizer_kwargs)``
from the algorithm's ``policy_kwargs``, and schedules ``lr`` by writing each
param group's ``"lr"``. :func:`policy_kwargs` returns that pair for
:class:`rmsprop.RMSprop`. Nothing here imports SB3.

One trap it closes: A2C's ``use_rms_prop=True`` (its default) fills in
``alpha=0.99, eps=rms_prop_eps, weight_decay=0`` only for its own default
optimizer class. Once ``optimizer_class`` is given, ``rms_prop_eps`` reaches
nobody and the class's own ε applies (1e-8 for PyTorch's RMSprop and for
SB3's ``RMSpropTFLike``). The helper passes A2C's ε (1e-5) unless told
otherwise, so ``policy_kwargs()`` inside A2C is A2C's default optimizer.
"""

from __future__ import annotations

from typing import Any

import torch

from ..optimizer import RMSprop

__all__ = ["A2C_EPS", "policy_kwargs"]

#: A2C's default ``rms_prop_eps``, the ε of its default optimizer.
A2C_EPS = 1e-5


def policy_kwargs(preset: str = "torch", *, eps: float | None = A2C_EPS, **knobs: Any) -> dict[str, Any]:
    """The ``policy_kwargs`` that make an SB3 algorithm train with :class:`rmsprop.RMSprop`.

    The settings are checked here, by building the optimizer once on a
    scratch tensor, so a bad value raises at this call and not inside the
    algorithm's constructor.

    Args:
        preset: the update's semantics, as for :class:`rmsprop.RMSprop`:
            ``"torch"`` is A2C's default ``torch.optim.RMSprop``, ``"sb3"`` is
            SB3's ``RMSpropTFLike`` (default: ``"torch"``).
        eps: ε; ``None`` leaves the preset's own (default: 1e-5, A2C's
            ``rms_prop_eps``).
        **knobs: any other keyword of :class:`rmsprop.RMSprop` but ``lr``
            (SB3 passes the learning rate from the algorithm's
            ``learning_rate``), e.g. ``momentum``, ``centered``, ``alpha``,
            ``state_precision``, ``nonfinite``.

    Returns:
        ``{"optimizer_class": rmsprop.RMSprop, "optimizer_kwargs": {...}}``;
        merge other policy arguments into it (``{**policy_kwargs(), "net_arch": [64, 64]}``).

    Raises:
        ValueError: a setting :class:`rmsprop.RMSprop` refuses, or ``lr`` in ``knobs``.

    Example:
        >>> from rmsprop.integrations.sb3 import policy_kwargs
        >>> policy_kwargs("sb3", momentum=0.9)["optimizer_kwargs"]
        {'preset': 'sb3', 'eps': 1e-05, 'momentum': 0.9}
    """
    if "lr" in knobs:
        raise ValueError("lr comes from the algorithm's learning_rate (SB3 passes it and schedules it)")
    optimizer_kwargs: dict[str, Any] = {"preset": preset}
    if eps is not None:
        optimizer_kwargs["eps"] = eps
    optimizer_kwargs.update(knobs)
    RMSprop([torch.zeros(1, requires_grad=True)], lr=1e-3, **optimizer_kwargs)  # checks every setting
    return {"optimizer_class": RMSprop, "optimizer_kwargs": optimizer_kwargs}
