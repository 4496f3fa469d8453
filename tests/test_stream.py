"""The streams' sharding arithmetic: exact-once coverage, equal batch counts, order and windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lightning_mf.data import parquet_rows, schema, stream
from lightning_mf.data.batch import RatingBatch
from lightning_mf.data.stream import EvalStream, TrainStream, batches_per_rank
from lightning_mf.errors import DataError
from helpers import make_dataset, read_split


def write_train(path: Path, rows: int, row_group_size: int) -> Path:
    """A train file whose `item` column is the row id, so coverage is checkable exactly."""
    ids = np.arange(rows)
    table = pa.table(
        {
            "user": pa.array(ids % 7, pa.int32()),
            "item": pa.array(ids, pa.int32()),
            "rating": pa.array(ids % 5 + 1, pa.float32()),
            "timestamp": pa.array(ids, pa.int64()),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def run_rank(ds: TrainStream | EvalStream, workers: int, monkeypatch: pytest.MonkeyPatch) -> list[list[RatingBatch]]:
    """Batches each simulated DataLoader worker of one rank yields."""
    out = []
    for worker in range(workers):
        monkeypatch.setattr(stream, "current_worker", lambda w=worker: (w, workers))
        out.append(list(ds))
    monkeypatch.setattr(stream, "current_worker", lambda: (0, 1))
    return out


def test_column_names_match_the_contract() -> None:
    assert (stream.USER, stream.ITEM, stream.RATING) == (schema.USER, schema.ITEM, schema.RATING)


@pytest.mark.parametrize(
    ("rows", "world", "workers", "batch", "group", "window"),
    [
        (1000, 1, 1, 64, 100, 300),
        (1000, 2, 1, 64, 100, 256),
        (1001, 2, 2, 100, 128, 1000),
        (997, 3, 2, 50, 97, 64),
        (1003, 4, 3, 7, 256, 100),
        (640, 2, 3, 320, 64, 64),
        (11, 3, 2, 3, 3, 5),
    ],
)
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_every_rating_once_per_epoch_and_equal_batches(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rows: int,
    world: int,
    workers: int,
    batch: int,
    group: int,
    window: int,
    drop_remainder: bool,
) -> None:
    path = write_train(tmp_path / "train.parquet", rows, group)
    expected = batches_per_rank(rows, world, batch, drop_remainder)
    for epoch in (0, 1):
        seen = []
        for rank in range(world):
            ds = TrainStream(path, batch, window, seed=3, rank=rank, world_size=world, drop_remainder=drop_remainder,
                             num_workers=workers)
            ds.set_epoch(epoch)
            batches = [b for per_worker in run_rank(ds, workers, monkeypatch) for b in per_worker]
            assert len(ds) == expected == len(batches)
            sizes = [len(b.item) for b in batches]
            if drop_remainder:
                assert set(sizes) == {batch}
            else:
                odd = [s for s in sizes if s != batch]
                assert len(odd) <= 1 and all(1 <= s <= batch + 1 for s in odd)
            seen.extend(int(i) for b in batches for i in b.item)
        if drop_remainder:
            assert len(seen) == len(set(seen)) == world * expected * batch
        else:
            assert sorted(seen) == list(range(rows))


def test_batches_are_whole_typed_tensors(tmp_path: Path) -> None:
    make_dataset(tmp_path, train_rows=300)
    batch = next(iter(TrainStream(tmp_path / "train.parquet", 64, 128)))
    assert isinstance(batch, RatingBatch)
    assert (batch.user.dtype, batch.item.dtype, batch.rating.dtype) == (torch.int32, torch.int32, torch.float32)
    assert batch.user.shape == batch.item.shape == batch.rating.shape == (64,)


def items_of(ds: TrainStream, epoch: int) -> list[int]:
    ds.set_epoch(epoch)
    return [int(i) for b in ds for i in b.item]


def test_order_changes_per_epoch_and_repeats_for_same_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_train(tmp_path / "train.parquet", 2000, 256)
    first = TrainStream(path, 100, 512, seed=7)
    again = TrainStream(path, 100, 512, seed=7)
    other_seed = TrainStream(path, 100, 512, seed=8)
    assert items_of(first, 0) == items_of(again, 0)
    assert items_of(first, 0) != items_of(first, 1)
    assert items_of(first, 1) == items_of(again, 1)
    assert items_of(first, 0) != items_of(other_seed, 0)
    # Batch contents do not depend on the number of workers, only their interleaving does.
    first.set_epoch(2)
    single = {tuple(b.item.tolist()) for b in first}
    three = TrainStream(path, 100, 512, seed=7, num_workers=3)
    three.set_epoch(2)
    split = {tuple(b.item.tolist()) for w in run_rank(three, 3, monkeypatch) for b in w}
    assert single == split


def test_shuffle_stays_within_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = 128
    path = write_train(tmp_path / "train.parquet", 10 * group, group)
    reads: list[int] = []
    original = parquet_rows.RowReader.read

    def spy(self: parquet_rows.RowReader, start: int, stop: int) -> tuple[np.ndarray, ...]:
        reads.append(stop - start)
        return original(self, start, stop)

    monkeypatch.setattr(parquet_rows.RowReader, "read", spy)
    ds = TrainStream(path, 32, shuffle_window=group, seed=1)
    items = np.array(items_of(ds, 0))
    assert max(reads) <= group
    # A window equal to the row group keeps every block of `group` rows inside one row group.
    blocks = items.reshape(-1, group) // group
    assert (blocks == blocks[:, :1]).all()
    assert sorted(blocks[:, 0]) == list(range(10)) and list(blocks[:, 0]) != list(range(10))
    # A wider window mixes neighbouring row groups.
    wide = np.array(items_of(TrainStream(path, 32, shuffle_window=4 * group, seed=1), 0))
    assert len(set(wide[:group] // group)) > 1


@pytest.mark.parametrize(("world", "workers", "batch"), [(1, 1, 16), (2, 1, 40), (3, 2, 25), (2, 3, 1)])
def test_eval_batches_hold_whole_users_in_file_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: int, workers: int, batch: int
) -> None:
    make_dataset(tmp_path, val_rows=400, num_users=60, row_group_size=64)
    table = read_split(tmp_path, "val")
    users, items = table.column("user").to_numpy(), table.column("item").to_numpy()
    pieces, rank_batches = [], []
    for rank in range(world):
        ds = EvalStream(tmp_path / "val.parquet", batch, rank=rank, world_size=world)
        per_worker = run_rank(ds, workers, monkeypatch)
        batches = [b for w in per_worker for b in w]
        assert len(batches) == len(ds)
        pieces.extend(batches)
        rank_batches.append(batches)
    # Concatenated in rank and worker order, the batches are the file itself.
    assert np.array_equal(np.concatenate([b.user.numpy() for b in pieces]), users)
    assert np.array_equal(np.concatenate([b.item.numpy() for b in pieces]), items)
    owner = {}
    for index, b in enumerate(pieces):
        for user in set(b.user.tolist()):
            assert owner.setdefault(user, index) == index, f"user {user} split across batches"
    # A batch ends at the first user start at or after each multiple of `batch` past its shard's
    # start, so all but a shard's last batch are within one user's ratings of `batch`.
    counts = np.bincount(users)
    for batches in rank_batches:
        for b in batches[:-1]:
            assert batch - counts.max() < len(b.user) < batch + counts.max(), (len(b.user), batch, counts.max())


def test_eval_rejects_unsorted_file_and_train_rejects_bad_dtype(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    with pytest.raises(DataError, match=r"train.parquet: rows must be sorted by user, but row \d+"):
        EvalStream(tmp_path / "train.parquet", 10)
    table = pa.table({"user": pa.array([1, 2], pa.int64()), "item": pa.array([1, 2], pa.int32())})
    pq.write_table(table.append_column("rating", pa.array([1.0, 2.0], pa.float32())), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: column 'user' must be int32, found int64"):
        TrainStream(tmp_path / "bad.parquet", 1, 10)


def test_too_few_ratings_for_the_ranks_is_an_error(tmp_path: Path) -> None:
    path = write_train(tmp_path / "train.parquet", 3, 2)
    with pytest.raises(DataError, match="3 training ratings give no batch of 1 on each of 4"):
        TrainStream(path, 1, 10, world_size=4)
    with pytest.raises(DataError, match="give no batch of 5 on each of 1"):
        TrainStream(path, 5, 10, drop_remainder=True)
