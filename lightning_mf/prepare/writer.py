"""Write split files and id tables in the dataset contract's schema (schema.py)."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from lightning_mf.data.schema import ITEM, RATINGS_SCHEMA, USER

# LZ4 decompresses several times faster than zstd, and shuffled ratings compress poorly anyway:
# the loader's throughput matters more than the folder's size.
COMPRESSION = "lz4"


def ratings_table(frame: pl.DataFrame) -> pa.Table:
    """The frame's contract columns, cast to the contract's dtypes, as an Arrow table."""
    return frame.select([pl.col(name).cast(dtype) for name, dtype in RATINGS_SCHEMA.items()]).to_arrow()


class RatingsWriter:
    """Appends ratings to one Parquet file in row groups of exactly `row_group_size` rows."""

    def __init__(self, path: Path, row_group_size: int) -> None:
        self.path = path
        self.row_group_size = row_group_size
        self.rows = 0
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        schema = ratings_table(pl.DataFrame(schema=RATINGS_SCHEMA)).schema
        self._writer = pq.ParquetWriter(path, schema, compression=COMPRESSION)

    def write(self, frame: pl.DataFrame) -> None:
        self._pending.append(frame)
        self._pending_rows += len(frame)
        if self._pending_rows >= self.row_group_size:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending_rows:
            return
        merged = pl.concat(self._pending, rechunk=True) if len(self._pending) > 1 else self._pending[0]
        full = len(merged) if final else (len(merged) // self.row_group_size) * self.row_group_size
        if full:
            self._writer.write_table(ratings_table(merged[:full]), row_group_size=self.row_group_size)
            self.rows += full
        rest = merged[full:]
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)

    def close(self) -> None:
        self._flush(final=True)
        self._writer.close()

    def __enter__(self) -> RatingsWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._writer.close()


def write_ratings(path: Path, frame: pl.DataFrame, row_group_size: int) -> int:
    """Write a whole split in one go; returns the number of rows."""
    with RatingsWriter(path, row_group_size) as writer:
        for start in range(0, len(frame), row_group_size):
            writer.write(frame[start : start + row_group_size])
    return len(frame)


def sort_for_eval(frame: pl.DataFrame) -> pl.DataFrame:
    """Validation and test files are sorted by user, then item, so eval batches hold whole users."""
    return frame.sort(USER, ITEM)


def write_id_table(path: Path, raw_ids: pl.Series, train_counts: np.ndarray) -> None:
    """users.parquet / items.parquet: index <-> raw id, with each index's number of train ratings."""
    table = pl.DataFrame(
        {
            "index": pl.int_range(len(raw_ids), dtype=pl.Int32, eager=True),
            "raw_id": raw_ids,
            "train_ratings": pl.Series(train_counts.astype(np.int64)),
        }
    )
    table.write_parquet(path, compression="zstd")
