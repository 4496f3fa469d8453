"""Per-epoch learning curves read back from TensorBoard event files.

Lightning logs every metric at a global step, and with every call it also logs an `epoch` scalar
(the current epoch, from 0) at the same step. A metric value is placed at the epoch logged at its
step; when one step carries two epochs (an epoch-end value and the first logged step of the next
epoch can share a step), the `epoch` event written closest in time to the value wins, since both
come from one `log_metrics` call. Values logged more than once in an epoch (e.g. validation with
`val_check_interval < 1`) keep the epoch's last one. Without an `epoch` scalar (not a Lightning
run) the n-th value is taken as epoch n.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_mf.errors import DataError

EPOCH_TAG = "epoch"
EVENTS_GLOB = "events.out.tfevents.*"


@dataclass(frozen=True)
class Curve:
    """One metric per epoch.

    Attributes:
        epoch: Epoch numbers as Lightning counts them (from 0), increasing.
        value: The metric's value at the end of each epoch.
    """

    epoch: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.epoch)


def latest_version(run_dir: Path) -> Path | None:
    """The highest-numbered `version_<n>` folder of a TensorBoard run that holds event files."""
    versions = []
    for child in run_dir.glob("version_*"):
        number = child.name.removeprefix("version_")
        if child.is_dir() and number.isdigit() and any(child.glob(EVENTS_GLOB)):
            versions.append((int(number), child))
    return max(versions)[1] if versions else None


def find_runs(runs_dir: str | Path) -> list[tuple[str, Path]]:
    """(name, log folder) of every run under `runs_dir/<name>/version_<n>`, latest version, by name."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise DataError(f"runs folder {runs_dir} does not exist or is not a folder")
    runs = []
    for child in sorted(runs_dir.iterdir()):
        if child.is_dir() and (version := latest_version(child)) is not None:
            runs.append((child.name, version))
    if not runs:
        raise DataError(
            f"{runs_dir} holds no TensorBoard runs: expected {runs_dir}/<name>/version_<n>/{EVENTS_GLOB}"
        )
    return runs


def _epoch_of_step(events: list[tuple[int, float, float]]) -> Callable[[int, float], int]:
    """A function (step, wall_time) -> epoch built from the `epoch` events (step, wall_time, value)."""
    by_step: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for step, wall_time, value in events:
        by_step[step].append((wall_time, int(round(value))))
    steps = sorted(by_step)

    def epoch_at(step: int, wall_time: float) -> int:
        if step in by_step:
            return min(by_step[step], key=lambda event: abs(event[0] - wall_time))[1]
        # No epoch logged at this step: the latest epoch logged before it.
        position = bisect.bisect_right(steps, step) - 1
        return max(epoch for _, epoch in by_step[steps[position]]) if position >= 0 else 0

    return epoch_at


def read_curves(log_dir: str | Path, tags: Iterable[str]) -> dict[str, Curve]:
    """Per-epoch curves of the scalar `tags` found in a run's event files (missing tags are left out).

    Args:
        log_dir: A TensorBoard log folder (`.../version_<n>`); every event file in it is read.
        tags: Scalar tags to read, e.g. `train/loss`, `val/loss`.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    accumulator.Reload()
    available = set(accumulator.Tags().get("scalars", []))
    epoch_at = None
    if EPOCH_TAG in available:
        epoch_at = _epoch_of_step([(e.step, e.wall_time, e.value) for e in accumulator.Scalars(EPOCH_TAG)])
    curves = {}
    for tag in tags:
        if tag not in available:
            continue
        events = accumulator.Scalars(tag)
        last: dict[int, float] = {}
        for position, event in enumerate(events):
            epoch = epoch_at(event.step, event.wall_time) if epoch_at else position
            last[epoch] = event.value  # events are in write order: the epoch's last value stays
        epoch = np.array(sorted(last), dtype=np.int64)
        curves[tag] = Curve(epoch, np.array([last[e] for e in epoch], dtype=np.float64))
    return curves
