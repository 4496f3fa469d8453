"""Raw user and item ids <-> the model's contiguous indices, by value, in bulk Polars joins.

A dataset's ids are integers (MovieLens) or strings (Book-Crossing ISBNs), as `prepare` recorded
them in `users.parquet` / `items.parquet`. Ids coming in (a CSV, JSON, a Python list) are matched
by value: where the dataset's ids are integers, `123`, `"123"` and `" 123 "` are the same id and
anything that is not an integer is an unknown id; where they are strings, ids compare as strings
(`123` is `"123"`, and `"0123"` stays apart from it). Unknown ids get index -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lightning_mf.errors import DataError

_KEY, _INDEX = "__key", "__index"


class IdMap:
    """The raw ids of users (or items) in index order: `raw_ids[i]` is index i's id.

    Args:
        raw_ids: Int64 or String ids, unique, in index order.
    """

    def __init__(self, raw_ids: pl.Series) -> None:
        if raw_ids.dtype.is_integer():
            raw_ids = raw_ids.cast(pl.Int64)
        elif raw_ids.dtype != pl.String:
            raise DataError(f"raw ids must be integers or strings, found {raw_ids.dtype}")
        self.raw_ids = raw_ids.alias("raw_id")
        self._frame = pl.DataFrame({_KEY: self.raw_ids, _INDEX: np.arange(len(raw_ids), dtype=np.int64)})

    @classmethod
    def read(cls, path: Path) -> IdMap:
        """The map in a dataset's `users.parquet` / `items.parquet` (`index`, `raw_id`)."""
        if not path.is_file():
            raise DataError(f"{path} not found: the dataset folder lacks its id table")
        frame = pl.read_parquet(path, columns=["index", "raw_id"])
        if not frame["index"].equals(pl.Series("index", np.arange(frame.height), dtype=frame["index"].dtype)):
            raise DataError(f"{path}: column index must run 0, 1, ... {frame.height - 1} in order; re-run `prepare`")
        return cls(frame["raw_id"])

    def __len__(self) -> int:
        return len(self.raw_ids)

    @property
    def integer(self) -> bool:
        """Whether the ids are integers (else strings)."""
        return self.raw_ids.dtype == pl.Int64

    def keys(self, ids: pl.Series | Sequence[Any] | np.ndarray) -> pl.Series:
        """Incoming ids as this map's key type; null where an id cannot be one (an unknown id)."""
        series = ids if isinstance(ids, pl.Series) else ids_series(ids)
        dtype = series.dtype
        if self.integer:
            if dtype.is_integer():
                return series.cast(pl.Int64)
            if dtype.is_float():
                whole = series.is_finite() & (series == series.floor()) & (series.abs() < 2.0**63)
                return pl.select(pl.when(whole).then(series).otherwise(None).cast(pl.Int64)).to_series()
            if dtype == pl.String:
                return series.str.strip_chars().str.to_integer(strict=False)
            return pl.Series(series.name, [None] * len(series), dtype=pl.Int64)
        if dtype.is_integer():
            return series.cast(pl.String)
        if dtype == pl.String:
            return series
        return pl.Series(series.name, [None] * len(series), dtype=pl.String)

    def indices(self, ids: pl.Series | Sequence[Any] | np.ndarray) -> np.ndarray:
        """Index of each id (int64), -1 for ids this map does not hold."""
        keys = self.keys(ids)
        found = pl.DataFrame({_KEY: keys}).join(self._frame, on=_KEY, how="left", maintain_order="left")
        return found[_INDEX].fill_null(-1).to_numpy().copy()

    def raw(self, indices: np.ndarray) -> pl.Series:
        """The raw ids of indices (all valid)."""
        return self.raw_ids.gather(pl.Series(np.asarray(indices, dtype=np.int64)))

    def extended(self, new_keys: pl.Series) -> IdMap:
        """This map with `new_keys` (keys not in it, unique) appended as the next indices."""
        return IdMap(pl.concat([self.raw_ids, new_keys.cast(self.raw_ids.dtype).alias("raw_id")]))


def ids_series(ids: Sequence[Any] | np.ndarray) -> pl.Series:
    """Python or NumPy ids as a Series: integers stay integers; a mix with strings becomes strings."""
    """A Series of mixed Python ids: all integers stay integers, otherwise all become strings."""
    if isinstance(ids, np.ndarray):
        return pl.Series("id", ids)
    values = list(ids)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return pl.Series("id", values, dtype=pl.Int64)
    if all(isinstance(v, (str, int, np.integer)) and not isinstance(v, bool) for v in values):
        return pl.Series("id", [str(v) for v in values], dtype=pl.String)
    bad = next(v for v in values if not isinstance(v, (str, int, np.integer)) or isinstance(v, bool))
    raise DataError(f"ids must be integers or strings, found {bad!r} ({type(bad).__name__})")
