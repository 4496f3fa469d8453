"""`python -m lightning_mf fit|validate|test|predict`: the LightningCLI over the model and the data.

The parser is built from `RatingPredictor`'s and `RatingsDataModule`'s signatures, so their
`Args:` blocks are the `--help` and every argument is a config key. What the data determines
(`num_users`, `num_items`, the rating range, the global mean) is linked from the DataModule into
the model after the DataModule is built, never written in YAML.

Defaults added here (each overridable from a config or the command line):

- `checkpoint`: a ModelCheckpoint keeping the best `val/rmse` (mode min) and the last epoch, in the
  run's log folder under `checkpoints/` (`--trainer.enable_checkpointing false` leaves it out);
- `lr_monitor`: a LearningRateMonitor;
- `trainer.logger`: a TensorBoardLogger writing to `runs/<name>/version_<n>` (set the name with
  `--trainer.logger.init_args.name`), where the run's `config.yaml` is saved too;
- `predictions`: `predict` writes user, item, rating and prediction to `predictions.parquet` in
  the run's log folder;
- the progress bar is Lightning's default.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_mf.data.datamodule import RatingsDataModule
from lightning_mf.inference.prediction_writer import ParquetPredictionWriter
from lightning_mf.training.module import RatingPredictor

DESCRIPTION = "Train and evaluate matrix factorization on a prepared dataset folder."
SUBCOMMANDS = ("fit", "validate", "test", "predict")

# Sizes and statistics the model takes from the data.
LINKED_FROM_DATA = ("num_users", "num_items", "rating_min", "rating_max", "global_mean")

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "lightning_mf"},
    },
}

CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "monitor": "val/rmse",
    "mode": "min",
    "save_top_k": 1,
    "save_last": True,
    "auto_insert_metric_name": False,
    # Metric names hold "/", which would make folders if Lightning inserted them into the name.
    "filename": "epoch{epoch:03d}-step{step:07d}-val_rmse{val/rmse:.4f}",
}


class MFLightningCLI(LightningCLI):
    """LightningCLI for `RatingPredictor` on a `RatingsDataModule`, with the defaults above."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({f"checkpoint.{key}": value for key, value in CHECKPOINT_DEFAULTS.items()})
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(ParquetPredictionWriter, "predictions")
        for name in LINKED_FROM_DATA:
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[pl.Callback]) -> pl.Trainer:
        # `--trainer.enable_checkpointing false` turns our default ModelCheckpoint off too, instead
        # of Lightning's error about a checkpoint callback on a trainer without checkpointing.
        if config.get("enable_checkpointing") is False:
            callbacks = [callback for callback in callbacks if not isinstance(callback, ModelCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)


def _ignore_known_warnings() -> None:
    """Silences, inside a `warnings.catch_warnings()` block, two Lightning warnings that do not
    apply here: our streams' lengths are exact with workers (see lightning_mf.data.stream), which
    Lightning cannot know, and the prediction writer needs no sampler indices."""
    warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader")


def build_cli(args: list[str] | None = None, run: bool = True) -> MFLightningCLI:
    """The CLI over our model and data. With `run=False`, `args` hold no subcommand and the
    returned CLI carries the instantiated `model`, `datamodule` and `trainer` (for scripts)."""
    with warnings.catch_warnings():
        _ignore_known_warnings()
        return MFLightningCLI(
            RatingPredictor,
            RatingsDataModule,
            args=args,
            run=run,
            trainer_defaults=TRAINER_DEFAULTS,
            # The model takes its optimizer as an argument; no second, top-level `--optimizer`.
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "python -m lightning_mf", "description": DESCRIPTION},
        )


def main(argv: list[str] | None = None) -> int:
    """Runs one LightningCLI subcommand; `argv` starts with it (`fit`, `validate`, ...)."""
    # Given the process's own arguments, let LightningCLI read sys.argv itself (it warns otherwise).
    build_cli(None if argv is None or argv == sys.argv[1:] else argv)
    return 0


def _subcommand(name: str) -> Callable[[list[str] | None], int]:
    def run(argv: list[str] | None = None) -> int:
        return main([name, *(argv or [])])

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"`python -m lightning_mf {name} ...`"
    return run


fit, validate, test, predict = (_subcommand(name) for name in SUBCOMMANDS)
