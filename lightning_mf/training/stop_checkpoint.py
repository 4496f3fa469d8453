"""A `ModelCheckpoint` whose `last.ckpt` is always the latest state, even of a fit stopped mid-epoch.

When `trainer.should_stop` is set in the middle of an epoch (a time limit, a preemption, any
callback), Lightning ends the epoch early and treats it as complete: the checkpoint it then writes
at the epoch's end resumes with the next epoch, and the rest of the stopped one is never trained.
This callback writes `last.ckpt` at the batch end where the stop was requested instead, the state
a step checkpoint has, so resuming continues the same epoch at its next batch; the epoch-end save
is then skipped (Lightning skips a save at a step already saved).

Lightning 2.6 also writes `last.ckpt` at an epoch's end only when a top-k checkpoint was saved at
that step, so after an epoch whose validation did not improve, `last.ckpt` is an older epoch's,
and resuming from it repeats epochs. Here `last.ckpt` is written at every epoch end. And a
non-finite monitored value (a diverged epoch's NaN RMSE) never counts as one of the best: Lightning
keeps the first k scores whatever they are, so a NaN first epoch became "best".
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor


class ResumableCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (same arguments) whose `last` is saved at every epoch end and where a fit is
    stopped mid-epoch, and whose best are never a NaN or infinite score (see the module)."""

    def check_monitor_top_k(self, trainer: pl.Trainer, current: Tensor | None = None) -> bool:
        if current is not None and not bool(torch.isfinite(current)):
            return False
        return super().check_monitor_top_k(trainer, current)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: pl.Trainer) -> None:
        # Skipped where this step is saved already (or in sanity checks, fast_dev_run, non-fit runs).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if (trainer.should_stop and trainer.fit_loop._can_stop_early
                and not trainer.fit_loop.epoch_loop._num_ready_batches_reached()):
            self._save_last_if_missed(trainer)
