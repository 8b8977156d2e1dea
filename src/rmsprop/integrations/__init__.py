"""Recipes and helpers for the training frameworks where users meet an optimizer.

Each submodule serves one framework and imports it only inside the function
that needs it, so ``import rmsprop.integrations`` (and each submodule) works
with torch alone:

- :mod:`rmsprop.integrations.sb3`: ``policy_kwargs`` for Stable-Baselines3's
  A2C, PPO and the other on-policy algorithms (needs nothing from SB3 itself).
- :mod:`rmsprop.integrations.timm`: ``register`` puts this optimizer in timm's
  registry, so ``timm.optim.create_optimizer_v2(model, opt="rmsproptfx")`` and
  ``train.py --opt rmsproptfx`` build it.
- :mod:`rmsprop.integrations.lightning`: ``SkippedSteps``, a Lightning callback
  that logs the steps ``nonfinite="skip"`` skipped.

Each framework's page in the documentation (docs/integrations/) has the
recipe and says which test proves what.
"""

__all__ = ["lightning", "sb3", "timm"]
