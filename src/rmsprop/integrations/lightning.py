"""PyTorch Lightning: make ``nonfinite="skip"`` visible in the logs.

:class:`rmsprop.RMSprop` needs nothing from Lightning to train there: return it
from ``configure_optimizers`` as any optimizer (docs/integrations/lightning.md).
What Lightning cannot show by itself is a step the optimizer skipped because a
gradient held NaN or ±Inf; :data:`SkippedSteps` is a callback that logs the
count (``RMSprop.skipped_steps``) through the module's ``log``, so it appears in
whatever logger the ``Trainer`` has.

The callback is built on first use against the Lightning that is installed:
the ``lightning`` package (``lightning.pytorch``) where it imports, otherwise
``pytorch_lightning``; ``import rmsprop.integrations.lightning`` needs neither.
"""

from __future__ import annotations

from typing import Any

from . import built_on_first_use, skipped_steps

__all__ = ["SkippedSteps", "skipped_steps"]  # noqa: F822 (SkippedSteps: built on first use, __getattr__)


def _lightning() -> Any:
    try:
        import lightning.pytorch as pl  # type: ignore[import-not-found]
    except ImportError:
        try:
            import pytorch_lightning as pl  # type: ignore[import-not-found]
        except ImportError as err:
            raise ImportError(
                "rmsprop.integrations.lightning.SkippedSteps needs Lightning: "
                "pip install lightning (or pytorch-lightning)"
            ) from err
    return pl


def _build() -> type:
    pl = _lightning()

    class SkippedSteps(pl.Callback):  # type: ignore[name-defined]
        """Log how many steps ``nonfinite="skip"`` skipped, per optimizer and in total.

        After each training batch (every ``every_n_steps`` optimizer steps) the
        callback logs ``skipped_steps`` (and ``skipped_steps/<i>`` per optimizer
        when there are several of ours) with ``pl_module.log``, so the count
        shows in the Trainer's logger and, with ``prog_bar=True``, in the
        progress bar. Reading the count costs one host read per optimizer on
        an accelerator, hence the interval.

        Args:
            every_n_steps: log when the global step is a multiple of it
                (default: None, the Trainer's ``log_every_n_steps``).
            prog_bar: also show the total in the progress bar (default: False).

        Example:
            ``Trainer(callbacks=[SkippedSteps()])`` with ``configure_optimizers``
            returning ``rmsprop.RMSprop(..., nonfinite="skip")``.
        """

        def __init__(self, every_n_steps: int | None = None, prog_bar: bool = False) -> None:
            if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
                raise ValueError(f"every_n_steps must be a positive int or None, got {every_n_steps!r}")
            self.every_n_steps = every_n_steps
            self.prog_bar = prog_bar

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            every = self.every_n_steps or trainer.log_every_n_steps
            if trainer.global_step % every:
                return
            for name, count in skipped_steps(trainer.optimizers).items():
                pl_module.log(name, float(count), on_step=True, on_epoch=False,
                              prog_bar=self.prog_bar and name == "skipped_steps")

    return SkippedSteps


__getattr__ = built_on_first_use(globals(), "SkippedSteps", _build)
