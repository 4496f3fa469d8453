"""Fold-in: factors and biases for users and items the model has not trained, without retraining.

Given ratings by raw id, the rows not in the model (ids it does not know, or ids of its dataset
that training never saw) are solved in closed form (`ridge.solve_rows`) against the trained rows,
with the penalty the model was trained with. New items come first, each from its ratings by
trained users, against their factors and biases; then new users, against the trained items and
the items just folded in. An SVD++ user's term comes from the items in their ratings, as training
builds it from N(u). Ratings that cannot be used are counted, never dropped silently: those by
trained users of trained items (the model is not retrained) and those whose other side has no
factors (a new user's rating of a new item nobody trained has rated).

A sigmoid output makes the objective nonlinear in the row: fold-in refuses it with a message.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import torch
from torch import Tensor

from lightning_mf.errors import DataError
from lightning_mf.inference.id_maps import IdMap
from lightning_mf.inference.ridge import solve_rows
from lightning_mf.inference.state import ModelState
from lightning_mf.training.dense_tables import DenseTables


@dataclass(frozen=True)
class FoldInReport:
    """What a fold-in did.

    Attributes:
        users: Users folded in.
        items: Items folded in.
        ratings_used: Ratings that went into a solve.
        ratings_of_trained_rows: Ratings by trained users of trained items, not used (no retraining).
        ratings_without_factors: Ratings whose other side had no factors, not used.
        duplicates: Repeated (user, item) pairs collapsed, the last kept.
    """

    users: int
    items: int
    ratings_used: int
    ratings_of_trained_rows: int
    ratings_without_factors: int
    duplicates: int

    def describe(self) -> str:
        text = (f"folded in {self.users:,} users and {self.items:,} items from {self.ratings_used:,} ratings")
        if self.ratings_of_trained_rows:
            text += f"; {self.ratings_of_trained_rows:,} ratings by trained users of trained items not used (no retraining)"
        if self.ratings_without_factors:
            text += f"; {self.ratings_without_factors:,} ratings not used: the other side has no factors"
        if self.duplicates:
            text += f"; {self.duplicates:,} repeated (user, item) pairs collapsed, the last kept"
        return text


def check_foldable(state: ModelState) -> None:
    """Refuses models fold-in cannot solve exactly."""
    if state.tables.output != "linear":
        raise DataError("fold-in needs a model with output='linear': under a sigmoid output the objective of a new "
                        "row is not a least-squares problem, so there is no closed form. Retrain with a linear "
                        "output, or use the fallback for new users.")


def user_vectors(state: ModelState, group: Tensor, item: Tensor, rating: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Factors (SVD++ term included) and biases of `num_groups` new users from ratings of items with factors.

    Args:
        state: The model.
        group: `(m,)` the new user (0 .. num_groups - 1) of each rating; every user has one.
        item: `(m,)` item indices, all of items with factors.
        rating: `(m,)` ratings.
        num_groups: Number of users.
    """
    check_foldable(state)
    tables = state.tables
    device = tables.device
    group, item, rating = group.to(device), item.to(device, torch.int64), rating.to(device, torch.float32)
    q, b_i = tables.item_rows(item)
    target = rating[:, None] - tables.offset - b_i
    term = None
    if state.implicit is not None:
        # t_u = |N(u)|^-1/2 sum_{j in N(u)} y_j over the distinct items the user rated.
        key = torch.unique(group.long() * tables.num_items + item)
        users, items = torch.div(key, tables.num_items, rounding_mode="floor"), key % tables.num_items
        size = torch.bincount(users, minlength=num_groups).clamp(min=1).to(q.dtype)
        term = q.new_zeros(num_groups, tables.copies, tables.dim).index_add_(0, users, state.implicit[items])
        term /= size.sqrt()[:, None, None]
        target = target - (term[group] * q).sum(-1)
    factors, bias = solve_rows(q, target, group, num_groups, state.penalty)
    return (factors if term is None else factors + term), bias


