"""`FitTimer`: a Lightning callback that times a fit from inside and writes the figures as JSON.

`benchmarks/throughput.py` adds it to `python -m lightning_mf fit` runs (with `benchmarks/` on
`PYTHONPATH`). Timing from inside the fit process leaves out interpreter start-up, imports, the
CLI's parsing, model construction and the first batch (allocator and thread-pool warm-up), so the
training rate is the steady-state one. On CUDA it synchronizes only at the points it reads the
clock (a handful per fit), never per step.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


class FitTimer(pl.Callback):
    """Records training-rate, epoch and validation timings and peak RSS; writes them at fit end.

    Written keys: `ratings_per_s` (ratings of the timed batches over their wall time), `timed_s`,
    `timed_ratings`, `timed_cpu_s` (process CPU time in the timed window), `batches`, `ratings`,
    `epoch_s` (first training epoch, from its start to its last batch's end, validation
    excluded), `warmup_s` (from that start to the end of the warm-up batches: where
    `FusedRowAdagrad(compile=True)` compiles), `epoch_complete` (whether that
    epoch ran to its end rather than stopping at `max_steps`), `epoch_batches`, `val_s` (the
    first validation run after training started, sanity check excluded), `val_rmse`,
    `peak_rss_mb` (the fit process's peak resident set), `device`, `precision`, `torch_threads`,
    `torch`, `lightning`, `python`.

    Under DDP every rank writes its own file, `<path stem>.rank<r><suffix>`.

    Args:
        path: JSON file to write when the fit ends.
        warmup_batches: Batches run before the clock starts (at least 1: the first batch pays
            for allocator and thread-pool warm-up).
    """

    def __init__(self, path: str, warmup_batches: int = 1) -> None:
        super().__init__()
        if warmup_batches < 1:
            raise ValueError(f"FitTimer: warmup_batches must be >= 1, got {warmup_batches}")
        self.path = Path(path)
        self.warmup_batches = warmup_batches
        self._batches = 0
        self._ratings = 0
        # The clock runs from the end of the warm-up batches to the end of each epoch's last
        # batch, and again from the start of every later epoch: validation and checkpointing
        # between epochs are left out.
        self._segment_start: float | None = None
        self._segment_cpu = 0.0
        self._segment_ratings = 0
        self._timed_s = 0.0
        self._timed_cpu_s = 0.0
        self._timed_ratings = 0
        self._epoch_start: float | None = None
        self._epoch_s: float | None = None
        self._epoch_batches = 0
        self._epoch_complete = False
        self._val_start: float | None = None
        self._val_s: float | None = None
        self._warmup_s: float | None = None

    @staticmethod
    def _now(pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def _start_segment(self, pl_module: pl.LightningModule) -> None:
        self._segment_start = self._now(pl_module)
        self._segment_cpu = time.process_time()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_start is None:
            self._epoch_start = self._now(pl_module)
        elif self._batches >= self.warmup_batches:
            self._start_segment(pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        size = int(batch[2].shape[0])  # a shape, not a value: no device sync
        self._batches += 1
        self._ratings += size
        if self._segment_start is not None:
            self._segment_ratings += size
        if self._epoch_s is None:
            self._epoch_batches += 1
        last_of_epoch = batch_idx + 1 == trainer.num_training_batches
        last_of_fit = 0 < trainer.max_steps <= trainer.global_step
        if self._batches == self.warmup_batches:
            if self._epoch_start is not None:
                self._warmup_s = self._now(pl_module) - self._epoch_start
            if not (last_of_epoch or last_of_fit):
                self._start_segment(pl_module)
                return
        if not (last_of_epoch or last_of_fit):
            return
        now = self._now(pl_module)
        if self._epoch_s is None and self._epoch_start is not None:
            self._epoch_s = now - self._epoch_start
            self._epoch_complete = last_of_epoch
        if self._segment_start is not None:
            self._timed_s += now - self._segment_start
            self._timed_cpu_s += time.process_time() - self._segment_cpu
            self._timed_ratings += self._segment_ratings
            self._segment_start, self._segment_ratings = None, 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._val_s is None:
            self._val_start = self._now(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._val_s is None and self._val_start is not None:
            self._val_s = self._now(pl_module) - self._val_start

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        timed_s = self._timed_s
        rmse = trainer.callback_metrics.get("val/rmse")
        figures = {
            "ratings_per_s": self._timed_ratings / timed_s if timed_s else None,
            "timed_s": timed_s,
            "timed_ratings": self._timed_ratings,
            # CPU seconds of all the process's threads (the loader's too) in the same window: on
            # a shared machine, ratings per CPU second shows what contention hid.
            "timed_cpu_s": self._timed_cpu_s,
            "batches": self._batches,
            "ratings": self._ratings,
            "epoch_s": self._epoch_s,
            "warmup_s": self._warmup_s,
            "epoch_complete": self._epoch_complete,
            "epoch_batches": self._epoch_batches,
            "val_s": self._val_s,
            "val_rmse": float(rmse) if rmse is not None else None,
            # Linux reports ru_maxrss in KiB.
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device": _device_name(pl_module.device),
            "precision": str(trainer.precision),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "python": platform.python_version(),
        }
        figures["rank"], figures["world_size"] = trainer.global_rank, trainer.world_size
        path = self.path
        if trainer.world_size > 1:  # every rank times itself: rank r writes <name>.rank<r>.json
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}"
