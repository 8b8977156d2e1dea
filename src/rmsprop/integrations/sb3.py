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

SB3 does not log a step that ``nonfinite="skip"`` skipped: :data:`SkippedSteps`
is a callback that records the count in the algorithm's logger. It is built
on first use against the installed SB3; ``policy_kwargs`` needs none.
"""

from __future__ import annotations

from typing import Any

import torch

from ..optimizer import RMSprop
from . import built_on_first_use, skipped_steps

__all__ = ["A2C_EPS", "SkippedSteps", "policy_kwargs"]  # noqa: F822 (SkippedSteps: built on first use)

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


def _optimizers(model: Any) -> list[torch.optim.Optimizer]:
    """Every optimizer an SB3 algorithm steps, in a fixed order: the policy's and
    its parts' (``actor.optimizer``, ``critic.optimizer``: SAC, TD3), then the
    entropy coefficient's (SAC's ``ent_coef_optimizer``)."""
    found: list[torch.optim.Optimizer] = []
    for module in model.policy.modules():
        opt = getattr(module, "optimizer", None)
        if isinstance(opt, torch.optim.Optimizer) and all(opt is not seen for seen in found):
            found.append(opt)
    extra = getattr(model, "ent_coef_optimizer", None)
    if isinstance(extra, torch.optim.Optimizer):
        found.append(extra)
    return found


def _build() -> type:
    try:
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError as err:
        raise ImportError("rmsprop.integrations.sb3.SkippedSteps needs Stable-Baselines3: "
                          "pip install stable-baselines3") from err

    class SkippedSteps(BaseCallback):
        """Record how many updates ``nonfinite="skip"`` skipped in the algorithm's logger.

        Before each rollout (so after each training phase) and at the end of
        training, the callback records ``train/skipped_steps``, the total over
        the algorithm's :class:`rmsprop.RMSprop` optimizers, and with several
        of them (SAC's actor and critic) ``train/skipped_steps/<i>`` each, in
        :func:`_optimizers`' order. SB3 writes them out with its other
        ``train/`` values at every ``log_interval``. Each record reads the
        counts: one host read per optimizer on an accelerator.

        Example:
            ``model.learn(10_000, callback=SkippedSteps())`` with
            ``policy_kwargs=policy_kwargs(nonfinite="skip")``.
        """

        def _record(self) -> None:
            for name, count in skipped_steps(_optimizers(self.model)).items():
                self.logger.record(f"train/{name}", count)

        def _on_rollout_start(self) -> None:
            self._record()

        def _on_training_end(self) -> None:
            self._record()

        def _on_step(self) -> bool:
            return True

    return SkippedSteps


__getattr__ = built_on_first_use(globals(), "SkippedSteps", _build)
