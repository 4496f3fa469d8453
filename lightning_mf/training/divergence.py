"""Stops a fit whose loss has become NaN or infinite, soon and without a host sync per step.

Every step ORs `not isfinite(loss)` into a flag on the device and, the first time, records the step
there; the flag is read only on the steps the logger writes (`log_every_n_steps`) and at epoch
ends, where Lightning reads the loss anyway. A diverged fit then ends with `TrainingDiverged`
naming the step, the learning rate and what to try, instead of training on NaN for epochs.
Under DDP the ranks agree on the flag before one of them raises (a single all-reduce), so none is
left waiting in a collective.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_mf.errors import TrainingDiverged


class DivergenceWatch:
    """The device-side record of a non-finite loss (`note` every step, `check` now and then)."""

    def __init__(self) -> None:
        self._flag: Tensor | None = None  # a non-finite loss was seen
        self._step: Tensor | None = None  # the first step it was seen at, -1 before

    def note(self, loss: Tensor, step: int) -> None:
        """Records `loss` of global step `step` (no host sync)."""
        bad = ~torch.isfinite(loss.detach())
        if self._flag is None or self._flag.device != loss.device:
            self._flag = torch.zeros((), dtype=torch.bool, device=loss.device)
            self._step = torch.full((), -1, dtype=torch.int64, device=loss.device)
        self._step = torch.where(bad & ~self._flag, torch.full_like(self._step, step), self._step)
        self._flag |= bad

    def check(self, trainer: pl.Trainer, learning_rate: float) -> None:
        """Raises `TrainingDiverged` if any rank has seen a non-finite loss (all ranks call it)."""
        if self._flag is None:
            return
        flag, step = self._flag.to(torch.int64), self._step
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag.clone(), reduce_op="max")
            step = trainer.strategy.reduce(torch.where(self._flag, step, torch.full_like(step, 2**62)).clone(),
                                           reduce_op="min")
        if not bool(flag):
            return
        raise TrainingDiverged(
            f"the training loss became NaN or infinite at step {int(step)} (learning rate {learning_rate:g}): "
            "the fit diverged. Lower the learning rate (--model.optimizer.init_args.lr, e.g. by 10x), use "
            "FusedRowAdagrad (its step does not grow with the gradient), raise the penalties (--model.l2), "
            "check the data for extreme ratings, or set --model.rating_unit auto on a wide rating scale."
        )
