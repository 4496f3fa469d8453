"""Raw user / item ids -> contiguous int32 indices, ordered by raw id."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

# Above this many slots per distinct id a presence table wastes memory; fall back to sorting.
_MAX_DENSE_SLOTS_PER_ROW = 4


@dataclass
class IdIndex:
    """The sorted distinct raw ids of one column and each row's position among them.

    Attributes:
        raw_ids: Distinct raw ids in ascending order; `raw_ids[k]` is the id of index `k`.
        codes: Per input row, the index of its raw id (int32).
    """

    raw_ids: pl.Series
    codes: np.ndarray

    def __len__(self) -> int:
        return len(self.raw_ids)


def index_ids(ids: pl.Series) -> IdIndex:
    """Map raw ids to contiguous codes in raw-id order, in O(rows) for compact integer ids."""
    if ids.dtype.is_integer() and len(ids) > 0:
        values = ids.to_numpy()
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high < _MAX_DENSE_SLOTS_PER_ROW * len(values) + 1024:
            present = np.zeros(high + 1, dtype=bool)
            present[values] = True
            slot_to_code = np.cumsum(present, dtype=np.int64) - 1
            codes = slot_to_code[values].astype(np.int32)
            raw = pl.Series(ids.name, np.flatnonzero(present), dtype=ids.dtype)
            return IdIndex(raw_ids=raw, codes=codes)
    frame = pl.DataFrame({"raw": ids})
    distinct = frame.select(pl.col("raw").unique().sort())["raw"]
    lookup = pl.DataFrame({"raw": distinct, "code": pl.int_range(len(distinct), dtype=pl.Int32, eager=True)})
    codes = frame.join(lookup, on="raw", how="left", maintain_order="left")["code"].to_numpy()
    return IdIndex(raw_ids=distinct.rename(ids.name), codes=codes.astype(np.int32, copy=False))


def compact(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber codes so the ones still used are contiguous again, keeping their order.

    Returns:
        The renumbered codes and `kept`, the old code of each new index.
    """
    present = np.zeros(size, dtype=bool)
    present[codes] = True
    if present.all():
        return codes, np.arange(size)
    old_to_new = (np.cumsum(present, dtype=np.int64) - 1).astype(np.int32)
    return old_to_new[codes], np.flatnonzero(present)
