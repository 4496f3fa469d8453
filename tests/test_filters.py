"""Id indexing and the pre-split filters: each keeps the right rows and counts what it removed."""

from __future__ import annotations

import numpy as np
import polars as pl

from lightning_mf.prepare import filters
from lightning_mf.prepare.indexing import compact, index_ids


def _frame(users, items, ratings, timestamps=None) -> pl.DataFrame:
    n = len(users)
    return pl.DataFrame(
        {
            "user": pl.Series(users, dtype=pl.Int32),
            "item": pl.Series(items, dtype=pl.Int32),
            "rating": pl.Series(ratings, dtype=pl.Float32),
            "timestamp": pl.Series(timestamps if timestamps is not None else [None] * n, dtype=pl.Int64),
        }
    )


def test_integer_ids_index_in_id_order() -> None:
    index = index_ids(pl.Series("u", [50, 7, 50, 1_000_000_000_000, 7]))
    assert index.raw_ids.to_list() == [7, 50, 1_000_000_000_000]
    assert index.codes.tolist() == [1, 0, 1, 2, 0]
    assert index.codes.dtype == np.int32


def test_string_ids_keep_leading_zeros_and_x() -> None:
    index = index_ids(pl.Series("isbn", ["0345339681", "034533968X", "345339681", "0345339681"]))
    assert index.raw_ids.to_list() == ["0345339681", "034533968X", "345339681"]
    assert index.codes.tolist() == [0, 1, 2, 0]


def test_compact_renumbers_survivors() -> None:
    codes, kept = compact(np.array([4, 0, 4], dtype=np.int32), 5)
    assert codes.tolist() == [1, 0, 1] and kept.tolist() == [0, 4]


def test_duplicates_latest_timestamp_wins_then_last_line() -> None:
    frame = _frame([0, 0, 1, 1, 2], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5], [20, 10, 5, 5, 1])
    kept, record = filters.collapse_duplicates(frame, num_items=1)
    assert record.removed_rows == 2
    # user 0: the line with the later timestamp (20) wins although it comes first;
    # user 1: equal timestamps, the last line wins.
    assert kept.select("user", "rating").rows() == [(0, 1.0), (1, 4.0), (2, 5.0)]


def test_duplicates_without_timestamps_keep_last_line() -> None:
    kept, record = filters.collapse_duplicates(_frame([0, 0, 0], [1, 1, 1], [1, 2, 3]), num_items=2)
    assert record.removed_rows == 2 and kept["rating"].to_list() == [3.0]


def test_no_duplicates_is_a_no_op() -> None:
    frame = _frame([0, 0, 1], [0, 1, 0], [1, 2, 3])
    kept, record = filters.collapse_duplicates(frame, num_items=2)
    assert record.removed_rows == 0 and kept.equals(frame)


def test_drop_implicit_counts_zeros() -> None:
    kept, record = filters.drop_implicit(_frame([0, 1, 2], [0, 0, 0], [0, 7, 0]))
    assert record.removed_rows == 2 and kept["rating"].to_list() == [7.0]


def test_subset_is_reproducible_and_ordered() -> None:
    frame = _frame(list(range(100)), [0] * 100, [1.0] * 100)
    first, record = filters.take_subset(frame, 10, seed=5)
    second, _ = filters.take_subset(frame, 10, seed=5)
    assert record.removed_rows == 90 and first.equals(second)
    assert first["user"].is_sorted()


def test_k_core_iterates_until_stable() -> None:
    # item 2 has one rating; removing it leaves user 2 with one rating, which then goes too.
    frame = _frame([0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 2], [1.0] * 6)
    kept, record = filters.k_core(frame, 3, 3, min_user_ratings=2, min_item_ratings=2)
    assert sorted(kept.select("user", "item").rows()) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert record.removed_rows == 2 and record.settings["rounds"] >= 2
