"""`python -m lightning_mf report RUNS_DIR [--out DIR]`: an experiment log from TensorBoard runs.

Reads every run `RUNS_DIR/<name>/version_<n>` (the latest version of each; what `experiments run`
writes) from its TensorBoard event files and writes into `--out` (default: RUNS_DIR):

- `report.md`: a table with one row per run: experiment, description, final train loss, final
  and best val loss, final val RMSE, epochs, and an observation derived from the curves;
- `<name>.png`: the run's train and val loss against epoch;
- `val_loss_all.png`: every run's val loss in one picture.

Losses are the logged `train/loss` and `val/loss` (both MSE); epochs are counted from 1. The
description is the one `experiments run` recorded in `<name>/experiment.json` (empty otherwise).

The observation compares the last epoch's train loss T and val loss V, the run's lowest val loss
Vbest, and R, the lowest val loss any run of the report reached. A curve has *plateaued* when it
moved over its last PLATEAU_EPOCHS epochs by at most PLATEAU_SHARE of its whole range (its own
progress so far) or at most FLAT of its value (flat from the start, noise only).

- high variance: V >= (1 + GAP) * T (val sits far above train) and V >= (1 + RISE) * Vbest (val
  has risen from its best);
- underfitting: V < (1 + GAP) * T, train and val have both plateaued (together), and
  V >= (1 + HIGH) * R (high: well above the best the series reached; so a single run is never
  called underfitting);
- still improving: val loss has not plateaued and is falling;
- converged otherwise (with the val/train ratio when V >= (1 + GAP) * T, and a note when val
  ended above its best).

A run with fewer than two epochs is too short to judge. The thresholds are the constants below and
are printed in every report.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jsonargparse import ArgumentParser

from lightning_mf.errors import DataError
from lightning_mf.experiments.tb_events import Curve, find_runs, read_curves

GAP = 0.25
RISE = 0.02
PLATEAU_EPOCHS = 3
PLATEAU_SHARE = 0.10
FLAT = 0.005
HIGH = 0.20

TRAIN_LOSS, VAL_LOSS, VAL_RMSE = "train/loss", "val/loss", "val/rmse"
REPORT_FILE = "report.md"
OVERLAY_FILE = "val_loss_all.png"
EXPERIMENT_FILE, FINISHED_FILE = "experiment.json", "finished.json"  # written by `experiments run`
COLUMNS = ("experiment", "description", "final train loss", "final val loss", "best val loss (epoch)",
           "final val RMSE", "epochs", "observation")


@dataclass
class RunSummary:
    """What the report says about one run.

    Attributes:
        name: The run's folder name.
        log_dir: Its TensorBoard log folder.
        description: From `experiment.json`, or empty.
        unfinished: `experiments run` started it but never marked it finished.
        curves: Per-epoch `train/loss`, `val/loss` and `val/rmse` (those logged).
        observation: Set by `observe`.
    """

    name: str
    log_dir: Path
    description: str
    unfinished: bool
    curves: dict[str, Curve]
    observation: str = ""

    @property
    def train(self) -> Curve | None:
        return self.curves.get(TRAIN_LOSS)

    @property
    def val(self) -> Curve | None:
        return self.curves.get(VAL_LOSS)

    @property
    def epochs(self) -> int:
        return max((len(c) for c in self.curves.values()), default=0)


def load_run(name: str, log_dir: Path) -> RunSummary:
    """Reads a run's curves from its event files and its description from `experiment.json`."""
    run_dir = log_dir.parent
    description, unfinished = "", False
    if (run_dir / EXPERIMENT_FILE).is_file():
        try:
            description = json.loads((run_dir / EXPERIMENT_FILE).read_text()).get("description", "")
        except ValueError as error:
            raise DataError(f"{run_dir / EXPERIMENT_FILE} is not valid JSON: {error}") from error
        unfinished = not (run_dir / FINISHED_FILE).is_file()
    curves = read_curves(log_dir, (TRAIN_LOSS, VAL_LOSS, VAL_RMSE))
    return RunSummary(name, log_dir, description, unfinished, curves)


def _change(curve: Curve) -> float:
    """Change of the last value against the value PLATEAU_EPOCHS epochs earlier."""
    return float(curve.value[-1] - curve.value[-1 - min(PLATEAU_EPOCHS, len(curve) - 1)])


def plateaued(curve: Curve) -> bool:
    """Whether the curve's recent change is small against its own range or its value (see above)."""
    before = float(curve.value[-1 - min(PLATEAU_EPOCHS, len(curve) - 1)])
    spread = float(curve.value.max() - curve.value.min())
    return abs(_change(curve)) <= max(PLATEAU_SHARE * spread, FLAT * abs(before))


