"""The best config of a `tune` study: the best trial's settings as a YAML file that composes.

It holds only what the study set, the space's fixed settings and the best trial's searched values,
so it goes after the configs it was tuned with and changes nothing else:

    python -m lightning_mf fit --config <the same configs> --config best.yaml

A header comment says which study, trial and value produced it, and the command to use it. The
values are the trial's own `trial.yaml` settings, rebuilt from what the study recorded.
"""

from __future__ import annotations

import shlex
from datetime import datetime, timezone
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

import lightning_mf
from lightning_mf.tuning.reports import run_trials
from lightning_mf.tuning.space import DEFAULT_SPACE, SearchSpace


def _counts(study: optuna.Study) -> str:
    trials = run_trials(study)
    labels = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    parts = [f"{sum(t.state == state for t in trials)} {label}" for state, label in labels.items()]
    return f"{len(trials)} trials ({', '.join(parts)})"


def _space_name(space: SearchSpace) -> str:
    if Path(space.source) == DEFAULT_SPACE:
        return "the built-in space (lightning_mf/tuning/space.yaml)"
    return space.source


def best_config_text(study: optuna.Study, space: SearchSpace, configs: list[str], extra_args: list[str],
                     study_path: Path, objective: str, out: Path) -> str:
    """The best config file's text: the header comment, then the settings."""
    best = study.best_trial
    args: list[str] = []
    for config in configs:
        args += ["--config", str(config)]
    fit_args = shlex.join([*args, *extra_args])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    which = "after the last epoch" if objective == "last" else "at the best epoch"
    header = [
        f"Best settings of the study {study.study_name!r} in {study_path} (written {when} by lightning_mf "
        f"{lightning_mf.__version__} `tune`):",
        f"trial {best.number} of {_counts(study)}, val/rmse {best.value:.4f} {which},",
        f"searched in {_space_name(space)}, on the validation split of: {fit_args}",
        "Only the tuned settings (the space's fixed ones and the searched values); use it after those configs:",
        f"  python -m lightning_mf fit {fit_args} --config {shlex.quote(str(out))}",
    ]
    settings = yaml.safe_dump(space.trial_settings(dict(best.params)), sort_keys=False)
    return "".join(f"# {line}\n" for line in header) + settings


def write_best_config(study: optuna.Study, space: SearchSpace, out: Path, configs: list[str],
                      extra_args: list[str], study_path: Path, objective: str) -> None:
    """Writes the best complete trial's config to `out` (through a temporary file, so a reader never
    sees half of it).

    Args:
        study: A study with at least one complete trial.
        space: The search space (its fixed settings go into the file).
        out: The file to write.
        configs: The configs the study tuned on (named in the header).
        extra_args: The extra fit arguments it tuned with (named in the header).
        study_path: The study's SQLite file (named in the header).
        objective: `last` or `best`, how a trial's `val/rmse` was taken.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(best_config_text(study, space, configs, extra_args, study_path, objective, out))
    partial.replace(out)
