"""Builders of tiny test data: prepared dataset folders that follow the contract in
lightning_mf/data/schema.py, and in-memory rating batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lightning_mf.data.batch import RatingBatch
from lightning_mf.data.schema import ITEM, RATING, TIMESTAMP, USER, DatasetMeta, RatingScale, split_file

_SCHEMA = pa.schema([(USER, pa.int32()), (ITEM, pa.int32()), (RATING, pa.float32()), (TIMESTAMP, pa.int64())])


def _table(user: np.ndarray, item: np.ndarray, rating: np.ndarray, timestamp: np.ndarray) -> pa.Table:
    arrays = [pa.array(user, pa.int32()), pa.array(item, pa.int32()), pa.array(rating, pa.float32())]
    return pa.Table.from_arrays([*arrays, pa.array(timestamp, pa.int64())], schema=_SCHEMA)


def make_dataset(
    folder: str | Path,
    train_rows: int = 1000,
    val_rows: int = 200,
    test_rows: int = 200,
    num_users: int = 50,
    num_items: int = 40,
    row_group_size: int = 128,
    seed: int = 0,
) -> DatasetMeta:
    """Writes a prepared dataset folder with random half-star ratings and returns its meta.

    Args:
        folder: Where to write; created if missing.
        train_rows: Rows of train.parquet, written in random order in row groups of `row_group_size`.
        val_rows: Rows of val.parquet, sorted by user then item.
        test_rows: Rows of test.parquet, sorted by user then item.
        num_users: Users are drawn from `range(num_users)`.
        num_items: Items are drawn from `range(num_items)`.
        row_group_size: Rows per Parquet row group (all splits).
        seed: Seed of the random ratings.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = train_rows + val_rows + test_rows
    user = rng.integers(0, num_users, total).astype(np.int32)
    item = rng.integers(0, num_items, total).astype(np.int32)
    # Every user and item occurs in train, as prepare guarantees for its indices.
    user[: min(num_users, total)] = np.arange(min(num_users, total))
    item[: min(num_items, total)] = np.arange(min(num_items, total))
    rating = (rng.integers(1, 11, total) / 2).astype(np.float32)
    timestamp = rng.integers(10**9, 2 * 10**9, total)
    ends = {"train": train_rows, "val": train_rows + val_rows, "test": total}
    begin = 0
    for split, end in ends.items():
        part = slice(begin, end)
        u, i, r, t = user[part], item[part], rating[part], timestamp[part]
        if split != "train":
            order = np.lexsort((i, u))
            u, i, r, t = u[order], i[order], r[order], t[order]
        pq.write_table(_table(u, i, r, t), folder / split_file(split), row_group_size=row_group_size)
        begin = end
    train = rating[:train_rows]
    meta = DatasetMeta(
        num_users=num_users,
        num_items=num_items,
        splits={"train": {"rows": train_rows}, "val": {"rows": val_rows}, "test": {"rows": test_rows}},
        rating={"min": float(train.min()), "max": float(train.max()), "mean": float(train.mean())},
        rating_scale=RatingScale(min=0.5, max=5.0, step=0.5),
        format="synthetic",
        fingerprint=f"tests-{seed}",
    )
    ids = pa.table({"index": pa.array(np.arange(num_users), pa.int32()), "raw_id": np.arange(num_users) + 1})
    ids = ids.append_column("train_ratings", pa.array(np.bincount(user[:train_rows], minlength=num_users)))
    pq.write_table(ids, folder / "users.parquet")
    items = pa.table({"index": pa.array(np.arange(num_items), pa.int32()), "raw_id": np.arange(num_items) + 1})
    items = items.append_column("train_ratings", pa.array(np.bincount(item[:train_rows], minlength=num_items)))
    pq.write_table(items, folder / "items.parquet")
    meta.save(folder)
    return meta


def read_split(folder: str | Path, split: str) -> pa.Table:
    """One split of a dataset folder as a pyarrow table (for comparisons in tests)."""
    return pq.read_table(Path(folder) / split_file(split))


def random_rating_batch(size: int, seed: int, num_users: int, num_items: int) -> RatingBatch:
    """A seeded batch of ratings 0.5..5 in halves; few users and items make rows repeat, as real batches do."""
    generator = torch.Generator().manual_seed(seed)
    user = torch.randint(0, num_users, (size,), generator=generator, dtype=torch.int32)
    item = torch.randint(0, num_items, (size,), generator=generator, dtype=torch.int32)
    rating = torch.randint(1, 11, (size,), generator=generator).float() / 2
    return RatingBatch(user, item, rating)
