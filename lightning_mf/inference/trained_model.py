"""`TrainedModel`: a trained model used by raw id (predict, recommend, fold in); `lightning_mf.load` returns one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor

from lightning_mf.data.schema import ITEM, USER, split_file
from lightning_mf.errors import DataError
from lightning_mf.inference.fold_in import FoldInReport, fold_in, user_vectors
from lightning_mf.inference.id_maps import IdMap, ids_series
from lightning_mf.inference.state import ModelState
from lightning_mf.inference.top_items import DEFAULT_BLOCK_BYTES, top_items, top_items_of_users
from lightning_mf.training.user_items import UserItems

Ids = pl.Series | Sequence[Any] | np.ndarray
FALLBACKS = ("model", "user unseen", "item unseen", "global mean")
EXCLUDABLE_SPLITS = ("val", "test")


class TrainedModel:
    """Predictions, recommendations and fold-in of a trained model, raw ids in and out.

    Build it with `lightning_mf.load(checkpoint_or_export_dir)`. Ids are matched by value (see
    `id_maps`); an id the model does not know is served by the fallback, never an error.

    Args:
        state: The loaded model (`checkpoint_loading.load_checkpoint`, `export.read_export`).
    """

    def __init__(self, state: ModelState) -> None:
        self.state = state
        self._train: UserItems | None = None
        self._splits: dict[str, UserItems] = {}
        self._rated: list[UserItems] = []  # what folded-in ratings name, left out of recommendations

    @property
    def device(self) -> torch.device:
        return self.state.tables.device

    @property
    def users(self) -> IdMap:
        return self.state.users

    @property
    def items(self) -> IdMap:
        return self.state.items

    def predict(self, users: Ids, items: Ids) -> pl.DataFrame:
        """Predicted ratings of (user, item) pairs.

        Args:
            users: Raw user ids.
            items: Raw item ids, as many.

        Returns:
            `user`, `item` (the ids, in the dataset's id type where they fit it), `prediction`
            (float32, clipped to the scale) and `fallback`: `model`, `user unseen`, `item unseen`
            or `global mean` (a user or item that is unknown or has no trained factors).
        """
        user_ids, item_ids = _as_series(users, "user"), _as_series(items, "item")
        if len(user_ids) != len(item_ids):
            raise DataError(f"predict: {len(user_ids)} users but {len(item_ids)} items; give one of each per pair")
        user_index = torch.from_numpy(self.users.indices(user_ids))
        item_index = torch.from_numpy(self.items.indices(item_ids))
        tables = self.state.tables
        with torch.no_grad():
            prediction = tables.clip(tables.score_pairs(user_index, item_index)).cpu().numpy()
        user_ok = _seen(tables.user_seen, user_index)
        item_ok = _seen(tables.item_seen, item_index)
        code = np.select([user_ok & item_ok, item_ok, user_ok], [0, 1, 2], default=3)
        return pl.DataFrame({
            "user": _id_column(self.users, user_ids, "user"),
            "item": _id_column(self.items, item_ids, "item"),
            "prediction": pl.Series(prediction, dtype=pl.Float32),
            "fallback": pl.Series(np.asarray(FALLBACKS)[code], dtype=pl.String),
        })

    def recommend(self, users: Ids | None = None, k: int = 10, exclude_seen: bool = True,
                  exclude: Sequence[str] = (), block_bytes: int = DEFAULT_BLOCK_BYTES) -> pl.DataFrame:
        """The top `k` items of each user, best first.

        Only items with trained (or folded-in) factors are recommended. A user the model does not
        know gets the fallback ranking (by item bias).

        Args:
            users: Raw user ids; None: every user of the model (folded-in ones included).
            k: Items per user.
            exclude_seen: Leave out the items each user rated in training (and in folded-in ratings).
            exclude: Also leave out the user's items of these splits of the dataset folder (`val`, `test`).
            block_bytes: Memory of one block of scores (users x items).

        Returns:
            `user`, `item` (raw ids), `rank` (1..k) and `score` (the predicted rating, as `predict`).
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise DataError(f"recommend: k must be a positive integer, got {k!r}")
        if users is None:
            user_ids = self.users.raw_ids
            index = torch.arange(len(self.users))
        else:
            user_ids = _as_series(users, "user")
            index = torch.from_numpy(self.users.indices(user_ids))
        sets = self._exclusions(exclude_seen, exclude)
        with torch.no_grad():
            items, scores = top_items_of_users(self.state.tables, index, k, sets, self.state.tables.item_seen,
                                               block_bytes)
        return self._table(_id_column(self.users, user_ids, "user"), items, scores)

    def recommend_for_ratings(self, items: Ids, ratings: Sequence[float] | np.ndarray, k: int = 10,
                              exclude_seen: bool = True) -> pl.DataFrame:
        """Recommendations for one new user given by their ratings, folded in for this call only.

        Ratings of items without factors are left out of the solve; with none left, the user gets
        the fallback ranking. Returns the columns of `recommend` less `user`.
        """
        item_ids = _as_series(items, "item")
        item_index = torch.from_numpy(self.items.indices(item_ids))
        rating = torch.as_tensor(np.asarray(ratings, dtype=np.float32))
        if rating.numel() != item_index.numel():
            raise DataError(f"recommend: {item_index.numel()} items but {rating.numel()} ratings")
        tables = self.state.tables
        usable = _seen(tables.item_seen, item_index)
        with torch.no_grad():
            if usable.any():
                group = torch.zeros(int(usable.sum()), dtype=torch.int64)
                factors, bias = user_vectors(self.state, group, item_index[usable], rating[usable], 1)
            else:
                factors, bias = tables.user_rows(torch.tensor([-1]))
            rated = item_index[item_index >= 0]
            exclude = []
            if exclude_seen and rated.numel():
                own = UserItems(torch.tensor([0, rated.numel()]), rated.int())
                exclude.append((own.to(self.device), torch.zeros(1, dtype=torch.int64, device=self.device)))
            found, scores = top_items(tables, factors, bias, k, exclude, tables.item_seen)
        return self._table(None, found, scores).drop("user")

    def fold_in(self, ratings: pl.DataFrame | str | Path) -> FoldInReport:
        """Give users and items without trained factors their own, from ratings, without retraining.

        Args:
            ratings: A frame with `user`, `item` (raw ids) and `rating`, or a ratings file (CSV with
                those columns, a MovieLens `ratings.csv`, or Parquet), checked line by line.

        Returns:
            What was folded in and which ratings could not be used.
        """
        if not isinstance(ratings, pl.DataFrame):
            ratings = self._read_ratings(Path(ratings))
        state, user, item, report = fold_in(self.state, ratings)
        self.state = state
        if user.numel():
            self._rated.append(UserItems.from_pairs(user, item, len(state.users)).to(self.device))
        return report

    def _read_ratings(self, path: Path) -> pl.DataFrame:
        from lightning_mf.prepare.readers import read_ratings

        tables = self.state.tables
        return read_ratings(path, rating_min=tables.rating_min, rating_max=tables.rating_max).frame

    def _exclusions(self, exclude_seen: bool, splits: Sequence[str]) -> list[UserItems]:
        unknown = [split for split in splits if split not in EXCLUDABLE_SPLITS]
        if unknown:
            raise DataError(f"recommend: can exclude the splits {', '.join(EXCLUDABLE_SPLITS)}, not {unknown}")
        sets = []
        if exclude_seen:
            sets += [self.train_items(), *self._rated]
        sets += [self.split_items(split) for split in splits]
        return sets

    def train_items(self) -> UserItems:
        """Each user's training items (read once from the dataset folder or the export)."""
        if self._train is None:
            path = self.state.train_pairs_file
            if path is None:
                path = self._dataset_file("train", "leave out the items each user rated in training")
            self._train = self._read_pairs(path)
        return self._train

    def rated_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """User and item indices of every training rating and every folded-in rating."""
        users, items = [], []
        for sets in (self.train_items(), *self._rated):
            counts = (sets.indptr[1:] - sets.indptr[:-1]).cpu().numpy()
            users.append(np.repeat(np.arange(sets.num_users, dtype=np.int64), counts))
            items.append(sets.items.cpu().numpy().astype(np.int64))
        return np.concatenate(users), np.concatenate(items)

    def split_items(self, split: str) -> UserItems:
        """Each user's items of the dataset folder's `val` or `test` split."""
        if split not in self._splits:
            self._splits[split] = self._read_pairs(self._dataset_file(split, f"exclude the {split} split"))
        return self._splits[split]

    def _dataset_file(self, split: str, purpose: str) -> Path:
        folder = self.state.data_dir
        if folder is None or not (folder / split_file(split)).is_file():
            raise DataError(f"to {purpose}, the dataset folder the model was trained on is needed "
                            f"({folder or 'not recorded'} has no {split_file(split)}); give it with --data_dir")
        return folder / split_file(split)

    def _read_pairs(self, path: Path) -> UserItems:
        """A split's (user, item) pairs grouped by user. Polars sorts the two int32 columns, which
        at 24M pairs costs a third of the memory of an int64 argsort and its gathers."""
        frame = pl.read_parquet(path, columns=[USER, ITEM]).sort(USER)
        users = frame[USER].to_numpy()
        if frame.height and (int(users[0]) < 0 or int(users[-1]) >= len(self.users)):
            raise DataError(f"{path}: user indices must lie in [0, {len(self.users)}); is it this model's dataset?")
        counts = np.bincount(users, minlength=len(self.users))
        indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        items = torch.from_numpy(frame[ITEM].to_numpy(writable=True).astype(np.int32, copy=False))
        del frame, users
        return UserItems(indptr, items).to(self.device)

    def _table(self, user_ids: pl.Series | None, items: Tensor, scores: Tensor) -> pl.DataFrame:
        """Long format: one row per recommended item, unfilled slots (-1) dropped."""
        rows, k = items.shape
        keep = (items >= 0).numpy().ravel()
        item_index = items.numpy().ravel()[keep]
        user_pos = np.repeat(np.arange(rows), k)[keep]
        users = user_ids.gather(pl.Series(user_pos)) if user_ids is not None else pl.Series("user", user_pos)
        return pl.DataFrame({
            "user": users.alias("user"),
            "item": self.items.raw(item_index).alias("item"),
            "rank": pl.Series(np.tile(np.arange(1, k + 1, dtype=np.int32), rows)[keep], dtype=pl.Int32),
            "score": pl.Series(scores.numpy().ravel()[keep], dtype=pl.Float32),
        })


def _as_series(ids: Ids, name: str) -> pl.Series:
    if isinstance(ids, pl.Series):
        return ids.alias(name)
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__"):
        raise DataError(f"{name}s must be a list of ids, got {type(ids).__name__}")
    return ids_series(ids).alias(name)


def _id_column(id_map: IdMap, given: pl.Series, name: str) -> pl.Series:
    """The ids in the map's type; where one does not fit it (`abc` among integer ids), all as strings."""
    keys = id_map.keys(given)
    if keys.null_count() > given.null_count():
        text = given.cast(pl.String)
        return (text.str.strip_chars() if id_map.integer else text).alias(name)
    return keys.alias(name)


def _seen(seen: Tensor, index: Tensor) -> np.ndarray:
    seen = seen.cpu()
    return ((index >= 0) & seen[index.clamp(min=0)]).numpy()
