"""Preemption on SLURM: a warning signal becomes a checkpoint at the next batch end, a requeue and a stop.

With `#SBATCH --signal=USR1@90 --requeue`, SLURM sends SIGUSR1 90 s before it preempts the job or
its time runs out. Lightning's own handler saves inside the signal handler, wherever the step is:
weights updated while the progress counter is not, `FusedRowAdagrad`'s second thread mid-write,
or, under DDP, its barrier meeting a rank that is inside an all-reduce. Here the handler only sets
a flag. At a batch end the ranks agree on it (one all-reduce of a single number, every
`check_every_n_steps` steps), and then every rank takes part in writing the checkpoint, rank 0
requeues the job, and the fit stops. The checkpoint goes to the run's own checkpoint folder as
`preempted.ckpt`; the CLI names a SLURM run's folder after its job id, so the requeued job finds it
(`resume_checkpoint`) and resumes with no flag, and no other fit ever does.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

PREEMPTED_FILE = "preempted.ckpt"
LAST_FILE = "last.ckpt"


def slurm_job_id() -> str | None:
    """The job's id as `scontrol` takes it (`<array job>_<task>` for an array task); None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and os.environ.get("SLURM_ARRAY_TASK_ID") is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def checkpoint_folder(trainer: pl.Trainer) -> Path:
    """Where the run's checkpoints go: the ModelCheckpoint's folder, else `<log dir>/checkpoints`."""
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    if dirpath:
        return Path(dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


def resume_checkpoint(folder: Path) -> Path | None:
    """The newest of a requeued run's `preempted.ckpt` and `last.ckpt`, if either exists."""
    found = [path for path in (folder / PREEMPTED_FILE, folder / LAST_FILE) if path.is_file()]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


class PreemptionCheckpoint(pl.Callback):
    """Checkpoints, requeues and stops at the first batch end after `signal_name` arrives (see the module).

    Args:
        signal_name: The warning signal SLURM is asked for (`--signal=USR1@90`).
        check_every_n_steps: Under DDP, how often the ranks agree on whether the signal arrived: a
            one-number all-reduce (on GPUs also a host sync), so 1 stops soonest and a larger value
            costs less per step. A single process checks its own flag at every batch end for free.
        requeue: After saving, run `scontrol requeue <job id>` (on global rank 0): `auto` does so
            under SLURM only.
    """

    def __init__(self, signal_name: str = "SIGUSR1", check_every_n_steps: int = 1, requeue: str = "auto") -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"PreemptionCheckpoint: check_every_n_steps must be >= 1, got {check_every_n_steps}")
        if requeue not in ("auto", "true", "false"):
            raise ValueError(f"PreemptionCheckpoint: requeue must be auto, true or false, got {requeue!r}")
        name = signal_name if signal_name.startswith("SIG") else f"SIG{signal_name}"
        if not hasattr(signal, name):
            raise ValueError(f"PreemptionCheckpoint: unknown signal {signal_name!r} (e.g. SIGUSR1, SIGUSR2, SIGTERM)")
        self.signal = signal.Signals[name]
        self.check_every_n_steps = check_every_n_steps
        self.requeue = requeue
        self.requested = False
        self._previous_handler: Any = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True  # only a flag: the step in progress finishes untouched

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.requested = False
        try:
            self._previous_handler = signal.signal(self.signal, self._on_signal)
        except ValueError:  # not the main thread: signals cannot be handled here
            rank_zero_warn(f"PreemptionCheckpoint: not in the main thread, {self.signal.name} is not handled")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signal, self._previous_handler)
            self._previous_handler = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._agreed(trainer, pl_module):
            return
        path = checkpoint_folder(trainer) / PREEMPTED_FILE
        trainer.save_checkpoint(path)  # every rank: the checkpoint gathers state from all of them
        rank_zero_info(f"{self.signal.name} received: checkpoint written to {path}")
        if trainer.is_global_zero:
            self._requeue()
        trainer.should_stop = True

    def _agreed(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        if trainer.world_size == 1:
            return self.requested
        if trainer.global_step % self.check_every_n_steps:
            return False
        flag = torch.tensor([1.0 if self.requested else 0.0], device=pl_module.device)
        return bool(trainer.strategy.reduce(flag, reduce_op="max").item() > 0)

    def _requeue(self) -> None:
        job = slurm_job_id()
        if self.requeue == "false" or (self.requeue == "auto" and job is None):
            return
        if job is None:
            rank_zero_warn("PreemptionCheckpoint(requeue=true): no SLURM_JOB_ID, nothing to requeue")
            return
        try:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            rank_zero_warn(f"could not requeue SLURM job {job}: {error}")
            return
        if done.returncode == 0:
            rank_zero_info(f"requeued SLURM job {job}; it resumes from the checkpoint")
        else:
            rank_zero_warn(f"scontrol requeue {job} failed ({done.returncode}): {done.stderr.strip()[:500]}")
