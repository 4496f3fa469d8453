"""The in-memory build of a dataset from parsed raw files: code ids, filter, split, write."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from lightning_mf.data.schema import (
    ITEM,
    ITEMS_FILE,
    RATING,
    TIMESTAMP,
    USER,
    USERS_FILE,
    DatasetMeta,
    RatingScale,
    split_file,
)
from lightning_mf.errors import DataError
from lightning_mf.prepare import filters
from lightning_mf.prepare.indexing import IdIndex, compact, index_ids
from lightning_mf.prepare.options import PrepareOptions
from lightning_mf.prepare.split import Split, predefined_split, random_split, temporal_split
from lightning_mf.prepare.writer import sort_for_eval, write_id_table, write_ratings

if TYPE_CHECKING:
    from lightning_mf.prepare.readers import RawRatings

_IS_TEST = "__is_test"
REJECTED_FILE = "rejected.csv"


@dataclass
class DatasetBuild:
    """Coded ratings in line order (train file first, then a predefined test file) and their ids."""

    coded: pl.DataFrame
    users: IdIndex
    items: IdIndex
    format: str
    scale: RatingScale
    rejected: pl.DataFrame
    test_file: str | None = None
    records: list[filters.FilterRecord] = field(default_factory=list)

    @classmethod
    def from_raw(cls, train: RawRatings, test: RawRatings | None = None) -> DatasetBuild:
        """Replace raw ids by int32 codes over both files, so later steps touch only small columns."""
        frames = [train.frame.with_columns(pl.lit(False).alias(_IS_TEST))]
        rejected = [train.rejected]
        if test is not None:
            frames.append(test.frame.with_columns(pl.lit(True).alias(_IS_TEST)))
            rejected.append(test.rejected)
        for column in (USER, ITEM):
            if len({f.schema[column] for f in frames}) > 1:
                frames = [f.with_columns(pl.col(column).cast(pl.String)) for f in frames]
        raw = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
        if raw.height == 0:
            raise DataError(f"{train.files[0]}: no valid ratings to prepare")
        users = index_ids(raw[USER])
        items = index_ids(raw[ITEM])
        coded = pl.DataFrame(
            {
                USER: users.codes,
                ITEM: items.codes,
                RATING: raw[RATING],
                TIMESTAMP: raw[TIMESTAMP],
                _IS_TEST: raw[_IS_TEST],
            }
        )
        return cls(
            coded=coded,
            users=users,
            items=items,
            format=train.format,
            scale=train.scale,
            rejected=pl.concat(rejected, how="vertical"),
            test_file=str(test.files[0]) if test is not None else None,
        )

    def write_rejected(self, folder: Path) -> None:
        if self.rejected.height:
            self.rejected.write_csv(folder / REJECTED_FILE)

    def apply_filters(self, options: PrepareOptions) -> None:
        """Collapse duplicates, drop implicit zeros, subset, k-core: in this order, each counted."""
        coded, record = filters.collapse_duplicates(self.coded, len(self.items))
        self.records.append(record)
        drop = options.drop_implicit if options.drop_implicit is not None else self.format == "bookcrossing"
        if drop:
            coded, record = filters.drop_implicit(coded)
            self.records.append(record)
            self.scale = self.scale.explicit_only()
        if options.subset is not None:
            coded, record = filters.take_subset(coded, options.subset, options.seed)
            self.records.append(record)
        if options.min_user_ratings > 1 or options.min_item_ratings > 1:
            coded, record = filters.k_core(
                coded, len(self.users), len(self.items), options.min_user_ratings, options.min_item_ratings
            )
            self.records.append(record)
        if coded.height == 0:
            raise DataError("no ratings are left after filtering; relax --subset / --min_*_ratings")
        self.coded = coded
        self._compact_ids()

    def _compact_ids(self) -> None:
        """Filters may remove every rating of some users or items: renumber the survivors."""
        user_codes, kept_users = compact(self.coded[USER].to_numpy(), len(self.users))
        item_codes, kept_items = compact(self.coded[ITEM].to_numpy(), len(self.items))
        self.users = IdIndex(self.users.raw_ids.gather(kept_users), user_codes)
        self.items = IdIndex(self.items.raw_ids.gather(kept_items), item_codes)
        self.coded = self.coded.with_columns(pl.Series(USER, user_codes), pl.Series(ITEM, item_codes))

    def split(self, options: PrepareOptions) -> Split:
        if options.split == "random":
            return random_split(self.coded.height, options.val_fraction, options.test_fraction, options.seed)
        if options.split == "temporal":
            timestamps = self.coded[TIMESTAMP]
            if timestamps.null_count():
                raise DataError(
                    f"--split temporal needs a timestamp on every rating; {timestamps.null_count():,} "
                    "have none (use --split random, or name the column with --timestamp_col)"
                )
            return temporal_split(
                timestamps.to_numpy(),
                options.val_fraction,
                options.test_fraction,
                options.seed,
                options.val_start,
                options.test_start,
            )
        return predefined_split(self.coded[_IS_TEST].to_numpy(), options.val_fraction, options.seed, str(self.test_file))

    def split_and_write(self, options: PrepareOptions, folder: Path) -> DatasetMeta:
        split = self.split(options)
        columns = self.coded.drop(_IS_TEST)
        train = columns[split.train]
        write_ratings(folder / split_file("train"), train, options.row_group_size)
        evals = {name: sort_for_eval(columns[rows]) for name, rows in (("val", split.val), ("test", split.test))}
        for name, frame in evals.items():
            write_ratings(folder / split_file(name), frame, options.row_group_size)
        return assemble_meta(
            folder,
            train=train,
            evals=evals,
            users=self.users.raw_ids,
            items=self.items.raw_ids,
            scale=self.scale,
            input_format=self.format,
            split_spec=split.spec,
            records=self.records,
            rejected_rows=self.rejected.height,
        )


def assemble_meta(
    folder: Path,
    *,
    train: pl.DataFrame,
    evals: dict[str, pl.DataFrame],
    users: pl.Series,
    items: pl.Series,
    scale: RatingScale,
    input_format: str,
    split_spec: dict,
    records: list[filters.FilterRecord],
    rejected_rows: int,
) -> DatasetMeta:
    """Write the id tables and collect what meta.json says about the written splits."""
    if train.height == 0:
        raise DataError("the split left no training rows; lower --val_fraction / --test_fraction")
    user_counts = np.bincount(train[USER].to_numpy(), minlength=len(users))
    item_counts = np.bincount(train[ITEM].to_numpy(), minlength=len(items))
    write_id_table(folder / USERS_FILE, users.rename("raw_id"), user_counts)
    write_id_table(folder / ITEMS_FILE, items.rename("raw_id"), item_counts)
    ratings = train[RATING]
    unseen = {name: unseen_counts(frame, user_counts, item_counts) for name, frame in evals.items()}
    return DatasetMeta(
        num_users=len(users),
        num_items=len(items),
        splits={"train": {"rows": train.height}, **{name: {"rows": f.height} for name, f in evals.items()}},
        rating={"min": float(ratings.min()), "max": float(ratings.max()), "mean": float(ratings.mean())},
        rating_scale=scale,
        format=input_format,
        split_spec=split_spec,
        filters=[r.as_dict() for r in records],
        rejected_rows=rejected_rows,
        unseen=unseen,
    )


def unseen_counts(frame: pl.DataFrame, user_counts: np.ndarray, item_counts: np.ndarray) -> dict[str, int]:
    """Rows of an eval split whose user or item has no training rating (cold start)."""
    new_user = user_counts[frame[USER].to_numpy()] == 0
    new_item = item_counts[frame[ITEM].to_numpy()] == 0
    return {
        "unseen_user": int(new_user.sum()),
        "unseen_item": int(new_item.sum()),
        "unseen_either": int((new_user | new_item).sum()),
    }