def item_vectors(state: ModelState, group: Tensor, user: Tensor, rating: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Factors and biases of `num_groups` new items from ratings by users with factors (as `user_vectors`)."""
    check_foldable(state)
    tables = state.tables
    device = tables.device
    p, b_u = tables.user_rows(user.to(device))
    target = rating.to(device, torch.float32)[:, None] - tables.offset - b_u
    return solve_rows(p, target, group.to(device), num_groups, state.penalty)


def fold_in(state: ModelState, ratings: pl.DataFrame) -> tuple[ModelState, Tensor, Tensor, FoldInReport]:
    """Fold the untrained users and items of `ratings` (`user`, `item` raw ids, `rating`) into `state`.

    Returns:
        The new state, the (user, item) indices of every rating whose both sides now have an
        index (what they rated, to leave out of their recommendations), and the report.
    """
    check_foldable(state)
    missing = [name for name in ("user", "item", "rating") if name not in ratings.columns]
    if missing:
        raise DataError(f"fold-in ratings need the columns user, item and rating; missing {missing}")
    frame = pl.DataFrame({
        "user": _keys(state.users.keys(ratings["user"]), ratings["user"], "user", state.users.integer),
        "item": _keys(state.items.keys(ratings["item"]), ratings["item"], "item", state.items.integer),
        "rating": _ratings(ratings["rating"], state.tables),
    })
    unique = frame.unique(subset=["user", "item"], keep="last", maintain_order=True)
    duplicates = frame.height - unique.height
    tables = state.tables
    rating = torch.from_numpy(unique["rating"].to_numpy().copy())

    # Items first: new items against trained users.
    user_index = torch.from_numpy(state.users.indices(unique["user"]))
    item_index = torch.from_numpy(state.items.indices(unique["item"]))
    user_trained = _seen(tables.user_seen, user_index)
    item_trained = _seen(tables.item_seen, item_index)
    item_rows = ~item_trained & user_trained
    item_keys, item_group, new_item_index, items = _new_rows(unique["item"], item_rows, item_index, state.items)
    if item_keys.len():
        factors, bias = item_vectors(state, item_group, user_index[item_rows], rating[item_rows], item_keys.len())
        tables = _with_rows(tables, "item", new_item_index, factors, bias)
    state = replace(state, tables=tables, items=items, implicit=_grown(state.implicit, tables.num_items))
    item_index = torch.from_numpy(items.indices(unique["item"]))
    item_has = _seen(tables.item_seen, item_index)

    # Then users: new users against every item with factors.
    user_rows = ~user_trained & item_has
    user_keys, user_group, new_user_index, users = _new_rows(unique["user"], user_rows, user_index, state.users)
    if user_keys.len():
        factors, bias = user_vectors(state, user_group, item_index[user_rows], rating[user_rows], user_keys.len())
        tables = _with_rows(tables, "user", new_user_index, factors, bias)
    state = replace(state, tables=tables, users=users)
    user_index = torch.from_numpy(users.indices(unique["user"]))

    both = (user_index >= 0) & (item_index >= 0)
    report = FoldInReport(
        users=user_keys.len(), items=item_keys.len(),
        ratings_used=int(item_rows.sum() + user_rows.sum()),
        ratings_of_trained_rows=int((user_trained & item_trained).sum()),
        ratings_without_factors=int((~user_trained & ~item_has).sum()),
        duplicates=duplicates,
    )
    return state, user_index[both], item_index[both], report


def _keys(keys: pl.Series, given: pl.Series, role: str, integer: bool) -> pl.Series:
    """Keys of ids to fold in; an id the dataset's id type cannot hold cannot become a new row."""
    bad = keys.is_null()
    if bad.any():
        first = given.filter(bad)[0]
        kind = "integers" if integer else "strings"
        raise DataError(f"{role} id {first!r} ({int(bad.sum())} such rows) cannot be folded in: this dataset's {role} "
                        f"ids are {kind}")
    return keys.alias(role)


def _ratings(rating: pl.Series, tables: DenseTables) -> pl.Series:
    """Ratings as float32; each must be a number on the model's scale."""
    if not (rating.dtype.is_numeric()):
        raise DataError(f"fold-in ratings must be numbers, found {rating.dtype}")
    rating = rating.cast(pl.Float32)
    bad = rating.is_null() | ~rating.is_finite() | (rating < tables.rating_min) | (rating > tables.rating_max)
    if bad.fill_null(True).any():
        first = rating.filter(bad.fill_null(True))[0]
        raise DataError(f"fold-in rating {first!r} ({int(bad.fill_null(True).sum())} such rows) is not a number on the "
                        f"model's scale [{tables.rating_min:g}, {tables.rating_max:g}]")
    return rating


def _seen(seen: Tensor, index: Tensor) -> Tensor:
    seen = seen.cpu()
    return (index >= 0) & seen[index.clamp(min=0)]


def _new_rows(keys: pl.Series, rows: Tensor, index: Tensor, id_map: IdMap) -> tuple[pl.Series, Tensor, Tensor, IdMap]:
    """The distinct keys of the selected rows (in first-seen order), each rating's group among
    them, each key's table index (its own where the dataset has it, appended ones otherwise), and
    the id map with the appended keys."""
    chosen = keys.filter(pl.Series(rows.numpy()))
    distinct = chosen.unique(maintain_order=True)
    group = pl.DataFrame({"k": chosen}).join(
        pl.DataFrame({"k": distinct, "g": np.arange(distinct.len(), dtype=np.int64)}), on="k", how="left",
        maintain_order="left")["g"].to_numpy()
    existing = id_map.indices(distinct)
    appended = existing < 0
    table_index = existing.copy()
    table_index[appended] = len(id_map) + np.arange(int(appended.sum()))
    grown = id_map.extended(distinct.filter(pl.Series(appended))) if appended.any() else id_map
    return distinct, torch.from_numpy(np.ascontiguousarray(group, dtype=np.int64).copy()), torch.from_numpy(table_index), grown


def _with_rows(tables: DenseTables, side: str, index: Tensor, factors: Tensor, bias: Tensor) -> DenseTables:
    """`tables` with rows `index` of one side set (appending rows past the end), marked seen."""
    device = tables.device
    index = index.to(device)
    old_factors, old_bias, old_seen = (getattr(tables, f"{side}_{name}") for name in ("factors", "bias", "seen"))
    size = max(old_factors.shape[0], int(index.max()) + 1)
    grow = size - old_factors.shape[0]
    new_factors = torch.cat([old_factors, old_factors.new_zeros(grow, *old_factors.shape[1:])])
    new_bias = torch.cat([old_bias, old_bias.new_zeros(grow, old_bias.shape[1])])
    new_seen = torch.cat([old_seen, old_seen.new_zeros(grow)])
    new_factors[index], new_bias[index], new_seen[index] = factors, bias, True
    return replace(tables, **{f"{side}_factors": new_factors, f"{side}_bias": new_bias, f"{side}_seen": new_seen})


def _grown(implicit: Tensor | None, num_items: int) -> Tensor | None:
    """SVD++ item factors with zero rows for appended items (a folded item has no y_j)."""
    if implicit is None or implicit.shape[0] >= num_items:
        return implicit
    return torch.cat([implicit, implicit.new_zeros(num_items - implicit.shape[0], *implicit.shape[1:])])
