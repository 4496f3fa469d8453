"""A folder of experiment configs, run in order (`python -m lightning_mf experiments run|list DIR`).

A series folder holds one small YAML file per experiment, run in file-name order (number them:
`01-baseline.yaml`, `02-...`), and optionally a shared `base.yaml` that is not a run itself. Each
file starts with a comment header the runner reads:

    # description: One line saying what this run changes (shown by `list` and in the report).
    # extends: 01-baseline.yaml

`extends` names the configs composed before this one (paths relative to the file, several
allowed, each expanded recursively by its own header; a file that appears twice is kept once, at
its first place). Run N of a series is therefore `fit --config <chain...> --config N.yaml`:
`experiments list DIR` prints each chain as the exact `fit` command.

Each experiment runs as its own `python -m lightning_mf fit` subprocess, so a crash cannot take
the runner down, and logs to its own TensorBoard run. Under `--runs_dir` (default
`runs/<series folder name>`):

    <experiment>/experiment.json   what runs: description, configs, command; written before fit
    <experiment>/fit.log           the fit's stdout and stderr
    <experiment>/version_0/        TensorBoard events, config.yaml, hparams.yaml, checkpoints
    <experiment>/finished.json     the completion marker, written only after fit exits with 0

Finished experiments are skipped unless `--rerun`; an unfinished one (never run, failed or
interrupted) is cleared and run again. The first failure stops the series with a message naming
its config and log; earlier results stay as they are. Arguments after `--` are appended to every
fit, after the configs, so they override them (data paths, `--trainer.max_epochs 3`, ...).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_mf.errors import DataError

BASE_FILE = "base.yaml"
EXPERIMENT_FILE = "experiment.json"
FINISHED_FILE = "finished.json"
LOG_FILE = "fit.log"
VERSION = 0  # every experiment logs to <runs_dir>/<experiment>/version_0
LOG_TAIL_LINES = 25  # lines of a failed fit's log repeated in the error message
HEADER_KEYS = ("description", "extends")

# Settings the runner passes before the user's extra arguments (which may override them): a log
# file is no place for a progress bar.
RUNNER_FIT_ARGS = ("--trainer.enable_progress_bar", "false")


class ExperimentFailed(RuntimeError):
    """An experiment's fit exited with an error; the message names its config and log."""


@dataclass(frozen=True)
class Experiment:
    """One run of a series.

    Attributes:
        name: The config file's stem, also the TensorBoard run name.
        path: The experiment's config file.
        description: The one-line `# description:` of its header.
        configs: Every config composed for the run, in `--config` order, ending with `path`.
    """

    name: str
    path: Path
    description: str
    configs: tuple[Path, ...]

    def fit_command(self, runs_dir: Path, extra: Sequence[str] = ()) -> list[str]:
        """The `fit` arguments (after `python -m lightning_mf`) that run this experiment."""
        args = ["fit"]
        for config in self.configs:
            args += ["--config", str(config)]
        args += [
            "--trainer.logger.init_args.save_dir", str(runs_dir),
            "--trainer.logger.init_args.name", self.name,
            "--trainer.logger.init_args.version", str(VERSION),
            *RUNNER_FIT_ARGS,
        ]
        return [*args, *extra]


def read_header(path: Path) -> dict[str, str]:
    """The `# key: value` lines (keys in `HEADER_KEYS`) of the comment block a config starts with."""
    header: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise DataError(f"cannot read experiment config {path}: {error}") from error
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        key, sep, value = stripped.lstrip("#").strip().partition(":")
        if sep and key.strip() in HEADER_KEYS:
            header[key.strip()] = value.strip()
    return header


def config_chain(path: Path, _visiting: tuple[Path, ...] = ()) -> list[Path]:
    """`path`'s `extends` parents, expanded recursively, then `path`; each file kept once."""
    if path in _visiting:
        cycle = " -> ".join(str(p) for p in (*_visiting, path))
        raise DataError(f"`# extends:` headers form a cycle: {cycle}")
    if not path.is_file():
        where = f" (named by `# extends:` in {_visiting[-1]})" if _visiting else ""
        raise DataError(f"experiment config {path} does not exist{where}")
    chain: list[Path] = []
    for parent in read_header(path).get("extends", "").split():
        for config in config_chain(Path(os.path.normpath(path.parent / parent)), (*_visiting, path)):
            if config not in chain:
                chain.append(config)
    if path not in chain:
        chain.append(path)
    return chain


