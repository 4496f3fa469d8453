"""Row filters applied before splitting; each reports how many rows it removed.

All work on a frame of coded ratings (`user`, `item` as int32 codes, `rating`, `timestamp`) kept in
input line order, so "last line" still means the last line of the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from lightning_mf.data.schema import ITEM, RATING, TIMESTAMP, USER
from lightning_mf.errors import DataError

_LINE = "__line"


@dataclass
class FilterRecord:
    """One applied filter as meta.json reports it."""

    name: str
    removed_rows: int
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "removed_rows": self.removed_rows, **self.settings}


def collapse_duplicates(frame: pl.DataFrame, num_items: int) -> tuple[pl.DataFrame, FilterRecord]:
    """Keep one rating per (user, item): the latest timestamp wins, else the last line.

    The common case (no duplicates) costs one hash pass over an int64 key; only files that do
    have duplicates pay for the sort.
    """
    key = frame[USER].cast(pl.Int64) * num_items + frame[ITEM].cast(pl.Int64)
    if key.n_unique() == len(frame):
        return frame, FilterRecord("collapse_duplicates", 0, {"rule": "latest timestamp, else last line"})
    collapsed = (
        frame.with_row_index(_LINE)
        .with_columns(key.alias("__key"))
        # Stable sort by time: equal (or missing) timestamps keep line order, so "last" = last line.
        .sort(TIMESTAMP, nulls_last=False, maintain_order=True)
        .unique(subset="__key", keep="last")
        .sort(_LINE)
        .drop(_LINE, "__key")
    )
    removed = len(frame) - len(collapsed)
    return collapsed, FilterRecord("collapse_duplicates", removed, {"rule": "latest timestamp, else last line"})


def drop_implicit(frame: pl.DataFrame) -> tuple[pl.DataFrame, FilterRecord]:
    """Remove rating 0 (Book-Crossing's implicit feedback), the seed log's breakthrough step."""
    kept = frame.filter(pl.col(RATING) != 0)
    return kept, FilterRecord("drop_implicit", len(frame) - len(kept), {"rating": 0})


def take_subset(frame: pl.DataFrame, rows: int, seed: int) -> tuple[pl.DataFrame, FilterRecord]:
    """A reproducible random sample of `rows` rows, kept in line order."""
    if rows <= 0:
        raise DataError(f"--subset must be a positive number of rows, got {rows}")
    settings = {"rows": rows, "seed": seed}
    if rows >= len(frame):
        return frame, FilterRecord("subset", 0, settings)
    chosen = np.sort(np.random.default_rng(seed).choice(len(frame), size=rows, replace=False))
    return frame[chosen], FilterRecord("subset", len(frame) - rows, settings)


def k_core(
    frame: pl.DataFrame, num_users: int, num_items: int, min_user_ratings: int, min_item_ratings: int
) -> tuple[pl.DataFrame, FilterRecord]:
    """Drop users and items with too few ratings, repeating until every survivor qualifies."""
    settings = {"min_user_ratings": min_user_ratings, "min_item_ratings": min_item_ratings}
    if min_user_ratings <= 1 and min_item_ratings <= 1:
        return frame, FilterRecord("k_core", 0, settings)
    users = frame[USER].to_numpy()
    items = frame[ITEM].to_numpy()
    keep = np.ones(len(frame), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        user_counts = np.bincount(users[keep], minlength=num_users)
        item_counts = np.bincount(items[keep], minlength=num_items)
        ok = keep & (user_counts[users] >= min_user_ratings) & (item_counts[items] >= min_item_ratings)
        if ok.sum() == keep.sum():
            break
        keep = ok
    settings["rounds"] = rounds
    return frame.filter(pl.Series(keep)), FilterRecord("k_core", int((~keep).sum()), settings)
