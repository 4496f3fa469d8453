"""Parquet split -> `RatingBatch` streams: epoch shuffling, DDP / worker sharding, exact lengths.

The training epoch is one fixed sequence of all N training ratings, defined by `seed + epoch`:

1. the row groups of `train.parquet` are concatenated in a permuted order;
2. that sequence is cut into shuffle windows of `shuffle_window` consecutive positions (aligned at
   position 0) and the rows inside each window are permuted.

Every reader (a DDP rank, or a DataLoader worker of a rank) takes a contiguous range of that
sequence, reads only the windows overlapping it and slices its rows out. A rating therefore sits at
exactly one position, and positions are partitioned, so each rating is seen exactly once per epoch
across all ranks and workers. Windows are prepared by background threads, two ahead of the one
being consumed, so memory is bounded by about three windows plus one row group, whatever the
dataset's size. A batch's content depends on `seed`, `epoch`, the world size and `batch_size`,
not on the number of workers (only the order in which workers' batches arrive does).

Sharding arithmetic (N ratings, W ranks, batch size B, K workers per rank):

- rank r owns positions `[r*N//W, (r+1)*N//W)`; sizes differ by at most one;
- every rank yields the same M batches: `M = ceil(floor(N/W) / B)`. The first M-1 batches hold
  exactly B ratings, the last one the rest of the rank's slice, between 1 and B+1 ratings (B+1 only
  on the ranks that own one extra rating). With `drop_remainder`, `M = floor(floor(N/W) / B)` and
  every batch holds exactly B ratings; the at most B-1 (+1) ratings after them are skipped for this
  epoch (different ones every epoch, since the order changes);
- worker k of a rank yields the contiguous block of batches `[k*M//K, (k+1)*M//K)`, several
  batches per message (`PackedBatches`); the DataLoader interleaves the workers' messages and
  `unpack` splits them again, so `len()` is exactly M.

Evaluation files are sorted by user, so their streams cut on user boundaries: the file is split into
W shards at the first user start at or after `r*N//W`, and each shard into batches at the first user
start at or after every multiple of `eval_batch_size`. Each eval batch therefore holds whole users;
batch sizes vary by about one user's ratings, and ranks may differ by a batch (evaluation only
synchronizes at epoch end).

This module must stay importable without polars: DataLoader workers unpickle these datasets, and
polars' thread pool is not fork-safe. It uses pyarrow and numpy only (`parquet_rows` reads the
files, `sharding` is the arithmetic, `transport` packs worker batches).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from lightning_mf.data.batch import RatingBatch
from lightning_mf.data.parquet_rows import (
    COLUMNS,
    ITEM,
    RATING,
    USER,
    Columns,
    RowReader,
    check_schema,
    open_parquet,
    rebatch,
)
from lightning_mf.data.resume_plan import message_sizes, resume_plan
from lightning_mf.data.sharding import batches_per_rank, current_worker, shard_bounds, worker_block
from lightning_mf.data.transport import PackedBatches, for_transport, unpack
from lightning_mf.errors import DataError

__all__ = ["COLUMNS", "ITEM", "RATING", "USER", "EvalStream", "PackedBatches", "TrainStream", "batches_per_rank",
           "eval_plan", "shard_bounds", "unpack", "user_starts", "worker_block"]

# Shuffle windows prepared ahead of the consumer; memory holds about this many windows plus one.
_READ_AHEAD = 2


class TrainStream(IterableDataset):
    """The training split as an epoch-shuffled, sharded stream of `RatingBatch` (module docstring).

    Args:
        path: `train.parquet` of a prepared dataset.
        batch_size: Ratings per batch (the last batch of an epoch may differ, see the module).
        shuffle_window: Rows permuted together; bounds memory to about 20 bytes per row.
        seed: Base seed; epoch e uses `seed + e`.
        rank: This process's DDP rank.
        world_size: Number of DDP processes.
        drop_remainder: Skip the ratings that do not fill a whole batch instead of growing the
            last batch.
        num_workers: The DataLoader workers that will read it (0: the main process), for which
            the stream keeps a resume position (`set_position`).
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        shuffle_window: int,
        seed: int = 42,
        rank: int = 0,
        world_size: int = 1,
        drop_remainder: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        metadata = open_parquet(self.path).metadata
        check_schema(self.path, metadata.schema.to_arrow_schema())
        self.group_sizes = np.array([metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)])
        self.num_rows = int(self.group_sizes.sum())
        self.batch_size, self.shuffle_window, self.seed = batch_size, shuffle_window, seed
        self.rank, self.world_size, self.drop_remainder = rank, world_size, drop_remainder
        self.num_batches = batches_per_rank(self.num_rows, world_size, batch_size, drop_remainder)
        if self.num_batches == 0:
            raise DataError(
                f"{self.path}: {self.num_rows} training ratings give no batch of {batch_size} on each of "
                f"{world_size} rank(s); lower batch_size or the number of devices, or disable drop_remainder."
            )
        self.num_workers = num_workers
        # Where the next iteration starts: [epoch, rotation, batches to skip of each logical
        # worker's block] (`resume_plan`). Shared memory, so persistent DataLoader workers see
        # what the main process sets.
        self._position = torch.zeros(2 + max(1, num_workers), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order the next iteration yields, from its start."""
        self.set_position(epoch, 0)

    def set_position(self, epoch: int, trained: int) -> None:
        """The next iteration yields epoch `epoch` after its first `trained` batches (as the main
        process received them), in the order an uninterrupted iteration would have."""
        rotation, skips = resume_plan(self.num_batches, self.num_workers, self.batch_size, trained)
        self._position[:2] = torch.tensor([epoch, rotation])
        self._position[2:] = torch.tensor(skips)

    @property
    def epoch(self) -> int:
        return int(self._position[0])

    def worker_batches(self) -> list[int]:
        """How many batches of each logical worker's block the position skips (one entry without workers)."""
        return self._position[2:].tolist()

    def __len__(self) -> int:
        return self.num_batches

    def batch_sizes(self, first: int, last: int) -> np.ndarray:
        """Sizes of this rank's batches `[first, last)`."""
        sizes = np.full(last - first, self.batch_size, dtype=np.int64)
        if not self.drop_remainder and last == self.num_batches and last > first:
            start, stop = shard_bounds(self.num_rows, self.world_size, self.rank)
            sizes[-1] = stop - start - (self.num_batches - 1) * self.batch_size
        return sizes

    def __iter__(self) -> Iterator[RatingBatch | PackedBatches]:
        physical, num_workers = current_worker()
        if num_workers != max(1, self.num_workers):
            raise RuntimeError(f"TrainStream was built for {self.num_workers} DataLoader workers, "
                               f"read by {num_workers}: build it with num_workers={num_workers}")
        epoch, rotation = (int(value) for value in self._position[:2])
        worker = (physical + rotation) % num_workers
        first, last = worker_block(self.num_batches, num_workers, worker)
        skip = int(self._position[2 + worker])
        if first + skip >= last:
            return iter(())
        sizes = self.batch_sizes(first + skip, last)
        start = shard_bounds(self.num_rows, self.world_size, self.rank)[0] + (first + skip) * self.batch_size
        stop = start + int(sizes.sum())
        batches = rebatch(self._chunks(epoch, start, stop), sizes.tolist())
        return for_transport(batches, message_sizes(last - first, skip, self.batch_size))

    def _chunks(self, epoch: int, start: int, stop: int) -> Iterator[Columns]:
        """The shuffled rows of epoch positions `[start, stop)`, one chunk per shuffle window.

        Windows are prepared `_READ_AHEAD` at a time in threads: pyarrow decoding, numpy's
        permutation and gathers release the GIL, so they overlap each other and the training step.
        """
        seed = self.seed + epoch
        order = np.random.default_rng([seed, 0]).permutation(len(self.group_sizes))
        reader = RowReader(self.path, self.group_sizes, order)
        window = self.shuffle_window
        windows = iter(range(start // window, (stop - 1) // window + 1))

        def prepare(index: int) -> Columns:
            lo, hi = index * window, min((index + 1) * window, self.num_rows)
            rows = reader.read(lo, hi)
            permutation = np.random.default_rng([seed, 1, index]).permutation(hi - lo)
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            if (a, b) != (0, hi - lo):
                permutation = permutation[a:b]
            return tuple(column[permutation] for column in rows)  # type: ignore[return-value]

        with ThreadPoolExecutor(_READ_AHEAD, thread_name_prefix="lightning_mf-stream") as pool:
            pending = deque(pool.submit(prepare, index) for index in islice(windows, _READ_AHEAD))
            try:
                while pending:
                    chunk = pending.popleft().result()
                    pending.extend(pool.submit(prepare, index) for index in islice(windows, 1))
                    yield chunk
            finally:
                for future in pending:
                    future.cancel()


def user_starts(users: np.ndarray) -> np.ndarray:
    """Row positions where a new user begins in a user-sorted column, plus the end position."""
    change = np.flatnonzero(users[1:] != users[:-1]) + 1
    return np.concatenate(([0], change, [len(users)])).astype(np.int64)


def _first_at_or_after(starts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return starts[np.searchsorted(starts, targets, side="left")]


def eval_plan(starts: np.ndarray, batch_size: int, world_size: int, rank: int) -> np.ndarray:
    """Batch boundaries (row positions) of one rank's shard of a user-sorted split.

    Args:
        starts: `user_starts` of the split (ends with the row count).
        batch_size: Target rows per batch; batches end at the first user start at or after it.
        world_size: Number of DDP processes.
        rank: This process's rank.
    """
    rows = int(starts[-1])
    lo, hi = _first_at_or_after(starts, np.array(shard_bounds(rows, world_size, rank)))
    targets = np.arange(lo + batch_size, hi, batch_size)
    return np.unique(np.concatenate(([lo], _first_at_or_after(starts, targets), [hi])))


class EvalStream(IterableDataset):
    """A user-sorted evaluation split streamed in order, in batches of whole users, sharded by rank.

    Args:
        path: `val.parquet` or `test.parquet` of a prepared dataset.
        batch_size: Target ratings per batch; each batch ends at a user boundary.
        rank: This process's DDP rank.
        world_size: Number of DDP processes.
    """

    def __init__(self, path: str | Path, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.path = Path(path)
        parquet = open_parquet(self.path)
        check_schema(self.path, parquet.schema_arrow)
        users = parquet.read(columns=[USER]).column(USER).to_numpy()
        if len(users) and np.any(users[1:] < users[:-1]):
            row = int(np.flatnonzero(users[1:] < users[:-1])[0]) + 1
            raise DataError(f"{self.path}: rows must be sorted by user, but row {row} goes back; re-run `prepare`.")
        starts = user_starts(users)
        self.bounds = eval_plan(starts, batch_size, world_size, rank)
        if len(users) and len(self.bounds) < 2:
            raise DataError(
                f"{self.path}: its {len(starts) - 1} users ({len(users)} rows) cannot be split on user "
                f"boundaries into {world_size} non-empty shards; use fewer devices."
            )
        metadata = parquet.metadata
        self.group_sizes = np.array([metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)])

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __iter__(self) -> Iterator[RatingBatch | PackedBatches]:
        worker_id, num_workers = current_worker()
        first, last = worker_block(len(self), num_workers, worker_id)
        if first == last:
            return iter(())
        bounds = self.bounds[first : last + 1]
        reader = RowReader(self.path, self.group_sizes, np.arange(len(self.group_sizes)))
        chunks = (reader.read(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]))
        return for_transport(rebatch(chunks, np.diff(bounds).tolist()))
