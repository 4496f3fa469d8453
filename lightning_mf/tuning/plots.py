"""The PNG of a `tune` study: each trial's score with the best so far, and every trial's learning curve.

Left: `val/rmse` per trial in run order (complete trials as dots, pruned ones as crosses at the
value they were stopped at) and the best value so far as a step line. Right: the values reported to
the pruner against the percent of each trial's fit (the steps `TrialPruning` reports), so trials
of different lengths line up; the best trial is drawn bold. The y axis leaves out the worst tenth
of the values (diverging trials would flatten the rest) and says how many it left out.

Drawn on `matplotlib.figure.Figure` (Agg), like the experiment reports: no pyplot state, no display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from lightning_mf.tuning.reports import last_val, run_trials

SIZE = (12.0, 4.6)  # inches
DPI = 100
KEEP_QUANTILE = 0.9  # the y axes show values up to this quantile of all plotted values


def _score(trial: FrozenTrial) -> float | None:
    return trial.value if trial.state == TrialState.COMPLETE else last_val(trial)


def _limits(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    low, top = min(values), float(np.quantile(values, KEEP_QUANTILE)) if len(values) >= 5 else max(values)
    pad = max(top - low, 1e-3) * 0.08
    return low - pad, top + pad


def _history(ax: Axes, trials: list[FrozenTrial]) -> list[float]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [(t.number, v) for t in trials if t.state == TrialState.PRUNED and (v := last_val(t)) is not None]
    if complete:
        ax.plot([t.number for t in complete], [t.value for t in complete], "o", color="tab:blue",
                label=f"complete ({len(complete)})")
        best, xs, ys = float("inf"), [], []
        for trial in sorted(complete, key=lambda t: t.number):
            best = min(best, trial.value)
            xs.append(trial.number)
            ys.append(best)
        xs.append(max(t.number for t in trials))
        ys.append(best)
        ax.step(xs, ys, where="post", color="tab:green", label=f"best so far ({best:.4f})")
    if pruned:
        ax.plot(*zip(*pruned, strict=True), "x", color="tab:orange", label=f"pruned, where stopped ({len(pruned)})")
    unplotted = sum(t.state == TrialState.PRUNED and last_val(t) is None for t in trials)
    if unplotted:
        ax.plot([], [], " ", label=f"pruned before a finite value: {unplotted}")
    failed = sum(t.state == TrialState.FAIL for t in trials)
    if failed:
        ax.plot([], [], " ", label=f"failed: {failed}")
    ax.set_xlabel("trial")
    ax.set_ylabel("val/rmse")
    ax.grid(True, alpha=0.3)
    return [t.value for t in complete] + [v for _, v in pruned]


def _curves(ax: Axes, trials: list[FrozenTrial], best: FrozenTrial | None) -> list[float]:
    values: list[float] = []
    for trial in trials:
        if not trial.intermediate_values or trial is best:
            continue
        steps = sorted(trial.intermediate_values)
        ys = [trial.intermediate_values[s] for s in steps]
        values += ys
        color = "tab:blue" if trial.state == TrialState.COMPLETE else "0.6"
        ax.plot(steps, ys, color=color, alpha=0.5, linewidth=0.9)
    if best is not None and best.intermediate_values:
        steps = sorted(best.intermediate_values)
        ys = [best.intermediate_values[s] for s in steps]
        values += ys
        ax.plot(steps, ys, color="tab:green", linewidth=2.4, label=f"best: trial {best.number}")
    ax.plot([], [], color="tab:blue", label="complete")
    ax.plot([], [], color="0.6", label="pruned")
    ax.set_xlabel("percent of the trial's fit done")
    ax.set_ylabel("val/rmse")
    ax.set_xlim(0, 102)
    ax.grid(True, alpha=0.3)
    return values


def _clip(ax: Axes, values: list[float]) -> None:
    limits = _limits(values)
    if limits is None:
        return
    ax.set_ylim(*limits)
    hidden = sum(v > limits[1] for v in values)
    if hidden:
        ax.text(0.01, 0.98, f"{hidden} value(s) above the axis", transform=ax.transAxes, va="top", fontsize=8)


def plot_search(study: optuna.Study, path: Path, title: str = "") -> None:
    """Draws the study's search (see the module docstring) into the PNG `path`."""
    trials = run_trials(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    figure = Figure(figsize=SIZE, dpi=DPI)
    left, right = figure.subplots(1, 2)
    if trials:
        _clip(left, _history(left, trials))
        left.legend(loc="upper right", fontsize=8)
        _clip(right, _curves(right, trials, best))
        right.legend(loc="upper right", fontsize=8)
    else:
        left.text(0.5, 0.5, "no trials yet", ha="center", transform=left.transAxes)
    left.set_title("val/rmse per trial", fontsize=10)
    right.set_title("learning curves (values seen by the pruner)", fontsize=10)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
