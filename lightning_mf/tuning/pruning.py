"""`TrialPruning`: the Lightning callback that connects one `tune` trial's fit to its Optuna trial.

It reads `val/rmse` after every validation, reports it to the trial and stops the fit when the
pruner says so, when the value is not finite (the fit diverged), or when the study's time budget
runs out (checked after every batch, so a trial in flight overruns `--timeout` by at most one
batch and one validation).

Values are reported at the fraction of the fit done, in percent (10, 20, ..., 100; each step by the
first validation that reaches it), not at the epoch number: trials search the epoch count, and
under a cosine decay the learning rate at epoch 5 of a 10-epoch fit is near 0 while at epoch 5 of a
50-epoch fit it is near its peak. Optuna's pruners compare trials at equal steps, so equal steps
must mean the same point of the schedule.

Optuna's own `optuna_integration.PyTorchLightningPruningCallback` is not used: it reports by
epoch, passes NaN to the pruner instead of stopping, knows no time budget, and reaches into
Optuna's private storage modules for its DDP support.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import optuna

from lightning_mf.errors import DataError

REPORT_EVERY_PERCENT = 10


def progress_step(trainer: pl.Trainer) -> int | None:
    """The percent of the fit done, rounded down to a multiple of REPORT_EVERY_PERCENT (None if the
    fit's length is unknown, e.g. neither `max_epochs` nor `max_steps` bounds it)."""
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total) or total <= 0:
        return None
    percent = math.floor(100 * trainer.global_step / total + 1e-6)
    return min(100, percent // REPORT_EVERY_PERCENT * REPORT_EVERY_PERCENT)


class TrialPruning(pl.Callback):
    """Reports a fit's validation metric to an Optuna trial and stops the fit early when it should.

    After the fit, `curve` holds every validation's value (None where it was not finite), `reason`
    says why the fit was stopped early (None if it ran to its end), `training_started` whether
    training began (failures before it, sanity check included, are configuration errors, not bad
    trials), and `interrupted` whether Ctrl-C stopped the fit (Lightning then exits with status 1).

    Args:
        trial: The trial being run.
        monitor: The logged metric to report; lower is better.
        deadline: `time.monotonic()` value at which the study's time budget ends; None: no budget.
    """

    def __init__(self, trial: optuna.Trial, monitor: str = "val/rmse", deadline: float | None = None) -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.deadline = deadline
        self.curve: list[float | None] = []
        self.reason: str | None = None
        self.diverged = False
        self.training_started = False
        self.interrupted = False
        self._reported: set[int] = set()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        meta = getattr(trainer.datamodule, "meta", None)
        if meta is not None and meta.splits.get("val", {}).get("rows", 0) == 0:
            raise DataError(
                f"tune scores each trial on the validation split, but {trainer.datamodule.data_dir} has no val "
                "rows: prepare the data with a validation part (data.prepare.val_fraction, e.g. 0.05), or give a "
                "data.data_dir that has one. The test split is never used by tune."
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.training_started = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupted = True

    def _stop(self, trainer: pl.Trainer, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        trainer.should_stop = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline and self.reason is None:
            self._stop(trainer, f"stopped at the time budget (--timeout), epoch {trainer.current_epoch + 1}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metric = trainer.callback_metrics.get(self.monitor)
        if metric is None:
            return
        value = float(metric)
        finite = math.isfinite(value)
        self.curve.append(value if finite else None)
        if self.reason is not None:
            return
        epoch = trainer.current_epoch + 1
        if not finite:
            self.diverged = True
            self._stop(trainer, f"diverged: {self.monitor} {value} at epoch {epoch}")
            return
        percent = progress_step(trainer)
        step = epoch if percent is None else percent
        if step == 0 or step in self._reported:
            return
        self._reported.add(step)
        self.trial.report(value, step)
        if percent != 100 and self.trial.should_prune():
            where = f"epoch {epoch}" if percent is None else f"{percent}% of its fit (epoch {epoch})"
            self._stop(trainer, f"pruned at {where}: {self.monitor} {value:.4f}")
