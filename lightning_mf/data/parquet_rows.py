"""Reading a split file's rows as columns: schema checks, row ranges across row groups, batches.

Importable without polars (DataLoader workers unpickle the streams that use it, and polars'
thread pool is not fork-safe): pyarrow and numpy only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lightning_mf.data.batch import RatingBatch
from lightning_mf.errors import DataError

# Column names of the dataset contract (lightning_mf.data.schema, which imports polars; a test
# keeps the two in step).
USER, ITEM, RATING = "user", "item", "rating"
COLUMNS = (USER, ITEM, RATING)
DTYPES = {USER: pa.int32(), ITEM: pa.int32(), RATING: pa.float32()}

Columns = tuple[np.ndarray, np.ndarray, np.ndarray]


def check_schema(path: Path, schema: pa.Schema) -> None:
    for name, dtype in DTYPES.items():
        index = schema.get_field_index(name)
        if index < 0:
            raise DataError(f"{path}: column {name!r} is missing (found {schema.names}); re-run `prepare`.")
        found = schema.field(index).type
        if found != dtype:
            raise DataError(f"{path}: column {name!r} must be {dtype}, found {found}; re-run `prepare`.")


def open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise DataError(f"{path}: cannot read as Parquet ({error}); re-run `prepare`.") from error


class RowReader:
    """Reads rows `[start, stop)` of the concatenation of a file's row groups in a given order.

    The last few row groups read are kept: neighbouring windows (prepared in parallel) and
    batches share the groups at their boundaries. Safe to call from several threads: file access
    is serialized, the rest runs without the GIL.
    """

    _CACHED_GROUPS = 3

    def __init__(self, path: Path, group_sizes: np.ndarray, order: np.ndarray) -> None:
        self._file = pq.ParquetFile(path)
        self._order = order
        self._offsets = np.concatenate(([0], np.cumsum(group_sizes[order])))
        self._cache: dict[int, Columns] = {}
        self._lock = threading.Lock()

    def _group(self, slot: int) -> Columns:
        with self._lock:
            if slot not in self._cache:
                table = self._file.read_row_group(int(self._order[slot]), columns=list(COLUMNS))
                if len(self._cache) >= self._CACHED_GROUPS:
                    del self._cache[min(self._cache)]  # requests move forward: drop the earliest
                self._cache[slot] = tuple(table.column(name).to_numpy() for name in COLUMNS)  # type: ignore[assignment]
            return self._cache[slot]

    def read(self, start: int, stop: int) -> Columns:
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        last = int(np.searchsorted(self._offsets, stop, side="left"))
        parts: list[Columns] = []
        for slot in range(first, last):
            lo, hi = self._offsets[slot], self._offsets[slot + 1]
            columns = self._group(slot)
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            parts.append(tuple(column[a:b] for column in columns))  # type: ignore[arg-type]
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))  # type: ignore[return-value]


def to_tensor(column: np.ndarray) -> torch.Tensor:
    # Arrow's zero-copy arrays are read-only; torch cannot express that, so those are copied.
    writable = column.flags.writeable and column.flags.c_contiguous
    return torch.from_numpy(column if writable else column.copy())


def rebatch(chunks: Iterator[Columns], sizes: list[int]) -> Iterator[RatingBatch]:
    """Cuts a stream of contiguous column chunks into batches of the given sizes.

    Batches inside a chunk are views made by one `split` per column; only a batch straddling two
    chunks is copied.
    """
    ends = np.cumsum(sizes)
    index = 0  # next batch to yield
    received = 0  # stream rows received so far
    carry: list[tuple[torch.Tensor, ...]] = []
    for chunk in chunks:
        tensors = tuple(to_tensor(column) for column in chunk)
        start, received = received, received + len(chunk[0])
        at = 0  # rows of this chunk already yielded
        if carry:
            if ends[index] > received:
                carry.append(tensors)
                continue
            at = int(ends[index]) - start
            parts = [*carry, tuple(t[:at] for t in tensors)]
            yield RatingBatch(*(torch.cat([part[i] for part in parts]) for i in range(3)))
            carry, index = [], index + 1
        last = int(np.searchsorted(ends, received, side="right"))  # batches ending in this chunk
        if last > index:
            stop = int(ends[last - 1]) - start
            pieces = (t[at:stop].split(sizes[index:last]) for t in tensors)
            yield from (RatingBatch(*batch) for batch in zip(*pieces))
            at, index = stop, last
        if at < len(chunk[0]):
            carry.append(tuple(t[at:] for t in tensors))
    if index != len(sizes) or carry:
        raise RuntimeError(f"stream ended after {index} of {len(sizes)} batches")
