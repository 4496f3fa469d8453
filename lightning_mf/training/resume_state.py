"""What a checkpoint must carry beyond weights and optimizer state for a resumed fit to be the same run.

Lightning saves the weights, the optimizers, the schedulers, the loops' progress and (through
`TrainLoader.state_dict`) the stream's position. Three things more decide the next steps:

- every rank's random-number streams (dropout draws from torch's global generators): gathered
  from all ranks, since only rank 0 writes the checkpoint;
- the epoch's running train loss: its sums over all ranks, so the epoch's `train/loss` is the same
  whichever step the fit was interrupted at (on resume rank 0 holds them, the others start at 0).
  A checkpoint written once all of an epoch's batches are trained carries none: the resumed fit
  starts the next epoch;
- the rows each rank has trained this epoch: ORed into the model's seen-marks in the checkpoint.

All of it is gathered inside `on_save_checkpoint`, which Lightning calls on every rank for every
save, so the collectives line up.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from lightning_mf.training.train_metrics import SeenRows, WeightedMean

KEY = "lightning_mf"  # the checkpoint entry written here


def _gathered(module: LightningModule, tensor: Tensor) -> list[Tensor]:
    """`tensor` of every rank, rank order, on the CPU (one entry on a single process)."""
    if module.trainer.world_size == 1:
        return [tensor.cpu().clone()]
    stacked = module.all_gather(tensor.to(module.device))
    # Each its own storage: torch.set_rng_state reads a state from its storage's start.
    return [part.to("cpu", tensor.dtype).clone() for part in stacked]


def rng_states(module: LightningModule) -> dict[str, list[Tensor]]:
    """torch's CPU generator state, and the current CUDA device's, of every rank."""
    states = {"torch": _gathered(module, torch.get_rng_state())}
    if module.device.type == "cuda":
        states["cuda"] = _gathered(module, torch.cuda.get_rng_state(module.device))
    return states


def restore_rng(states: dict[str, list[Tensor]], rank: int, device: torch.device) -> None:
    """Sets this rank's generators to the saved ones (a rank beyond the saved world takes rank 0's)."""
    pick = rank if rank < len(states["torch"]) else 0
    torch.set_rng_state(states["torch"][pick].to("cpu", torch.uint8).contiguous().clone())
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"][pick].to("cpu", torch.uint8).contiguous().clone(), device)


def save_state(module: LightningModule, checkpoint: dict[str, Any], train_loss: WeightedMean, seen: SeenRows,
               model_prefix: str = "model.") -> None:
    """Adds this file's state to a checkpoint being written (on every rank)."""
    with train_loss.sync_context():
        loss_sums = {"total": train_loss.total.cpu().clone(), "weight": train_loss.weight.cpu().clone()}
    if module.trainer.fit_loop.epoch_loop._num_ready_batches_reached():
        loss_sums = None
    if seen.update_count:
        state = checkpoint["state_dict"]
        for name, marks in zip(("user_seen", "item_seen"), seen.compute()):
            key = model_prefix + name
            state[key] = state[key] | marks.to(state[key].device)
    checkpoint[KEY] = {"rng": rng_states(module), "train_loss": loss_sums}


def load_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """What `save_state` added to a checkpoint, to apply when training resumes (`resume`); None for a
    checkpoint of an earlier version, which has none of it."""
    return checkpoint.get(KEY)


def resume(saved: dict[str, Any], module: LightningModule, train_loss: WeightedMean) -> None:
    """When a resumed fit starts training: this rank's RNG streams, and the running train loss of
    the epoch it continues (rank 0 takes the sums)."""
    trainer = module.trainer
    restore_rng(saved["rng"], trainer.global_rank, module.device)
    sums = saved["train_loss"]
    if sums is not None and trainer.global_rank == 0:
        train_loss.total.copy_(sums["total"])
        train_loss.weight.copy_(sums["weight"])
