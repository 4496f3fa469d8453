"""The study of `tune`: an Optuna study in SQLite, run until `--trials` or `--timeout`, resumable.

The study lives in the SQLite file `--study` names, so a `tune` that was interrupted (Ctrl-C, a
crash, a killed job) continues where it stopped when the same command runs again: `--trials N` is
the study's total, so the rerun runs only the trials still missing. A trial interrupted by Ctrl-C is
recorded as failed; one left running by a killed process is marked failed by Optuna's heartbeat
check once its heartbeat is older than `STALE_AFTER_S`; neither counts towards `--trials`.

Sampling is TPE (seeded; multivariate, with `group` for the conditional options of the space),
pruning (`pruners`) on the per-progress `val/rmse` that `TrialPruning` reports. After every trial the best config and the trials table are rewritten, so
even an interrupted study leaves them; the PNG is drawn when the run ends.
"""

from __future__ import annotations

import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from lightning_mf.errors import DataError
from lightning_mf.tuning.alternating import AlternatingSampler
from lightning_mf.tuning.best_config import write_best_config
from lightning_mf.tuning.objective import FAILED_NOTE, FitObjective, Objective, TrialFailed
from lightning_mf.tuning.plots import plot_search
from lightning_mf.tuning.pruners import OverfitPruner
from lightning_mf.tuning.reports import short_names, trial_note, write_tables
from lightning_mf.tuning.space import SearchSpace, load_space
from lightning_mf.tuning.workers import SEED_STRIDE, start_helpers, threads_per_job, wait_for_helpers

PrunerKind = Literal["overfit", "median", "halving", "none"]
LOOSE_PERCENTILE = 90.0  # `overfit` prunes a trial worse than this percentile of the others at a step
HEARTBEAT_S = 30
SQLITE_LOCK_WAIT_S = 60
STALE_AFTER_S = 120
# Stored with the study and checked when it is resumed: trials run with other inputs would not compare.
IDENTITY_KEYS = ("configs", "extra_args", "space", "objective")


@dataclass
class TuneOptions:
    """What `tune` runs; `python -m lightning_mf tune --help` documents each option.

    Args:
        configs: The user's `fit` config files, in order.
        extra_args: More `fit` arguments after the configs (`--data.data_dir PATH`, ...).
        out: The best config to write; the tables, PNG, study and runs go beside it.
        trials: Total finished trials the study should reach (None: until `timeout`).
        timeout: Seconds this run may take (None: until `trials`).
        study: SQLite file of the study; None: `<out stem>-study.db` beside `out`.
        study_name: Name of the study inside that file.
        space: Search space file; None: the built-in `lightning_mf/tuning/space.yaml`.
        seed: Seed of the TPE sampler.
        pruner: `overfit` (`pruners.OverfitPruner` over a loose PercentilePruner), `median`
            (Optuna's MedianPruner), `halving` (SuccessiveHalvingPruner) or `none`.
        objective: `last` or `best` epoch's `val/rmse` (see `FitObjective`).
        startup_trials: Trials sampled at random before TPE models the results (and before the
            median pruner prunes).
        jobs: Processes running trials at once (`workers`); 1: this process only.
        worker: 0 in the process the user started; K in the helper process K that one started.
    """

    configs: list[str]
    extra_args: list[str] = field(default_factory=list)
    out: Path = Path("best.yaml")
    trials: int | None = None
    timeout: float | None = None
    study: Path | None = None
    study_name: str = "tune"
    space: Path | None = None
    seed: int = 42
    pruner: PrunerKind = "overfit"
    objective: Objective = "last"
    startup_trials: int = 10
    jobs: int = 1
    worker: int = 0

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.trials is None and self.timeout is None:
            raise DataError("tune needs --trials N or --timeout SECONDS (or both): otherwise it would never stop")
        if self.trials is not None and self.trials < 1:
            raise DataError(f"--trials must be >= 1, found {self.trials}")
        if self.timeout is not None and self.timeout <= 0:
            raise DataError(f"--timeout must be > 0 seconds, found {self.timeout}")
        if self.jobs < 1:
            raise DataError(f"--jobs must be >= 1, found {self.jobs}")
        if self.startup_trials < 0:
            raise DataError(f"--startup_trials must be >= 0, found {self.startup_trials}")
        if self.pruner not in ("overfit", "median", "halving", "none"):
            raise DataError(f"--pruner must be overfit, median, halving or none, found {self.pruner!r}")
        if self.objective not in ("last", "best"):
            raise DataError(f"--objective must be last or best, found {self.objective!r}")
        if not self.study_name:
            raise DataError("--study_name must not be empty")
        if not self.configs:
            raise DataError("tune needs the configs of the fit to tune: --config FILE (repeatable)")
        for config in self.configs:
            if not Path(config).is_file():
                raise DataError(f"--config {config}: no such file")

    def beside_out(self, suffix: str) -> Path:
        """A file or folder next to `out`, named after it: `best.yaml` -> `best-<suffix>`."""
        return self.out.with_name(f"{self.out.stem}-{suffix}")

    @property
    def study_path(self) -> Path:
        return Path(self.study) if self.study is not None else self.beside_out("study.db")


