"""What defines a prepared dataset: the options of `prepare`, shared by its CLI and the DataModule."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

InputFormat = Literal["auto", "movielens-csv", "movielens-dat", "movielens-100k", "bookcrossing", "csv", "parquet"]
SplitKind = Literal["random", "temporal", "predefined"]
BadRowPolicy = Literal["error", "skip"]
SyntheticKind = Literal["movielens", "bookcrossing"]


@dataclass
class PrepareOptions:
    """How to turn a ratings source into a split, shuffled Parquet dataset.

    Args:
        source: A ratings file (CSV, `.dat`, `u.data`, Parquet), a MovieLens or Book-Crossing
            archive (`.zip`) or its extracted folder, a MovieLens name to download (`ml-100k`,
            `ml-1m`, `ml-10m`, `ml-20m`, `ml-25m`, `ml-32m`, `ml-latest-small`, `ml-latest`),
            or `synthetic`.
        format: Input format; `auto` detects it from the file name and header.
        split: `random` (seeded fractions), `temporal` (global time cut-offs) or `predefined`
            (a train/test file pair: `fold` of ml-100k, or `source` + `test_source`).
        val_fraction: Share of rows for validation. For `predefined` it is carved at random out
            of the train file.
        test_fraction: Share of rows for test (`random` and `temporal`).
        val_start: `temporal` only: ratings at or after this time (epoch seconds or ISO date)
            go to validation. Unset: the time quantile given by the fractions.
        test_start: `temporal` only: ratings at or after this time go to test.
        fold: `predefined` only: an ml-100k fold name (`u1`..`u5`, `ua`, `ub`).
        test_source: `predefined` only: the test file paired with `source` as train file.
        seed: Seed for subsetting, splitting, shuffling and synthetic data.
        drop_implicit: Remove 0 ratings (implicit feedback). Unset: on for Book-Crossing.
        subset: Keep a reproducible random sample of this many rows before splitting.
        min_user_ratings: Drop users with fewer ratings, repeatedly with `min_item_ratings` (k-core).
        min_item_ratings: Drop items with fewer ratings (k-core).
        on_bad_rows: `error` stops at the first malformed line; `skip` writes malformed lines to
            `rejected.csv`, counts them in meta.json and goes on.
        item_catalog: Treat a rating whose item is missing from the dataset's own item list
            (`movies.csv`, `movies.dat`, `u.item` next to the ratings file) as a malformed line.
        rating_min: Lowest valid rating; unset: the format's scale (the data's minimum for
            generic files).
        rating_max: Highest valid rating; unset as for `rating_min`.
        user_col: Generic CSV / Parquet: the user id column.
        item_col: Generic CSV / Parquet: the item id column.
        rating_col: Generic CSV / Parquet: the rating column.
        timestamp_col: Generic CSV / Parquet: the timestamp column, if any.
        separator: Generic CSV: the field separator.
        row_group_size: Rows per Parquet row group of train.parquet (the streaming unit).
        cache_dir: Where downloaded archives are kept.
        mirror: Base URL to download MovieLens archives from instead of files.grouplens.org.
        checksum: Expected MD5 or SHA-256 of a downloaded archive, overriding the known one.
        rows: `synthetic` only: number of ratings.
        users: `synthetic` only: number of users.
        items: `synthetic` only: number of items.
        synthetic_kind: `synthetic` only: `movielens` (half stars 0.5-5) or `bookcrossing`
            (0-10 with implicit zeros).
    """

    source: str
    format: InputFormat = "auto"
    split: SplitKind = "random"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    val_start: str | None = None
    test_start: str | None = None
    fold: str | None = None
    test_source: str | None = None
    seed: int = 42
    drop_implicit: bool | None = None
    subset: int | None = None
    min_user_ratings: int = 1
    min_item_ratings: int = 1
    on_bad_rows: BadRowPolicy = "error"
    item_catalog: bool = True
    rating_min: float | None = None
    rating_max: float | None = None
    user_col: str = "user"
    item_col: str = "item"
    rating_col: str = "rating"
    timestamp_col: str | None = None
    separator: str = ","
    row_group_size: int = 262_144
    cache_dir: str = "data/downloads"
    mirror: str | None = None
    checksum: str | None = None
    rows: int = 1_000_000
    users: int = 10_000
    items: int = 5_000
    synthetic_kind: SyntheticKind = "movielens"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