def observe(train: Curve | None, val: Curve | None, reference: float | None) -> str:
    """The observation for one run (see the module docstring); `reference` is R, the report's lowest val loss."""
    if train is None or val is None or min(len(train), len(val)) == 0:
        return "no epoch finished"
    if min(len(train), len(val)) < 2:
        return "too short to judge (1 epoch)"
    t, v = float(train.value[-1]), float(val.value[-1])
    best = int(np.argmin(val.value))
    v_best = float(val.value[best])
    ratio, rise = v / t if t > 0 else float("inf"), v / v_best - 1 if v_best > 0 else 0.0
    span = min(PLATEAU_EPOCHS, len(val) - 1)
    rose = f"val loss {rise:.0%} above its best (epoch {best + 1})"
    if ratio >= 1 + GAP and rise >= RISE:
        return f"high variance: val loss {ratio:.2f}x train loss and rising, {rose}"
    if ratio < 1 + GAP and plateaued(train) and plateaued(val) and reference and v >= (1 + HIGH) * reference:
        return (f"underfitting: train and val loss plateau together, "
                f"val {v / reference - 1:.0%} above the best run's {reference:.4f}")
    if not plateaued(val) and _change(val) < 0:
        text = f"still improving: val loss fell {-_change(val) / (v - _change(val)):.1%} over the last {span} epochs"
    else:
        text = "converged"
    if ratio >= 1 + GAP:
        text += f"; val loss {ratio:.2f}x train loss"
    if rise >= RISE:
        text += f"; {rose}"
    return text


def _last(curve: Curve | None) -> float | None:
    return float(curve.value[-1]) if curve is not None and len(curve) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_row(run: RunSummary) -> list[str]:
    """The run's table cells, in `COLUMNS` order; numbers with 4 decimals."""
    train, val, rmse = run.train, run.val, run.curves.get(VAL_RMSE)
    best = "n/a"
    if val is not None and len(val):
        position = int(np.argmin(val.value))
        best = f"{val.value[position]:.4f} ({val.epoch[position] + 1})"
    observation = ("unfinished run; " if run.unfinished else "") + run.observation
    return [run.name, run.description, _fmt(_last(train)), _fmt(_last(val)), best, _fmt(_last(rmse)),
            str(run.epochs), observation]


def markdown_table(runs: list[RunSummary]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in table_row(run)) + " |" for run in runs]
    return "\n".join(lines)


def thresholds_text() -> str:
    return (
        f"Observations compare the last epoch's train loss T and val loss V, the run's best val loss "
        f"Vbest and R, the lowest val loss of any run here. A curve has *plateaued* when it moved over "
        f"its last {PLATEAU_EPOCHS} epochs by at most {PLATEAU_SHARE:.0%} of its whole range or "
        f"{FLAT:.1%} of its value. **High variance**: V >= {1 + GAP:g} T and V >= {1 + RISE:g} Vbest "
        f"(val far above train and rising). **Underfitting**: V < {1 + GAP:g} T, train and val both "
        f"plateaued, and V >= {1 + HIGH:g} R (high). **Still improving**: val has not plateaued and "
        f"is falling. **Converged** otherwise. Losses are MSE (`train/loss` is the epoch's mean "
        f"training MSE, dropout active; `val/loss` the validation MSE); epochs count from 1; RMSE is "
        f"`val/rmse` of the last epoch."
    )


def write_report(runs_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Writes `report.md`, one PNG per run and the val-loss overlay into `out`; returns the report's path.

    Args:
        runs_dir: Folder of TensorBoard runs, `<runs_dir>/<name>/version_<n>`.
        out: Where to write; unset: `runs_dir`.
        title: The report's heading; unset: `Experiments: <runs_dir name>`.
    """
    from lightning_mf.experiments.plots import plot_run, plot_val_overlay  # matplotlib: only when writing

    runs_dir = Path(runs_dir)
    out = Path(out) if out is not None else runs_dir
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(name, log_dir) for name, log_dir in find_runs(runs_dir)]
    lows = [float(run.val.value.min()) for run in runs if run.val is not None and len(run.val)]
    reference = min(lows) if lows else None
    for run in runs:
        run.observation = observe(run.train, run.val, reference)
    series = title or runs_dir.resolve().name
    title = title or f"Experiments: {series}"
    sections = []
    for run in runs:
        if run.epochs:
            plot_run(out / f"{run.name}.png", run.name, run.description, run.train, run.val,
                     f"observation: {run.observation}")
            sections.append(f"### {run.name}\n\n![{run.name}: train and val loss]({run.name}.png)\n")
    overlay = [(run.name, run.val) for run in runs if run.val is not None]
    plot_val_overlay(out / OVERLAY_FILE, overlay, f"Validation loss of every run: {series}")
    text = "\n".join([
        f"# {title}",
        "",
        f"Written by `python -m lightning_mf report` from the TensorBoard event files of {len(runs)} "
        f"run{'' if len(runs) == 1 else 's'} in `{runs_dir}`.",
        "",
        markdown_table(runs),
        "",
        thresholds_text(),
        "",
        "## Learning curves",
        "",
        f"![val loss of every run]({OVERLAY_FILE})",
        "",
        *sections,
    ])
    path = out / REPORT_FILE
    path.write_text(text)
    return path


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m lightning_mf report",
        description="Write an experiment table (report.md) and learning-curve PNGs from the TensorBoard "
        "event files of RUNS_DIR/<name>/version_<n>.",
    )
    parser.add_argument("runs_dir", type=str, help="Folder of runs, e.g. runs/bookcrossing.")
    parser.add_argument("--out", type=str | None, default=None, help="Where to write; unset: RUNS_DIR.")
    parser.add_argument("--title", type=str | None, default=None, help="Heading of report.md.")
    return parser


def main(argv: list[str] | None = None) -> int:
    config = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    path = write_report(config.runs_dir, config.out, config.title)
    print(f"report written: {path} (and the PNGs beside it)")
    print("\n".join(line for line in path.read_text().splitlines() if line.startswith("|")))
    return 0
