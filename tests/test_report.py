"""`report`: curves read back from hand-written TensorBoard event files, observations, table and PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lightning_mf.errors import DataError
from lightning_mf.experiments.report import GAP, HIGH, REPORT_FILE, observe, write_report
from lightning_mf.experiments.tb_events import Curve, find_runs, read_curves

# (train loss, val loss) per epoch, shaped like the experiment log's cases.
SHAPES = {
    "01-overfit": ([2.0, 1.2, 0.8, 0.6, 0.5], [3.0, 2.8, 2.9, 3.1, 3.3]),
    "02-underfit": ([5.0, 4.56, 4.55, 4.54, 4.54], [5.1, 4.76, 4.75, 4.74, 4.74]),
    "03-converged": ([2.0, 1.3, 1.25, 1.24, 1.235], [1.6, 1.29, 1.28, 1.275, 1.272]),
    "04-improving": ([3.2, 2.6, 2.1, 1.9, 1.7], [3.0, 2.5, 2.0, 1.8, 1.6]),
}
STEPS_PER_EPOCH = 10


def write_run(folder: Path, train: list[float], val: list[float], description: str | None = None) -> Path:
    """Event files laid out as Lightning writes them: metrics and an `epoch` scalar at each step.

    Each epoch's end step also gets an `epoch` event of the next epoch, written later (the next
    epoch's first logged step can share the step), which the reader must not pick.
    """
    from torch.utils.tensorboard import SummaryWriter

    log_dir = folder / "version_0"
    writer = SummaryWriter(str(log_dir))
    clock = 1_000_000.0
    for epoch, (t, v) in enumerate(zip(train, val)):
        step = (epoch + 1) * STEPS_PER_EPOCH - 1
        scalars = (("val/loss", v), ("val/rmse", v**0.5), ("epoch", epoch), ("train/loss", t), ("epoch", epoch))
        for tag, value in scalars:
            writer.add_scalar(tag, value, step, walltime=clock)
            clock += 0.001
        clock += 30.0
        writer.add_scalar("epoch", epoch + 1, step, walltime=clock)
        writer.add_scalar("train/loss_step", t, step, walltime=clock)
    writer.close()
    if description is not None:
        (folder / "experiment.json").write_text(json.dumps({"description": description}))
        (folder / "finished.json").write_text("{}")
    return log_dir


def curve(values: list[float]) -> Curve:
    return Curve(np.arange(len(values)), np.array(values))


def test_curves_are_placed_at_the_logged_epoch(tmp_path: Path) -> None:
    train, val = SHAPES["01-overfit"]
    log_dir = write_run(tmp_path / "run", train, val)
    curves = read_curves(log_dir, ("train/loss", "val/loss", "val/rmse", "no/such/tag"))
    assert set(curves) == {"train/loss", "val/loss", "val/rmse"}
    np.testing.assert_array_equal(curves["train/loss"].epoch, np.arange(5))
    np.testing.assert_allclose(curves["train/loss"].value, train, rtol=1e-6)
    np.testing.assert_allclose(curves["val/loss"].value, val, rtol=1e-6)


def test_observations_follow_the_documented_thresholds() -> None:
    reference = min(min(v) for _, v in SHAPES.values())
    said = {name: observe(curve(t), curve(v), reference) for name, (t, v) in SHAPES.items()}
    assert said["01-overfit"].startswith("high variance: val loss 6.60x train loss")
    assert said["02-underfit"].startswith("underfitting: train and val loss plateau together")
    assert said["03-converged"] == "converged"
    assert said["04-improving"].startswith("still improving: val loss fell 36.0% over the last 3 epochs")
    # The same plateau is not "high" when it is the best the report has.
    assert observe(curve(SHAPES["02-underfit"][0]), curve(SHAPES["02-underfit"][1]), 4.74) == "converged"
    # Far above train but not rising: converged, with the gap stated.
    gap = observe(curve([1.0, 0.9, 0.9, 0.9, 0.9]), curve([2.0, 1.9, 1.9, 1.9, 1.9]), 1.9)
    assert gap == "converged; val loss 2.11x train loss"
    # The ratio is stated from 1 + GAP on, not below it.
    for ratio, stated in ((1 + GAP - 0.01, False), (1 + GAP + 0.01, True)):
        said = observe(curve([1.0, 1.0, 1.0]), curve([ratio] * 3), ratio)
        assert said == ("converged" + (f"; val loss {ratio:.2f}x train loss" if stated else "")), (ratio, said)
    # A slow, steady fall on a large offset is not a plateau, even though each step is small.
    slow = [14.1 - 0.07 * e for e in range(10)]
    assert observe(curve([14.0 - 0.3 * e for e in range(10)]), curve(slow), 3.0).startswith("still improving")
    # Noise on a flat curve is.
    assert observe(curve([1.0, 0.9, 0.9, 0.9]), curve([1.0, 1.001, 0.999, 1.002]), 1.0) == "converged"
    assert observe(curve([1.0]), curve([1.0]), 1.0).startswith("too short")
    assert observe(None, curve([1.0, 1.0]), 1.0) == "no epoch finished"
    # Underfitting starts at (1 + HIGH) times the best run's val loss.
    flat_train, flat_val = curve([1.0, 0.9, 0.9, 0.9, 0.9]), curve([1.0, 0.95, 0.95, 0.95, 0.95])
    assert observe(flat_train, flat_val, 0.95 / (1 + HIGH) * 1.01) == "converged"
    assert observe(flat_train, flat_val, 0.95 / (1 + HIGH) * 0.99).startswith("underfitting")


def _rows(report: Path) -> dict[str, list[str]]:
    return {cells[0]: cells for cells in (
        [c.strip() for c in line.strip("|").split(" | ")] for line in report.read_text().splitlines()
        if line.startswith("| 0"))}


def test_report_writes_the_table_and_pictures(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name, (train, val) in SHAPES.items():
        write_run(runs / name, train, val, description=f"shape {name}")
    (runs / "not-a-run").mkdir()
    path = write_report(runs, tmp_path / "out", title="Shapes")
    rows = _rows(path)
    assert list(rows) == list(SHAPES)
    overfit = rows["01-overfit"]
    assert overfit[1:7] == ["shape 01-overfit", "0.5000", "3.3000", "2.8000 (2)", f"{3.3**0.5:.4f}", "5"]
    assert overfit[7].startswith("high variance")
    assert rows["02-underfit"][7].startswith("underfitting")
    text = path.read_text()
    assert text.startswith("# Shapes\n") and "High variance" in text and "![01-overfit" in text
    for png in [*(f"{name}.png" for name in SHAPES), "val_loss_all.png"]:
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"


def test_latest_version_is_read_and_unfinished_runs_are_marked(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run = runs / "01-a"
    write_run(run, [1.0, 0.9], [1.1, 1.0], description="old")
    write_run(run / "tmp", [2.0, 1.0, 0.5], [2.0, 1.5, 1.2]).rename(run / "version_3")
    (run / "finished.json").unlink()
    assert find_runs(runs) == [("01-a", run / "version_3")]
    rows = _rows(write_report(runs))
    assert rows["01-a"][6] == "3" and rows["01-a"][7].startswith("unfinished run; ")
    assert (runs / REPORT_FILE).is_file(), "--out defaults to the runs folder"


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        find_runs(tmp_path / "missing")
    with pytest.raises(DataError, match="holds no TensorBoard runs"):
        find_runs(tmp_path)
