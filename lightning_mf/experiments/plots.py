"""Learning-curve pictures for `report`, drawn with matplotlib's Agg canvas.

Figures are built with `matplotlib.figure.Figure`, not pyplot, so nothing touches a global backend
or needs a display, and PNGs stay small (about 30-60 KB at the sizes below).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from lightning_mf.experiments.tb_events import Curve

DPI = 100
RUN_SIZE = (7.0, 4.4)  # inches
OVERLAY_SIZE = (9.0, 5.0)
TITLE_WIDTH = 80  # characters per title line
LOG_SCALE_RATIO = 4.0  # overlay: log y axis when the largest val loss exceeds this many times the smallest
MARKERS = "osD^v<>ph*"


def _epochs(curve: Curve) -> np.ndarray:
    """Lightning counts epochs from 0; pictures count completed epochs from 1."""
    return curve.epoch + 1


def _style(ax: Axes, ylabel: str) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def plot_run(
    path: str | Path, name: str, description: str, train: Curve | None, val: Curve | None, note: str = ""
) -> Path:
    """Train and val loss against epoch for one run, the best val loss marked; written as PNG.

    Args:
        path: The PNG to write.
        name: The run's name, the title's first line.
        description: What the run changes, wrapped under the name.
        train: Per-epoch train loss (MSE), if logged.
        val: Per-epoch val loss (MSE), if logged.
        note: A line printed under the plot (the report's observation).
    """
    fig = Figure(figsize=RUN_SIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if train is not None and len(train):
        ax.plot(_epochs(train), train.value, marker="o", markersize=4, label="train loss", color="C0")
    if val is not None and len(val):
        ax.plot(_epochs(val), val.value, marker="s", markersize=4, label="val loss", color="C1")
        best = int(np.argmin(val.value))
        ax.plot(_epochs(val)[best], val.value[best], marker="*", markersize=14, color="C3", linestyle="none",
                label=f"best val loss {val.value[best]:.4f} (epoch {_epochs(val)[best]})")
    _style(ax, "loss (MSE)")
    ax.legend(loc="best", fontsize=9)
    title = textwrap.fill(description, TITLE_WIDTH) if description else ""
    ax.set_title(f"{name}\n{title}" if title else name, fontsize=10, loc="left")
    if note:
        fig.supxlabel(textwrap.fill(note, int(TITLE_WIDTH * 1.2)), fontsize=8, color="0.3")
    path = Path(path)
    fig.savefig(path)
    return path


def plot_val_overlay(path: str | Path, curves: Sequence[tuple[str, Curve]], title: str) -> Path:
    """Every run's val loss against epoch in one picture; log scale when the losses span a wide range.

    Args:
        path: The PNG to write.
        curves: (run name, val loss curve) pairs, drawn in this order.
        title: The picture's title.
    """
    fig = Figure(figsize=OVERLAY_SIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    values = [c.value for _, c in curves if len(c)]
    for number, (name, curve) in enumerate(curves):
        if len(curve):
            ax.plot(_epochs(curve), curve.value, marker=MARKERS[number % len(MARKERS)], markersize=4,
                    color=f"C{number % 10}", label=name)
    ylabel = "val loss (MSE)"
    if values:
        low, high = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
        if low > 0 and high / low > LOG_SCALE_RATIO:
            ax.set_yscale("log")
            # Plain numbers (3, 4, 10) rather than powers of ten on a range this short.
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            ylabel += ", log scale"
    _style(ax, ylabel)
    ax.set_title(title, fontsize=11, loc="left")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    path = Path(path)
    fig.savefig(path)
    return path
