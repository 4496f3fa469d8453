"""`prepare --source synthetic`: generated ratings straight into the dataset layout, in bounded memory.

Rows arrive in chunks of whole users (ascending), so val/test come out sorted by writing each
chunk's share sorted. Train is shuffled out of core: rows go to random bucket files, then each
bucket is permuted in memory and appended, so memory stays O(bucket + users + items) at any size.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from lightning_mf.data.schema import ITEM, ITEMS_FILE, RATING, TIMESTAMP, USER, USERS_FILE, DatasetMeta, split_file
from lightning_mf.errors import DataError
from lightning_mf.prepare.build import unseen_counts
from lightning_mf.prepare.filters import FilterRecord
from lightning_mf.prepare.options import PrepareOptions
from lightning_mf.prepare.split import check_fractions, parse_time
from lightning_mf.prepare.synthetic import SyntheticSpec, generate_chunks, scale_of
from lightning_mf.prepare.writer import RatingsWriter, ratings_table, sort_for_eval, write_id_table

BUCKET_ROWS = 4_000_000
CHUNK_ROWS = 2_000_000


def spec_from_options(options: PrepareOptions) -> SyntheticSpec:
    return SyntheticSpec(
        rows=options.rows, users=options.users, items=options.items, kind=options.synthetic_kind, seed=options.seed
    )


def _check(options: PrepareOptions) -> None:
    unsupported = {
        "--subset": options.subset is not None,
        "--min_user_ratings / --min_item_ratings": options.min_user_ratings > 1 or options.min_item_ratings > 1,
        "--split predefined": options.split == "predefined",
        "--split temporal without --test_start": options.split == "temporal" and options.test_start is None,
    }
    bad = [name for name, used in unsupported.items() if used]
    if bad:
        raise DataError(
            f"{', '.join(bad)} not supported with --source synthetic (set --rows for size; "
            "temporal splits need explicit --val_start / --test_start)"
        )
    check_fractions(options.val_fraction, options.test_fraction)


class _SplitCounter:
    """Per-chunk split sizes whose running totals round exactly like one global split."""

    def __init__(self, val_fraction: float, test_fraction: float) -> None:
        self.fractions = (val_fraction, test_fraction)
        self.seen = 0

    def take(self, rows: int) -> tuple[int, int]:
        before, after = self.seen, self.seen + rows
        self.seen = after
        return tuple(round(after * f) - round(before * f) for f in self.fractions)  # type: ignore[return-value]


def build_synthetic(options: PrepareOptions, folder: Path) -> DatasetMeta:
    """Generate, split and write a synthetic dataset; returns its meta (without fingerprint)."""
    _check(options)
    spec = spec_from_options(options)
    drop = options.drop_implicit if options.drop_implicit is not None else spec.kind == "bookcrossing"
    buckets = max(1, math.ceil(spec.rows / BUCKET_ROWS))
    bucket_dir = folder / "_buckets"
    bucket_dir.mkdir()
    bucket_writers: list[pq.ParquetWriter | None] = [None] * buckets
    counter = _SplitCounter(options.val_fraction, options.test_fraction)
    val_cut = parse_time(options.val_start, "val_start") if options.val_start else None
    test_cut = parse_time(options.test_start, "test_start") if options.test_start else None
    user_counts = np.zeros(spec.users, dtype=np.int64)
    item_counts = np.zeros(spec.items, dtype=np.int64)
    stats = _RatingStats()
    dropped = 0
    last_user = -1
    eval_writers = {name: RatingsWriter(folder / split_file(name), options.row_group_size) for name in ("val", "test")}
    for index, chunk in enumerate(generate_chunks(spec, CHUNK_ROWS)):
        if chunk.height and int(chunk[USER].min()) < last_user:
            raise RuntimeError("synthetic chunks must come sorted by user, so val/test stay sorted")
        last_user = int(chunk[USER].max()) if chunk.height else last_user
        if drop:
            kept = chunk.filter(pl.col(RATING) != 0)
            dropped += chunk.height - kept.height
            chunk = kept
        rng = np.random.default_rng([spec.seed, index, 1])
        if options.split == "random":
            n_val, n_test = counter.take(chunk.height)
            order = rng.permutation(chunk.height)
            parts = np.split(order, [n_val, n_val + n_test])
            val, test, train = (chunk[p] for p in parts)
        else:
            ts = pl.col(TIMESTAMP)
            test = chunk.filter(ts >= test_cut)
            val = chunk.filter((ts >= val_cut) & (ts < test_cut)) if val_cut is not None else chunk.clear()
            train = chunk.filter(ts < (val_cut if val_cut is not None else test_cut))
        eval_writers["val"].write(sort_for_eval(val))
        eval_writers["test"].write(sort_for_eval(test))
        user_counts += np.bincount(train[USER].to_numpy(), minlength=spec.users)
        item_counts += np.bincount(train[ITEM].to_numpy(), minlength=spec.items)
        stats.add(train[RATING])
        _scatter_to_buckets(train, buckets, rng, bucket_dir, bucket_writers)
    for writer in eval_writers.values():
        writer.close()
    for writer in bucket_writers:
        if writer is not None:
            writer.close()
    train_rows = _gather_buckets(bucket_dir, buckets, spec.seed, folder / split_file("train"), options.row_group_size)
    if train_rows == 0:
        raise DataError("the split left no training rows; lower --val_fraction / --test_fraction or move --test_start")
    ids_users = pl.Series("raw_id", np.arange(spec.users, dtype=np.int64))
    ids_items = pl.Series("raw_id", np.arange(spec.items, dtype=np.int64))
    write_id_table(folder / USERS_FILE, ids_users, user_counts)
    write_id_table(folder / ITEMS_FILE, ids_items, item_counts)
    scale = scale_of(spec.kind)
    records = []
    if drop:
        records.append(FilterRecord("drop_implicit", dropped, {"rating": 0}))
        scale = scale.explicit_only()
    split_spec = {
        "kind": options.split,
        "val_fraction": options.val_fraction,
        "test_fraction": options.test_fraction,
        "val_start": val_cut,
        "test_start": test_cut,
        "seed": spec.seed,
    }
    return DatasetMeta(
        num_users=spec.users,
        num_items=spec.items,
        splits={
            "train": {"rows": train_rows},
            "val": {"rows": eval_writers["val"].rows},
            "test": {"rows": eval_writers["test"].rows},
        },
        rating=stats.as_dict(),
        rating_scale=scale,
        format=f"synthetic-{spec.kind}",
        sources=[{"synthetic": {k: getattr(spec, k) for k in spec.__dataclass_fields__}}],
        split_spec=split_spec,
        filters=[r.as_dict() for r in records],
        unseen={name: _unseen_in_file(folder / split_file(name), user_counts, item_counts) for name in ("val", "test")},
    )


class _RatingStats:
    def __init__(self) -> None:
        self.count, self.total, self.min, self.max = 0, 0.0, math.inf, -math.inf

    def add(self, ratings: pl.Series) -> None:
        if len(ratings):
            self.count += len(ratings)
            self.total += float(ratings.cast(pl.Float64).sum())
            self.min = min(self.min, float(ratings.min()))
            self.max = max(self.max, float(ratings.max()))

    def as_dict(self) -> dict[str, float]:
        return {"min": self.min, "max": self.max, "mean": self.total / max(self.count, 1)}


def _scatter_to_buckets(
    train: pl.DataFrame, buckets: int, rng: np.random.Generator, folder: Path, writers: list[pq.ParquetWriter | None]
) -> None:
    if train.height == 0:
        return
    target = rng.integers(0, buckets, size=train.height)
    order = np.argsort(target, kind="stable")
    bounds = np.searchsorted(target[order], np.arange(buckets + 1))
    for bucket in range(buckets):
        rows = order[bounds[bucket] : bounds[bucket + 1]]
        if len(rows) == 0:
            continue
        table = ratings_table(train[rows])
        if writers[bucket] is None:
            writers[bucket] = pq.ParquetWriter(folder / f"bucket-{bucket:05d}.parquet", table.schema)
        writers[bucket].write_table(table)


def _gather_buckets(folder: Path, buckets: int, seed: int, path: Path, row_group_size: int) -> int:
    with RatingsWriter(path, row_group_size) as writer:
        for bucket in range(buckets):
            file = folder / f"bucket-{bucket:05d}.parquet"
            if not file.exists():
                continue
            rows = pl.read_parquet(file)
            rows = rows[np.random.default_rng([seed, bucket, 3]).permutation(rows.height)]
            writer.write(rows)
            file.unlink()
    folder.rmdir()
    return writer.rows


def _unseen_in_file(path: Path, user_counts: np.ndarray, item_counts: np.ndarray) -> dict[str, int]:
    """`unseen_counts` summed over row groups, so a large eval file is never loaded whole."""
    totals = {"unseen_user": 0, "unseen_item": 0, "unseen_either": 0}
    parquet = pq.ParquetFile(path)
    for group in range(parquet.num_row_groups):
        frame = pl.from_arrow(parquet.read_row_group(group, columns=[USER, ITEM]))
        for key, value in unseen_counts(frame, user_counts, item_counts).items():
            totals[key] += value
    return totals
