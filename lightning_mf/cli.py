"""`python -m lightning_mf fit|validate|test|predict`: the LightningCLI over the model and the data.

The parser is built from `RatingPredictor`'s and `RatingsDataModule`'s signatures, so their
`Args:` blocks are the `--help` and every argument is a config key. What the data determines
(`num_users`, `num_items`, the rating range, the global mean) is linked from the DataModule into
the model after the DataModule is built, never written in YAML.

Defaults added here (each overridable from a config or the command line):

- `checkpoint`: a ModelCheckpoint keeping the best `val/rmse` (mode min) and the last epoch, in the
  run's log folder under `checkpoints/` (`--trainer.enable_checkpointing false` leaves it out); a
  fit stopped mid-epoch leaves a `last.ckpt` that resumes at the next batch (`ResumableCheckpoint`);
- `lr_monitor`: a LearningRateMonitor;
- `preemption`: SIGUSR1 (SLURM's warning before preemption) checkpoints the run at the next batch
  end into its checkpoint folder, requeues a SLURM job and stops; a SLURM run's log folder is
  `version_slurm-<job id>`, and its requeued job resumes from that folder with no `--ckpt_path`;
- checkpoints are written atomically (`training.checkpoint_io.AtomicCheckpointIO`);
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
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from lightning_mf.data.datamodule import RatingsDataModule
from lightning_mf.inference.prediction_writer import ParquetPredictionWriter
from lightning_mf.training.checkpoint_io import AtomicCheckpointIO
from lightning_mf.training.module import RatingPredictor
from lightning_mf.training.preemption import PreemptionCheckpoint, checkpoint_folder, resume_checkpoint, slurm_job_id
from lightning_mf.training.stop_checkpoint import ResumableCheckpoint

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
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.set_defaults({f"checkpoint.{key}": value for key, value in CHECKPOINT_DEFAULTS.items()})
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")
        parser.add_lightning_class_args(ParquetPredictionWriter, "predictions")
        for name in LINKED_FROM_DATA:
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        # A SLURM job's run folder is named after the job, so its requeued run finds its checkpoints.
        job = slurm_job_id()
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        logger = config.get("trainer", {}).get("logger") if job is not None else None
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and "version" in init_args and init_args.version is None:
            init_args.version = f"slurm-{job}"

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[pl.Callback]) -> pl.Trainer:
        # `--trainer.enable_checkpointing false` turns our default ModelCheckpoint off too, instead
        # of Lightning's error about a checkpoint callback on a trainer without checkpointing.
        if config.get("enable_checkpointing") is False:
            callbacks = [callback for callback in callbacks if not isinstance(callback, ModelCheckpoint)]
        config["plugins"] = _with_default_plugins(config.get("plugins"))
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        """A requeued SLURM job resumes from its run folder's newest checkpoint, with no --ckpt_path."""
        arguments = self.config_init[self.subcommand]
        if arguments.get("ckpt_path") is not None or slurm_job_id() is None or self.trainer.logger is None:
            return
        found = resume_checkpoint(checkpoint_folder(self.trainer))
        if found is None:
            return
        rank_zero_info(f"SLURM job {slurm_job_id()} requeued: resuming from {found}")
        arguments["ckpt_path"] = str(found)
        for callback in self.trainer.callbacks:
            if isinstance(callback, SaveConfigCallback):
                callback.overwrite = True  # the same job's config, saved again into its own folder


    def after_fit(self) -> None:
        """Says where the best epoch's checkpoint is (what `test` should score after early stopping)."""
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "")
        score = getattr(callback, "best_model_score", None)
        if best and score is not None and getattr(callback, "monitor", None):
            rank_zero_info(f"best checkpoint ({callback.monitor} {float(score):.4f}): {best}; score it with "
                           f"`python -m lightning_mf test --config ... --ckpt_path {best}`")


def _with_default_plugins(plugins: Any) -> list[Any]:
    """The trainer's plugins plus ours where none of the kind is given: atomic checkpoint files and,
    under SLURM, its cluster environment without Lightning's requeue handler (`preemption` does it)."""
    given = [] if plugins is None else list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in given):
        given.append(AtomicCheckpointIO())
    if SLURMEnvironment.detect() and not any(isinstance(plugin, ClusterEnvironment) for plugin in given):
        given.append(SLURMEnvironment(auto_requeue=False))
    return given


def _ignore_known_warnings() -> None:
    """Silences, inside a `warnings.catch_warnings()` block, two Lightning warnings that do not
    apply here: our streams' lengths are exact with workers (see lightning_mf.data.stream), which
    Lightning cannot know, and the prediction writer needs no sampler indices."""
    warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader")


def build_cli(
    args: list[str] | None = None, run: bool = True, callbacks: list[pl.Callback] | None = None
) -> MFLightningCLI:
    """The CLI over our model and data.

    Args:
        args: Command-line arguments; None reads `sys.argv`.
        run: Run the subcommand `args` start with. With `run=False`, `args` hold no subcommand and
            the returned CLI carries the instantiated `model`, `datamodule` and `trainer` (for scripts).
        callbacks: Callback objects added to the trainer's, beside those the config names (`tune`
            passes each trial's pruning callback this way, so a trial is a plain `fit`).
    """
    trainer_defaults = dict(TRAINER_DEFAULTS)
    if callbacks:
        trainer_defaults["callbacks"] = list(callbacks)
    with warnings.catch_warnings():
        _ignore_known_warnings()
        return MFLightningCLI(
            RatingPredictor,
            RatingsDataModule,
            args=args,
            run=run,
            trainer_defaults=trainer_defaults,
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
