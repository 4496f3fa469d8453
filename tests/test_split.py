"""Splits: exact sizes, disjoint cover, reproducibility, and the documented permutation rule."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_mf.prepare.split import parse_time, predefined_split, random_split, temporal_split
from lightning_mf.errors import DataError


def _cover(split) -> np.ndarray:
    return np.sort(np.concatenate([split.train, split.val, split.test]))


def test_random_split_sizes_cover_and_seed() -> None:
    split = random_split(1001, 0.1, 0.2, seed=3)
    assert (len(split.train), len(split.val), len(split.test)) == (701, 100, 200)
    np.testing.assert_array_equal(_cover(split), np.arange(1001))
    again = random_split(1001, 0.1, 0.2, seed=3)
    np.testing.assert_array_equal(split.train, again.train)
    other = random_split(1001, 0.1, 0.2, seed=4)
    assert not np.array_equal(split.train, other.train)


def test_random_split_matches_the_benchmark_rule() -> None:
    """val 0, test 0.1: train is the first 90% of default_rng(seed).permutation (issue 4's split)."""
    n = 100_836
    split = random_split(n, 0.0, 0.1, seed=42)
    permutation = np.random.default_rng(42).permutation(n)
    np.testing.assert_array_equal(split.train, permutation[: int(0.9 * n)])
    np.testing.assert_array_equal(split.test, permutation[int(0.9 * n) :])


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_bad_fractions_are_rejected(val: float, test: float) -> None:
    with pytest.raises(DataError, match="fraction"):
        random_split(10, val, test, seed=0)


def test_temporal_split_by_quantiles_and_cutoffs() -> None:
    ts = np.arange(1000, dtype=np.int64) * 10
    split = temporal_split(ts, 0.1, 0.2, seed=0)
    assert ts[split.train].max() < ts[split.val].min() <= ts[split.val].max() < ts[split.test].min()
    assert (len(split.train), len(split.val), len(split.test)) == (700, 100, 200)
    assert not np.array_equal(split.train, np.sort(split.train)), "train order is shuffled"
    cut = temporal_split(ts, 0.0, 0.0, seed=0, val_start="5000", test_start="9000")
    assert len(cut.val) == 400 and len(cut.test) == 100 and cut.spec["test_start"] == 9000


def test_temporal_rejects_reversed_cutoffs() -> None:
    with pytest.raises(DataError, match="must not be after"):
        temporal_split(np.arange(10), 0.0, 0.0, seed=0, val_start="8", test_start="2")


def test_parse_time_accepts_epoch_and_iso() -> None:
    assert parse_time("86400", "val_start") == 86400
    assert parse_time("1970-01-02", "val_start") == 86400
    with pytest.raises(DataError, match="--test_start must be epoch seconds or an ISO date"):
        parse_time("yesterday", "test_start")


def test_predefined_split_carves_val_from_train_only() -> None:
    is_test = np.zeros(100, dtype=bool)
    is_test[80:] = True
    split = predefined_split(is_test, 0.25, seed=1, test_file="u1.test")
    np.testing.assert_array_equal(split.test, np.arange(80, 100))
    assert len(split.val) == 20 and len(split.train) == 60
    assert split.val.max() < 80 and split.train.max() < 80
