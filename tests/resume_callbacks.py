"""Callbacks the resume tests add to fits run through the CLI (`--trainer.callbacks+=resume_callbacks.X`).

None of them changes what is trained: they record it, stop it, slow it or kill it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


class Record(pl.Callback):
    """Writes `rank<r>.pt` at fit end: every trained batch (step, epoch, user, item, rating), the
    first step trained, each epoch's logged train loss and the final model weights."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.rows: list[torch.Tensor] = []
        self.first_step: int | None = None
        self.train_losses: dict[int, float] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The module logs an epoch's train/loss at its end; here it is the previous epoch's.
        if "train/loss" in trainer.callback_metrics and trainer.current_epoch > 0 and self.first_step is not None:
            self.train_losses[trainer.current_epoch - 1] = float(trainer.callback_metrics["train/loss"])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.first_step is None:
            self.first_step = trainer.global_step
        step = torch.full_like(batch.user, trainer.global_step, dtype=torch.float64)
        epoch = torch.full_like(step, trainer.current_epoch)
        self.rows.append(torch.stack([step, epoch, batch.user.double(), batch.item.double(), batch.rating.double()]))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        weights = {key: value.detach().cpu().clone() for key, value in pl_module.state_dict().items()
                   if key.startswith("model.")}
        self.train_losses[trainer.current_epoch - 1] = float(trainer.callback_metrics["train/loss"])
        torch.save({"rows": torch.cat(self.rows, 1), "first_step": self.first_step, "weights": weights,
                    "train_losses": self.train_losses}, self.out / f"rank{trainer.global_rank}.pt")


class StopAt(pl.Callback):
    """Sets `trainer.should_stop` at the end of global step `step` (mid-epoch, the way a time limit would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


class Slow(pl.Callback):
    """From step `mark_step` on, touches `marker` and sleeps after every step, so a test can signal mid-fit."""

    def __init__(self, marker: str, mark_step: int = 3, sleep: float = 0.25) -> None:
        self.marker, self.mark_step, self.sleep = Path(marker), mark_step, sleep

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step >= self.mark_step:
            self.marker.touch()
            time.sleep(self.sleep)


class KillInSave(pl.Callback):
    """SIGKILLs the process halfway through writing `last.ckpt` at global step `step`: what a job
    killed during a save leaves behind."""

    def __init__(self, step: int) -> None:
        self.step = step

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        real_save = torch.save

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            name = getattr(f, "name", str(f))
            if trainer.global_step == self.step and str(name).endswith("last.ckpt.partial"):
                import io

                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, f, *args, **kwargs)

        torch.save = save
