"""Assign rows to train / val / test; train comes back in a seeded random order."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from lightning_mf.errors import DataError


@dataclass
class Split:
    """Row positions of each split.

    Attributes:
        train: Positions in the seeded random order train.parquet is written in.
        val: Positions of validation rows (the writer sorts them by user, item).
        test: Positions of test rows (likewise).
        spec: What meta.json records about how the split was made.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    spec: dict[str, Any] = field(default_factory=dict)


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DataError(f"--{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(
            f"--val_fraction + --test_fraction must leave rows for training, got {val_fraction} + {test_fraction}"
        )


def _cut(order: np.ndarray, fractions: tuple[float, ...]) -> list[np.ndarray]:
    """Split `order` into a head and one tail per fraction (sizes rounded to whole rows)."""
    sizes = [round(len(order) * f) for f in fractions]
    head = len(order) - sum(sizes)
    bounds = np.cumsum([head, *sizes])
    return np.split(order, bounds[:-1])


def random_split(num_rows: int, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Seeded random fractions: the permutation's head is train, then val, then test.

    With `val_fraction=0` this is exactly "shuffle with `numpy.random.default_rng(seed).permutation`
    and keep the first (1 - test_fraction) for training".
    """
    check_fractions(val_fraction, test_fraction)
    order = np.random.default_rng(seed).permutation(num_rows)
    train, val, test = _cut(order, (val_fraction, test_fraction))
    spec = {"kind": "random", "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    return Split(train, val, test, spec)


def parse_time(value: str, option: str) -> int:
    """Epoch seconds from `1420070400` or an ISO date / datetime (UTC when no zone is given)."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(
            f"--{option} must be epoch seconds or an ISO date such as 2015-01-01, got {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def temporal_split(
    timestamps: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    val_start: str | None = None,
    test_start: str | None = None,
) -> Split:
    """Global time cut-offs: `ts >= test_start` is test, `val_start <= ts < test_start` is val.

    Unset cut-offs become the time quantiles that leave the given fractions for val and test.
    """
    check_fractions(val_fraction, test_fraction)
    if len(timestamps) == 0:
        raise DataError("a temporal split needs at least one rating")
    if test_start is not None:
        test_cut = parse_time(test_start, "test_start")
    else:
        test_cut = int(np.quantile(timestamps, 1.0 - test_fraction, method="higher")) if test_fraction else None
    if val_start is not None:
        val_cut = parse_time(val_start, "val_start")
    elif val_fraction:
        val_cut = int(np.quantile(timestamps, 1.0 - test_fraction - val_fraction, method="higher"))
    else:
        val_cut = test_cut
    never = np.iinfo(np.int64).max
    test_cut_value = never if test_cut is None else test_cut
    val_cut_value = test_cut_value if val_cut is None else val_cut
    if val_cut_value > test_cut_value:
        raise DataError(f"--val_start ({val_cut_value}) must not be after --test_start ({test_cut_value})")
    is_test = timestamps >= test_cut_value
    is_val = (timestamps >= val_cut_value) & ~is_test
    train = np.flatnonzero(~is_test & ~is_val)
    train = train[np.random.default_rng(seed).permutation(len(train))]
    spec = {
        "kind": "temporal",
        "val_start": None if val_cut is None else val_cut_value,
        "test_start": test_cut,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
    }
    return Split(train, np.flatnonzero(is_val), np.flatnonzero(is_test), spec)


def predefined_split(is_test: np.ndarray, val_fraction: float, seed: int, test_file: str) -> Split:
    """A given train/test pair; validation is carved at random out of the train file only."""
    check_fractions(val_fraction, 0.0)
    train_rows = np.flatnonzero(~is_test)
    order = train_rows[np.random.default_rng(seed).permutation(len(train_rows))]
    train, val = _cut(order, (val_fraction,))
    spec = {"kind": "predefined", "test_file": test_file, "val_fraction": val_fraction, "seed": seed}
    return Split(train, val, np.flatnonzero(is_test), spec)