def load_series(folder: str | Path) -> list[Experiment]:
    """The experiments of a series folder: every `*.yaml` but `base.yaml`, in file-name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"experiment folder {folder} does not exist or is not a folder")
    paths = sorted(p for p in folder.glob("*.yaml") if p.name != BASE_FILE)
    if not paths:
        raise DataError(f"{folder} holds no experiment configs: expected files like 01-baseline.yaml")
    experiments = []
    for path in paths:
        description = read_header(path).get("description", "")
        if not description:
            raise DataError(
                f"{path}: the first comment lines must include `# description: <one line>`, found none"
            )
        experiments.append(Experiment(path.stem, path, description, tuple(config_chain(path))))
    return experiments


def select(experiments: list[Experiment], only: Sequence[str] | None) -> list[Experiment]:
    """The experiments named in `only` (names or file names), in series order; all when None."""
    if not only:
        return experiments
    names = {e.name for e in experiments}
    wanted = {Path(name).stem for name in only}
    unknown = sorted(wanted - names)
    if unknown:
        raise DataError(
            f"--only names {', '.join(unknown)}, not in this series; expected some of: {', '.join(sorted(names))}"
        )
    return [e for e in experiments if e.name in wanted]


def default_runs_dir(folder: str | Path) -> Path:
    return Path("runs") / Path(folder).resolve().name


def shell_command(args: Sequence[str]) -> str:
    """`args` as a `python -m lightning_mf ...` line to paste into a shell."""
    return shlex.join(["python", "-m", "lightning_mf", *args])


def is_finished(run_dir: Path) -> bool:
    return (run_dir / FINISHED_FILE).is_file()


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Writes atomically, so a marker is either whole or absent."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(partial, path)


def _clear(run_dir: Path) -> None:
    """Removes an experiment's earlier output, refusing folders the runner did not make."""
    if not run_dir.exists():
        return
    if any(run_dir.iterdir()) and not (run_dir / EXPERIMENT_FILE).is_file():
        raise DataError(
            f"{run_dir} exists but was not made by `experiments run` (no {EXPERIMENT_FILE}); "
            "move it away or choose another --runs_dir"
        )
    shutil.rmtree(run_dir)


def _log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def run_experiment(
    experiment: Experiment, runs_dir: Path, extra: Sequence[str] = (), python: str = sys.executable
) -> float:
    """Runs one experiment's fit in a subprocess, writing its run folder; returns the seconds taken.

    Args:
        experiment: What to run.
        runs_dir: The series' runs folder; the run folder `<runs_dir>/<name>` is replaced.
        extra: Arguments appended to the `fit` command.
        python: The interpreter that runs `-m lightning_mf fit`.

    Raises:
        ExperimentFailed: The fit exited with an error; no completion marker is written.
    """
    run_dir = runs_dir / experiment.name
    _clear(run_dir)
    run_dir.mkdir(parents=True)
    args = experiment.fit_command(runs_dir, extra)
    _write_json(run_dir / EXPERIMENT_FILE, {
        "experiment": experiment.name,
        "description": experiment.description,
        "configs": [str(p) for p in experiment.configs],
        "extra_args": list(extra),
        "command": args,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    log = run_dir / LOG_FILE
    start = time.monotonic()
    with open(log, "w") as out:
        out.write(shell_command(args) + "\n\n")
        out.flush()
        status = subprocess.run([python, "-m", "lightning_mf", *args], stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - start
    if status != 0:
        raise ExperimentFailed(
            f"experiment {experiment.name} failed (exit status {status}) after {seconds:.0f} s\n"
            f"  config: {experiment.path}\n  log:    {log}\n  last lines of the log:\n{_log_tail(log)}"
        )
    _write_json(run_dir / FINISHED_FILE, {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(seconds, 1), "command": args,
    })
    return seconds


def run_series(
    folder: str | Path,
    runs_dir: str | Path | None = None,
    rerun: bool = False,
    only: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    python: str = sys.executable,
    echo: Callable[[str], None] = print,
) -> list[str]:
    """Runs a series folder's experiments in order; returns the names of those that ran.

    Args:
        folder: The series folder (see the module docstring).
        runs_dir: Where the experiments' run folders go; unset: `runs/<folder name>`.
        rerun: Run finished experiments again (their run folders are replaced).
        only: Run just these experiments (names such as `01-baseline`).
        extra: Arguments appended to every `fit` command.
        python: The interpreter that runs `-m lightning_mf fit`.
        echo: Where progress lines go.

    Raises:
        ExperimentFailed: An experiment failed; the ones before it keep their results.
    """
    experiments = select(load_series(folder), only)
    runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir(folder)
    runs_dir.mkdir(parents=True, exist_ok=True)
    ran = []
    for number, experiment in enumerate(experiments, start=1):
        prefix = f"[{number}/{len(experiments)}] {experiment.name}"
        run_dir = runs_dir / experiment.name
        if is_finished(run_dir) and not rerun:
            note = _changed_note(experiment, runs_dir, extra)
            echo(f"{prefix}: finished earlier, skipped (--rerun runs it again){note}")
            continue
        echo(f"{prefix}: {experiment.description}\n    log: {run_dir / LOG_FILE}")
        seconds = run_experiment(experiment, runs_dir, extra, python)
        echo(f"    done in {seconds:.0f} s")
        ran.append(experiment.name)
    echo(f"series {Path(folder)} complete: runs in {runs_dir} (report: python -m lightning_mf report {runs_dir})")
    return ran


def _changed_note(experiment: Experiment, runs_dir: Path, extra: Sequence[str]) -> str:
    try:
        earlier = json.loads((runs_dir / experiment.name / FINISHED_FILE).read_text()).get("command")
    except (OSError, ValueError):
        return ""
    if earlier == experiment.fit_command(runs_dir, extra):
        return ""
    return "\n    note: it finished with other arguments: " + shell_command(earlier or [])


def describe_series(folder: str | Path, runs_dir: str | Path | None = None, extra: Sequence[str] = ()) -> str:
    """The plan of a series: each experiment, its status and its exact `fit` command."""
    runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir(folder)
    lines = []
    for experiment in load_series(folder):
        status = "finished" if is_finished(runs_dir / experiment.name) else "to run"
        lines += [
            f"{experiment.name} [{status}]: {experiment.description}",
            f"    {shell_command(experiment.fit_command(runs_dir, extra))}",
        ]
    return "\n".join(lines)
