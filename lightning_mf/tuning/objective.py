"""The objective of `tune`: one trial is one `fit` through `build_cli`, scored on its `val/rmse`.

A trial writes its sampled settings (with the space's fixed ones) to `trial.yaml` in its own run
folder and runs `fit --config <user configs...> <user args...> --config trial.yaml` in this
process, exactly as `python -m lightning_mf fit` would, plus a few settings of its own: no
checkpoints (a study would write hundreds), no progress bar, TensorBoard logs under the study's
runs folder. Only `fit` runs: validation scores the trial, the test split is never read.

Ctrl-C during a trial stops the study (the trial is recorded as failed) and can be resumed.

Outcomes: the score (`val/rmse` after the last epoch, or the lowest of any epoch), a pruned trial
(`TrialPruning` stopped it: the pruner, a non-finite `val/rmse`, the time budget) or a diverged
one (the fit's divergence check stopped it, or non-finite weights after the fit, however it ended), a failed trial (the fit raised
after training started; the study goes on), or a `DataError` that stops the study (arguments the
CLI refuses, a fit that cannot start, data without a validation split): every trial would hit it.
"""

from __future__ import annotations

import json
import logging
import signal
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import optuna
import torch
import yaml

from lightning_mf.errors import DataError, TrainingDiverged
from lightning_mf.tuning.pruning import TrialPruning
from lightning_mf.tuning.space import SearchSpace

MONITOR = "val/rmse"
FAILED_NOTE = "failed: "  # the note of a trial whose fit raised; such trials count as run
TRIAL_CONFIG = "trial.yaml"
Objective = Literal["last", "best"]


class TrialFailed(Exception):
    """A trial's fit raised after training started: recorded as a failed trial, the study goes on."""


def trial_name(number: int) -> str:
    """A trial's run folder name: `trial-0007`."""
    return f"trial-{number:04d}"


def trial_args(runs_dir: Path, number: int) -> list[str]:
    """The settings every trial adds after the user's: its own TensorBoard run, no checkpoints, no bars."""
    logger = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(runs_dir), "name": trial_name(number)},
    }
    return [
        "--trainer.logger", json.dumps(logger),
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


@contextmanager
def quiet_fit() -> Iterator[None]:
    """Keeps a trial's console to warnings: Lightning's per-fit info lines would bury the progress lines."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # Trials pass `args` while sys.argv holds tune's own: that is intended here.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        # Lightning's own deprecation notice, emitted on every fit: once is enough for the study.
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
        try:
            for logger in loggers:
                logger.setLevel(logging.WARNING)
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


@dataclass
class FitObjective:
    """Runs a trial as a fit and returns its score (lower is better).

    Args:
        configs: The user's config files, in order (as `fit --config` takes them).
        extra_args: More `fit` arguments, placed after the configs and before the trial's settings
            (so they cannot override a searched option).
        space: What to sample.
        runs_dir: Each trial's folder `trial-NNNN/` (its `trial.yaml` and TensorBoard run) goes here.
        objective: `last`: `val/rmse` after the fit's last epoch (what a refit with the same epoch
            count, scored with its final weights, gets); `best`: the lowest over the epochs (for
            fits that keep the best checkpoint).
        deadline: `time.monotonic()` at which the study's time budget ends, or None.
        worker: The process running the trial (`tune --jobs`: 0 the main one), kept with the trial.
    """

    configs: list[str]
    extra_args: list[str]
    space: SearchSpace
    runs_dir: Path
    objective: Objective = "last"
    deadline: float | None = None
    worker: int = 0

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", self.worker)
        values = self.space.sample(trial)
        folder = self.runs_dir / trial_name(trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / TRIAL_CONFIG
        config.write_text(yaml.safe_dump(self.space.trial_settings(values), sort_keys=False))
        pruning = TrialPruning(trial, monitor=MONITOR, deadline=self.deadline)
        started = time.perf_counter()
        try:
            finite_weights = self._fit(trial.number, config, pruning)
        except KeyboardInterrupt:
            trial.set_user_attr("note", "interrupted")
            raise
        except DataError as error:
            trial.set_user_attr("note", f"stopped the study: {error}")
            raise
        except TrialFailed as error:
            trial.set_user_attr("note", f"{FAILED_NOTE}{error}")
            raise
        except optuna.TrialPruned as pruned:
            trial.set_user_attr("note", str(pruned))
            raise
        finally:
            trial.set_user_attr("curve", pruning.curve)
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        return self._score(trial, pruning, finite_weights)

    def _fit(self, number: int, config: Path, pruning: TrialPruning) -> bool:
        """Runs the trial's fit; returns whether the trained weights are all finite."""
        args = ["fit"]
        for path in self.configs:
            args += ["--config", str(path)]
        args += [*self.extra_args, "--config", str(config), *trial_args(self.runs_dir, number)]
        from lightning_mf.cli import build_cli  # imports Lightning's CLI machinery: only when a trial runs

        try:
            with quiet_fit():
                cli = build_cli(args, callbacks=[pruning])
        except SystemExit as exit:
            if pruning.interrupted:
                # Lightning answers Ctrl-C in a fit with sys.exit(1), leaving SIGINT ignored: give
                # it back, and stop the study as Ctrl-C would (Optuna records the trial as failed).
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt from None
            # jsonargparse has printed why.
            raise DataError(
                f"trial {number}: fit refused its arguments (exit status {exit.code}; its message is above). "
                f"The arguments: {' '.join(args)}"
            ) from None
        except DataError:
            raise
        except TrainingDiverged as error:
            # The fit's own divergence check stopped it: a pruned trial, like a non-finite val/rmse.
            raise optuna.TrialPruned(f"diverged: {error}") from None
        except Exception as error:
            if not pruning.training_started:
                raise DataError(f"trial {number}: the fit could not start with {config} after the given configs: "
                                f"{type(error).__name__}: {error}") from error
            raise TrialFailed(f"{type(error).__name__}: {error}") from error
        return all(bool(torch.isfinite(parameter).all()) for parameter in cli.model.parameters())

    def _score(self, trial: optuna.Trial, pruning: TrialPruning, finite_weights: bool) -> float:
        reason = pruning.reason
        if not finite_weights and not pruning.diverged:
            reason = f"diverged: non-finite weights after the fit ({pruning.reason or 'it ran to its end'})"
        if reason is not None:
            trial.set_user_attr("note", reason)
            raise optuna.TrialPruned(reason)
        finite = [value for value in pruning.curve if value is not None]
        if not pruning.curve:
            raise DataError(
                f"trial {trial.number}: the fit logged no {MONITOR}; tune needs validation to run every epoch "
                "(check trainer.limit_val_batches and trainer.check_val_every_n_epoch in the configs)"
            )
        if pruning.curve[-1] is None:  # not finite, yet the fit went on (a callback of the user's?)
            trial.set_user_attr("note", f"diverged: {MONITOR} not finite at the end")
            raise optuna.TrialPruned(f"{MONITOR} is not finite at the end of the fit")
        return pruning.curve[-1] if self.objective == "last" else min(finite)