@dataclass
class TuneResult:
    """What a `tune` run leaves: its study and the files written (best config None if no trial finished)."""

    study: optuna.Study
    best_config: Path | None
    tables: tuple[Path, Path]
    plot: Path


def make_pruner(kind: PrunerKind, startup_trials: int, objective: Objective) -> optuna.pruners.BasePruner:
    """The pruner, over the percent-of-fit steps `TrialPruning` reports (10, 20, ..., 100); `pruners`
    says why `overfit` is the default and the median rule is not."""
    # Not before 20% of a fit: the first validations, at full learning rate, rank trials poorly.
    options = {"n_startup_trials": min(startup_trials, 5), "n_warmup_steps": 20}
    if kind == "overfit":
        return OverfitPruner(optuna.pruners.PercentilePruner(LOOSE_PERCENTILE, **options), objective)
    if kind == "median":
        return optuna.pruners.MedianPruner(**options)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=10, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(options: TuneOptions, space: SearchSpace) -> optuna.Study:
    """Creates the study, or loads it to resume after checking it was run with the same inputs."""
    path = options.study_path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat
            storage = optuna.storages.RDBStorage(
                f"sqlite:///{path.resolve()}", heartbeat_interval=HEARTBEAT_S, grace_period=STALE_AFTER_S,
                # With --jobs, processes write the file in turn: wait for the lock rather than fail.
                engine_kwargs={"connect_args": {"timeout": SQLITE_LOCK_WAIT_S}},
            )
        resuming = options.study_name in optuna.get_all_study_names(storage)
    except SQLAlchemyError as error:
        reason = getattr(error, "orig", None) or error
        raise DataError(f"--study {path}: cannot open it as an Optuna SQLite study ({reason}); "
                        "give a new file name or an existing study file") from error
    trials_before = 0
    if resuming:
        trials_before = len(optuna.load_study(study_name=options.study_name, storage=storage).trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # `group`
        # Seeded by the trials so far, so a resumed study does not draw its first trials' values
        # again, and by the worker, so parallel processes do not draw the same values.
        # `constant_liar`: with --jobs, trials still running elsewhere count as bad results, so the
        # processes do not all sample the same promising spot.
        tpe = optuna.samplers.TPESampler(
            seed=options.seed + trials_before + SEED_STRIDE * options.worker, n_startup_trials=options.startup_trials,
            multivariate=True, group=True, constant_liar=True,
        )
        sampler = AlternatingSampler(tpe, space)
    study = optuna.create_study(
        storage=storage, study_name=options.study_name, direction="minimize", sampler=sampler,
        pruner=make_pruner(options.pruner, options.startup_trials, options.objective), load_if_exists=True,
    )  # fmt: skip
    identity: dict[str, Any] = {
        "configs": [str(c) for c in options.configs], "extra_args": list(options.extra_args),
        "space": space.describe(), "objective": options.objective,
    }  # fmt: skip
    if not resuming or not finished_trials(study):  # nothing to compare with yet: (re)start with these inputs
        for key in IDENTITY_KEYS:
            study.set_user_attr(key, identity[key])
        study.set_user_attr("space_file", space.source)
        return study
    for key in IDENTITY_KEYS:
        if study.user_attrs.get(key) == identity[key]:
            continue
        if key == "space":
            what = (f"another search space (then {study.user_attrs.get('space_file')}, now {space.source}, "
                    "or that file has changed)")
        else:
            what = f"other {key} (then {study.user_attrs.get(key)!r}, now {identity[key]!r})"
        raise DataError(
            f"--study {path}: the study {options.study_name!r} there was run with {what}; its trials would not "
            "compare with new ones. Resume it with the same arguments, or start another with --study FILE or "
            "--study_name NAME."
        )
    return study


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials `--trials` counts: complete, pruned, and failed in training. Not counted: trials
    interrupted by Ctrl-C or a killed process, or stopped by an error every trial would hit (each
    is recorded as failed, and a resumed study runs another in its place)."""
    return [trial for trial in study.get_trials(deepcopy=False)
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (trial.state == TrialState.FAIL and str(trial.user_attrs.get("note", "")).startswith(FAILED_NOTE))]


def progress_line(study: optuna.Study, trial: FrozenTrial, options: TuneOptions, elapsed: float,
                  names: dict[str, str]) -> str:
    """One line per finished trial: its number, where the study stands (finished trials of
    `--trials`, seconds of `--timeout`), its outcome, the best so far, its time and its values."""
    count = len(finished_trials(study))
    position = f"{count}/{options.trials}" if options.trials is not None else f"{count}"
    if options.timeout is not None:
        position += f", {elapsed:.0f}/{options.timeout:.0f} s"
    state = trial.state.name.lower()
    if trial.state == TrialState.COMPLETE:
        outcome = f"val/rmse {trial.value:.4f}"
    else:
        outcome = trial_note(trial)
    try:
        best = study.best_trial
        best_text = f"best {best.value:.4f} (trial {best.number})"
    except ValueError:
        best_text = "no complete trial yet"
    seconds = trial.user_attrs.get("seconds")
    timing = f"{seconds:.1f} s" if seconds is not None else ""
    values = " ".join(f"{names.get(key, key)}={_short(value)}" for key, value in trial.params.items())
    return f"trial {trial.number} [{position}] {state}: {outcome} | {best_text} | {timing} | {values}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_tune(options: TuneOptions, echo: Callable[[str], None] = print) -> TuneResult:
    """Runs (or resumes) the study and writes the best config, the trials table and the PNG.

    Args:
        options: What to tune and where to write.
        echo: Where progress lines go (one per trial).
    """
    space = load_space(options.space)
    started = time.monotonic()
    deadline = started + options.timeout if options.timeout is not None else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial says it all
    study = open_study(options, space)
    main_process = options.worker == 0
    names = short_names([p.key for p in space.params])
    done = len(finished_trials(study))
    remaining = None if options.trials is None else options.trials - done
    if done and main_process:
        echo(f"resuming study {options.study_name!r} in {options.study_path}: {done} finished trials")
    objective = FitObjective(options.configs, options.extra_args, space, options.beside_out("runs"),
                             options.objective, deadline, options.worker)
    tables = (options.beside_out("trials.csv"), options.beside_out("trials.md"))
    plot = options.beside_out("search.png")
    best_config: Path | None = None

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal best_config
        echo(progress_line(study, trial, options, time.monotonic() - started, names))
        if main_process:
            best_config = write_reports(study, options, space, tables)
        if options.trials is not None and len(finished_trials(study)) >= options.trials:
            study.stop()  # other processes' trials count too

    helpers: list[subprocess.Popen[bytes]] = []
    stop_helpers = True
    threads = torch.get_num_threads()
    try:
        if remaining is not None and remaining <= 0:
            if main_process:
                echo(f"the study already has {done} finished trials (--trials {options.trials}): nothing to run")
        else:
            if main_process and options.jobs > 1:
                torch.set_num_threads(threads_per_job(options.jobs))  # this process's share, for the study only
                helpers = start_helpers(options, deadline)
            study.optimize(objective, n_trials=remaining, timeout=options.timeout, catch=(TrialFailed,),
                           callbacks=[after_trial], gc_after_trial=True)
        stop_helpers = False
    finally:
        statuses = wait_for_helpers(helpers, stop=stop_helpers)
        torch.set_num_threads(threads)
        for worker, status in enumerate(statuses, start=1):
            if status != 0 and not stop_helpers:  # a stopped helper's status is ours, not news
                echo(f"helper process {worker} of --jobs {options.jobs} exited with status {status} (its message "
                     "is above); the trials it finished are in the study")
        if main_process:
            best_config = write_reports(study, options, space, tables)
            plot_search(study, plot, title=f"tune: study {options.study_name!r}, {options.study_path.name}")
    return TuneResult(study, best_config, tables, plot)


def write_reports(study: optuna.Study, options: TuneOptions, space: SearchSpace,
                  tables: tuple[Path, Path]) -> Path | None:
    """Rewrites the trials table and (once a trial completed) the best config; returns the config's path."""
    write_tables(study, *tables)
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    write_best_config(study, space, options.out, options.configs, options.extra_args, options.study_path,
                      options.objective)
    return options.out
