"""What `RatingPredictor` takes from its data and its trainer before it trains: the training counts and
items from the DataModule, the checkpoint's dataset check, and quiet DDP buffers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor

if TYPE_CHECKING:
    from lightning_mf.training.module import RatingPredictor


def attach_training_data(module: RatingPredictor) -> None:
    """At fit start: the penalties' row counts and the SVD++ item lists, from the DataModule."""
    if not module.penalty_weights.ready:
        module.set_train_counts(*_from_datamodule(
            module, "train_counts", "(user_counts, item_counts)", "l2_count_power or l2_bias_count_power != 1 needs "
            "each row's number of training ratings", "or call set_train_counts()"))
    model = module.model
    if model.implicit_factors is not None and model.implicit_items.numel() == 0:
        model.set_implicit_feedback(*_from_datamodule(
            module, "train_interactions", "(user, item)", "implicit_feedback=True needs each user's training items",
            "or call module.model.set_implicit_feedback(user, item) before fit"))


def _from_datamodule(module: RatingPredictor, method: str, returns: str, need: str,
                     otherwise: str) -> tuple[Tensor, Tensor]:
    """What the DataModule's `method()` returns, or an error saying what needs it and how else to give it."""
    source = getattr(module.trainer.datamodule, method, None)
    if source is None:
        raise ValueError(f"RatingPredictor: {need}. Fit with a DataModule that has {method}() -> {returns}, "
                         f"{otherwise}.")
    return source()


def check_checkpoint_dataset(trainer: pl.Trainer | None, checkpoint: dict[str, Any]) -> None:
    """Refuses a checkpoint of another dataset folder, before its weights load (a table of another
    size would fail there first, less clearly); the DataModule does the comparison."""
    datamodule = getattr(trainer, "datamodule", None)
    record = checkpoint.get(type(datamodule).__qualname__)
    if record is not None and hasattr(datamodule, "check_trained_on"):
        datamodule.check_trained_on(record)


def quiet_ddp_buffers(trainer: pl.Trainer | None) -> None:
    """Stops DDP re-broadcasting the module's buffers from rank 0 before every forward (its
    default): ours are the same on every rank (the SVD++ item lists alone are 8 bytes a training
    rating) or merged explicitly (the seen-marks). Runs before the strategy wraps the module."""
    strategy = trainer.strategy if trainer is not None else None
    if isinstance(strategy, DDPStrategy):
        strategy._ddp_kwargs.setdefault("broadcast_buffers", False)
