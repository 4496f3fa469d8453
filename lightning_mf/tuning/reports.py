"""The trials table of a `tune` study, as CSV (every trial, by number) and Markdown (best first).

Columns: the trial's number and state, its score (`value`: the objective, complete trials only),
the last finite `val/rmse` it logged (where a pruned trial stood when it was stopped), the epochs
it ran, its seconds, why it was pruned or failed, and its searched values (full option names in
the CSV, the last part of each name in the Markdown).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

STATE_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2, TrialState.RUNNING: 3,
               TrialState.WAITING: 4}


def run_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials that started (a queued trial still waiting has nothing to report)."""
    return [trial for trial in study.get_trials(deepcopy=False) if trial.state != TrialState.WAITING]


def short_names(keys: list[str]) -> dict[str, str]:
    """Each dotted option by its last part (`model.optimizer.init_args.lr` -> `lr`), unless two share it."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    counts = Counter(last)
    return {key: name if counts[name] == 1 else key for key, name in zip(keys, last, strict=True)}


def trial_note(trial: FrozenTrial) -> str:
    """Why a trial did not complete (its recorded note), or its state."""
    return str(trial.user_attrs.get("note") or trial.state.name.lower())


def last_val(trial: FrozenTrial) -> float | None:
    """The last finite `val/rmse` the trial logged."""
    finite = [value for value in trial.user_attrs.get("curve") or [] if value is not None]
    return finite[-1] if finite else None


def trial_rows(study: optuna.Study) -> tuple[list[str], list[dict[str, Any]]]:
    """The searched option names (in first-seen order) and one row per trial, by number."""
    trials = run_trials(study)
    keys: list[str] = []
    for trial in trials:
        keys += [key for key in trial.params if key not in keys]
    rows = []
    for trial in trials:
        duration = trial.user_attrs.get("seconds")
        rows.append({
            "trial": trial.number,
            "state": trial.state.name.lower(),
            "value": trial.value if trial.state == TrialState.COMPLETE else None,
            "last_val_rmse": last_val(trial),
            "epochs": len(trial.user_attrs.get("curve") or []),
            "seconds": duration,
            "note": "" if trial.state == TrialState.COMPLETE else trial_note(trial),
            **{key: trial.params.get(key) for key in keys},
        })
    return keys, rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 0.01 else f"{value:.3g}"
    return str(value)


def write_tables(study: optuna.Study, csv_path: Path, markdown_path: Path) -> None:
    """Writes the study's trials to `csv_path` (by number) and `markdown_path` (best first)."""
    keys, rows = trial_rows(study)
    fixed = ["trial", "state", "value", "last_val_rmse", "epochs", "seconds", "note"]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*fixed, *keys])
        writer.writeheader()
        writer.writerows(rows)
    names = short_names(keys)
    states = {t.number: t.state for t in run_trials(study)}
    ordered = sorted(rows, key=lambda row: (STATE_ORDER.get(states[row["trial"]], 9),
                                            row["value"] if row["value"] is not None else float("inf"),
                                            row["trial"]))
    header = ["trial", "state", "val/rmse", "epochs", "s", *[names[key] for key in keys], "note"]
    lines = [f"Study {study.study_name!r}: {len(rows)} trials, best first.", "",
             "| " + " | ".join(header) + " |", "|" + "---:|" * 5 + "---:|" * len(keys) + "---|"]
    for row in ordered:
        score = row["value"] if row["value"] is not None else row["last_val_rmse"]
        seconds = None if row["seconds"] is None else f"{row['seconds']:.1f}"
        cells = [row["trial"], row["state"], score, row["epochs"], seconds, *[row[key] for key in keys],
                 row["note"]]
        lines.append("| " + " | ".join(_cell(cell).replace("|", "/") for cell in cells) + " |")
    markdown_path.write_text("\n".join(lines) + "\n")
