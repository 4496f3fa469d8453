"""What the synthetic generator makes: `SyntheticSpec`, checked in full before anything is drawn.

A spec that passes here can always be generated, so a bad field fails at once with its name, the
allowed range and the value given, not deep inside the generator. The per-kind defaults (MovieLens
or Book-Crossing) fill the fields left as None, so a spec only states what it changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lightning_mf.data.schema import RatingScale
from lightning_mf.errors import DataError

SyntheticKind = Literal["movielens", "bookcrossing"]
KINDS: tuple[str, ...] = ("movielens", "bookcrossing")

_MAX_INDEX = 2**31 - 1  # user and item indices are int32
_KIND_DEFAULTS: dict[str, dict[str, float]] = {
    "movielens": dict(
        global_mean=3.56, user_bias_std=0.5, item_bias_std=0.5, interaction_std=0.55, noise_std=0.7
    ),
    "bookcrossing": dict(
        global_mean=7.65, user_bias_std=1.0, item_bias_std=1.0, interaction_std=0.8, noise_std=1.1
    ),
}


def scale_of(kind: str) -> RatingScale:
    """The rating scale of a synthetic kind: MovieLens half stars or Book-Crossing 0..10."""
    if kind == "movielens":
        return RatingScale(min=0.5, max=5.0, step=0.5)
    if kind == "bookcrossing":
        return RatingScale(min=0.0, max=10.0, step=1.0)
    raise DataError(f"synthetic kind={kind!r} is unknown; expected one of {', '.join(KINDS)}")


@dataclass
class SyntheticSpec:
    """What to generate; the same spec always gives the same ratings.

    Args:
        rows: Ratings in total; at least max(users, items), at most users * items / 2.
        users: Number of users (indices 0..users-1), each with at least one rating.
        items: Number of items (indices 0..items-1), each with at least one rating.
        kind: "movielens" (half stars 0.5..5) or "bookcrossing" (0..10, 0 = implicit).
        seed: Seed of every random draw.
        rank: Rank of the ground-truth user and item factors.
        noise_std: Std of the Gaussian noise added before rounding (None: 0.7 MovieLens,
            1.1 Book-Crossing); it sets the floor no model can beat.
        global_mean: Centre of the latent rating before rounding and clipping (None: 3.56 / 7.65).
        user_bias_std: Std of the user biases (None: 0.5 / 1.0).
        item_bias_std: Std of the item biases (None: 0.5 / 1.0).
        interaction_std: Std of the factor dot product; the factors get std
            (interaction_std**2 / rank) ** 0.25, so the rating spread does not depend on `rank`
            (None: 0.55 / 0.8).
        popularity_bias_corr: Correlation of an item's bias with its log popularity (popular
            movies are rated higher).
        user_activity_sigma: Lognormal sigma of ratings per user beyond the minimum.
        min_user_ratings: Minimum ratings per user (ML-25M keeps users with >= 20); lowered to
            rows // (2 * users) when the rows cannot afford it.
        popularity_exponent: Tail exponent of the item popularity weights.
        popularity_head: Items in the flat head of the popularity curve, an absolute count: the
            top items reach about half of the users whatever the catalogue size.
        whole_star_share: MovieLens only: share of users who rate in whole stars.
        implicit_share: Book-Crossing only: mean share of implicit 0 ratings (BX: 62%).
        activity_days: Median span of one user's ratings, in days.
        first_timestamp: Earliest timestamp, epoch seconds (ML-25M: 1995-01-09).
        last_timestamp: Latest timestamp, epoch seconds (ML-25M: 2019-11-21).
    """

    rows: int
    users: int
    items: int
    kind: SyntheticKind = "movielens"
    seed: int = 42
    rank: int = 10
    noise_std: float | None = None
    global_mean: float | None = None
    user_bias_std: float | None = None
    item_bias_std: float | None = None
    interaction_std: float | None = None
    popularity_bias_corr: float = 0.3
    user_activity_sigma: float = 1.4
    min_user_ratings: int = 20
    popularity_exponent: float = 1.7
    popularity_head: float = 100.0
    whole_star_share: float = 0.4
    implicit_share: float = 0.62
    activity_days: float = 30.0
    first_timestamp: int = 789_652_009
    last_timestamp: int = 1_574_327_703

    def __post_init__(self) -> None:
        scale_of(self.kind)
        for name, value in _KIND_DEFAULTS[self.kind].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name, (low, high, integer, open_low) in _RANGES.items():
            check_number(name, getattr(self, name), low, high, integer, open_low)
        if self.rows < max(self.users, self.items):
            raise DataError(
                f"synthetic spec: rows={self.rows} is less than max(users, items)="
                f"{max(self.users, self.items)}: every user and every item needs a rating; "
                "raise rows or lower users/items"
            )
        if self.rows > self.users * self.items // 2:
            raise DataError(
                f"synthetic spec: rows={self.rows} exceeds half of users * items = "
                f"{self.users * self.items // 2}: rating data is sparse (ML-25M fills 0.26% of its "
                "matrix); lower rows or raise users/items"
            )
        if self.first_timestamp >= self.last_timestamp:
            raise DataError(
                f"synthetic spec: first_timestamp={self.first_timestamp} must be before "
                f"last_timestamp={self.last_timestamp}"
            )


# Allowed values per field: (lowest, highest, integer, lowest excluded); None is unbounded.
_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "rows": (1, None, True, False),
    "users": (1, _MAX_INDEX, True, False),
    "items": (1, _MAX_INDEX, True, False),
    "seed": (0, None, True, False),
    "rank": (1, None, True, False),
    "noise_std": (0, None, False, False),
    "global_mean": (None, None, False, False),
    "user_bias_std": (0, None, False, False),
    "item_bias_std": (0, None, False, False),
    "interaction_std": (0, None, False, False),
    "popularity_bias_corr": (-1, 1, False, False),
    "user_activity_sigma": (0, 5, False, False),
    "min_user_ratings": (1, None, True, False),
    "popularity_exponent": (0, 10, False, False),
    "popularity_head": (0, None, False, True),
    "whole_star_share": (0, 1, False, False),
    "implicit_share": (0, 1, False, False),
    "activity_days": (0, None, False, True),
    "first_timestamp": (None, None, True, False),
    "last_timestamp": (None, None, True, False),
}


def check_number(
    name: str, value: object, low: float | None, high: float | None, integer: bool, open_low: bool
) -> None:
    """Raise a DataError naming `name` unless `value` is a number within the bounds given."""
    number = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, number) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or value > low or (value == low and not open_low))
    ok = ok and (high is None or value <= high)
    if not ok:
        what = "an integer" if integer else "a finite number"
        bounds = [f"{'>' if open_low else '>='} {low}"] if low is not None else []
        bounds += [f"<= {high}"] if high is not None else []
        expected = " ".join([what, *bounds])
        raise DataError(f"synthetic spec: {name} must be {expected}, got {value!r}")
