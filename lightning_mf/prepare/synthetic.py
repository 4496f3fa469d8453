"""Synthetic ratings shaped like MovieLens or Book-Crossing, generated in bounded memory.

Tests, the quickstart and the 25M-row benchmarks need data with the shape of the real datasets
(long-tail users and items, ratings a low-rank model can learn, timestamps for temporal splits),
without downloads, at any size, and identical for a given seed.

The generative model (every knob is a `SyntheticSpec` field):

* Activity: each user rates `min_user_ratings` items plus a lognormal share of the rest, capped at
  `items`, summing to exactly `rows` (ML-25M: min 20, median ~70, mean ~154, max ~32K).
* Popularity: item weights `(r + popularity_head) ** -popularity_exponent` for the items in a random
  order r = 0, 1, ...; the top items are rated by about half of the users (ML-25M, ml-100k,
  ml-latest-small alike) and the tail by a handful each (at ML-25M size: top ~80K, median ~25).
* Who rates what: each user takes a popularity-weighted sample of items without replacement, and
  every item is given to one user up front, so all users and items occur and no pair repeats.
* Ratings: `global_mean` + user bias + item bias (correlated with popularity) + dot product of
  rank-`rank` ground-truth factors + Gaussian noise. MovieLens rounds to half stars (to whole stars
  for a `whole_star_share` of users; 70% of ML-25M ratings are whole) and clips to 0.5..5.
  Book-Crossing rounds to 1..10 and turns a per-user share of ratings (mean `implicit_share`) into
  implicit 0s, which no rating model can predict.
* Timestamps: uniform within a per-user activity window inside `first_timestamp..last_timestamp`.

Expected accuracy with the defaults (2M rows, 13K users, 4.7K items; at ML-25M size 3.51 / 1.05 /
0.68): MovieLens has mean 3.53, std 1.06, mode 4.0, so the global mean scores RMSE 1.06, while the
ground truth (`include_score=True`, the noise floor) scores 0.68 and a 20-factor biased SVD
(scikit-surprise, 500K rows) 0.74. Book-Crossing has 62% zeros: RMSE 3.84 for the global mean,
2.74 at the floor, 3.19 for the SVD; without the zeros the explicit ratings (mean 7.58, std 1.80)
give 1.82 for the mean, 1.05 at the floor and 1.26 for the SVD.

Memory is O((users + items) * rank + chunk_rows): users are processed in blocks of about 1M ratings,
each block with its own seeded random stream, and the rows are re-cut into chunks, so the output is
the same whatever `chunk_rows` is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from lightning_mf.data.schema import ITEM, RATING, RATINGS_SCHEMA, TIMESTAMP, USER, RatingScale
from lightning_mf.errors import DataError

SyntheticKind = Literal["movielens", "bookcrossing"]
KINDS: tuple[str, ...] = ("movielens", "bookcrossing")
SCORE = "score"

_MAX_INDEX = 2**31 - 1  # user and item indices are int32
_BLOCK_ROWS = 1 << 20  # ratings per user block; changing it changes the data for a seed
_TIME_BITS = 22  # resolution of arrival times when ordering a user's popularity stream
_STREAM_ROUNDS = 3  # stream top-ups before the rare short user falls back to exact ranking
_TOPK_CELLS = 1 << 22  # keys per batch when ranking all items for heavy users
_DAY = 86_400
_SPAN_SIGMA = 2.5  # lognormal spread of activity windows: ~1 day (10%) .. ~2 years (90%)
_IMPLICIT_CONCENTRATION = 1.0  # Beta(a, b) with a + b = 1: most users mostly implicit or explicit
_KIND_DEFAULTS: dict[str, dict[str, float]] = {
    "movielens": dict(
        global_mean=3.56, user_bias_std=0.5, item_bias_std=0.5, interaction_std=0.55, noise_std=0.7
    ),
    "bookcrossing": dict(
        global_mean=7.65, user_bias_std=1.0, item_bias_std=1.0, interaction_std=0.8, noise_std=1.1
    ),
}
_RNG_COUNTS, _RNG_ITEMS, _RNG_FORCED, _RNG_USERS, _RNG_IDS, _RNG_BLOCK = range(6)


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
            _check(name, getattr(self, name), low, high, integer, open_low)
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


def _check(
    name: str, value: object, low: float | None, high: float | None, integer: bool, open_low: bool
) -> None:
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


@dataclass
class _World:
    """Everything drawn up front, O(users + items): who rates how much, popularity, ground truth."""

    counts: np.ndarray  # int64 (users,) ratings per user
    forced_offsets: np.ndarray  # int64 (users + 1,) each user's slice of forced_items
    forced_items: np.ndarray  # int64 (items,) a permutation: every item's guaranteed rating
    stream: np.ndarray  # float64 (users,) popularity draws per user; inf = rank all items
    popularity: np.ndarray  # float64 (items,) sums to 1
    alias_prob: np.ndarray  # float64 (items,) Walker alias table for O(1) popularity draws
    alias_item: np.ndarray  # int64 (items,)
    user_bias: np.ndarray  # float32 (users,)
    item_bias: np.ndarray  # float32 (items,)
    user_factors: np.ndarray  # float32 (rank, users)
    item_factors: np.ndarray  # float32 (rank, items)
    user_style: np.ndarray  # float32 (users,) rounding step (MovieLens) or implicit share (BX)
    window_start: np.ndarray  # int64 (users,)
    window_span: np.ndarray  # int64 (users,) >= 1
    blocks: np.ndarray  # int64 user boundaries of the generation blocks
    item_bits: int


def _rng(spec: SyntheticSpec, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=key))


def _user_counts(spec: SyntheticSpec) -> np.ndarray:
    """Skewed ratings per user, each in [1, items], summing to exactly `rows`."""
    rng = _rng(spec, _RNG_COUNTS)
    rows, cap = spec.rows, spec.items
    floor = max(1, min(spec.min_user_ratings, rows // (2 * spec.users)))
    weight = np.exp(rng.normal(0.0, spec.user_activity_sigma, spec.users))
    capped = np.zeros(spec.users, dtype=bool)
    while True:  # water-filling: users over the cap get the cap, the rest share what is left
        free = ~capped
        budget = rows - cap * int(capped.sum()) - floor * int(free.sum())
        target = np.where(capped, float(cap), floor + budget * weight / weight[free].sum())
        over = free & (target > cap)
        if not over.any():
            break
        capped |= over
    counts = np.floor(target).astype(np.int64)
    short = rows - int(counts.sum())
    counts[np.argsort(counts - target, kind="stable")[:short]] += 1  # largest remainders
    return counts


def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table; a Python loop over items, run once (~40 ms for 59K items)."""
    scaled = p * len(p)
    prob = np.ones(len(p))
    alias = np.arange(len(p), dtype=np.int64)
    small = np.flatnonzero(scaled < 1.0).tolist()
    large = np.flatnonzero(scaled >= 1.0).tolist()
    work = scaled.tolist()
    while small and large:
        s, g = small.pop(), large[-1]
        prob[s], alias[s] = work[s], g
        work[g] -= 1.0 - work[s]
        if work[g] < 1.0:
            small.append(large.pop())
    return prob, alias


@dataclass
class _DistinctCurve:
    """Expected distinct items after t popularity draws, sum_i (1 - exp(-t p_i)), on a t grid.

    Items are grouped by popularity (4096 groups of similar p) to keep it cheap at any size.
    """

    group_p: np.ndarray
    group_size: np.ndarray
    draws: np.ndarray
    distinct: np.ndarray

    @classmethod
    def of(cls, p: np.ndarray) -> _DistinctCurve:
        p_sorted = np.sort(p)
        starts = np.unique(np.linspace(0, len(p), min(len(p), 4096) + 1).astype(np.int64)[:-1])
        size = np.diff(np.append(starts, len(p)))
        group_p = np.add.reduceat(p_sorted, starts) / size
        draws = np.geomspace(0.1, 50.0 / p_sorted[0], 256)
        distinct = (size * -np.expm1(-np.outer(draws, group_p))).sum(axis=1)
        return cls(group_p, size, draws, distinct)

    def draws_for(self, distinct: np.ndarray) -> np.ndarray:
        """Draws after which `distinct` items are expected; clamped to the grid."""
        return np.exp(np.interp(distinct, self.distinct, np.log(self.draws)))

    def stream_lengths(self, counts: np.ndarray, items: int) -> np.ndarray:
        """Draws that give each user `count` distinct items with a margin; inf where ranking all
        items is cheaper than a stream longer than the catalogue."""
        lengths = self.draws_for(counts * 1.05 + 2.0 * np.sqrt(counts) + 2.0)
        lengths[lengths > items] = np.inf
        return lengths

    def log_popularity_moments(self, counts: np.ndarray) -> tuple[float, float]:
        """Mean and std of log p over ratings rather than items: popular items saturate at one
        rating per user, and heavy users reach far into the tail."""
        t = np.sort(self.draws_for(counts.astype(np.float64)))
        starts = np.unique(np.linspace(0, len(t), min(len(t), 128) + 1).astype(np.int64)[:-1])
        users = np.diff(np.append(starts, len(t)))
        t_mean = np.add.reduceat(t, starts) / users
        exposure = self.group_size * (users @ -np.expm1(-np.outer(t_mean, self.group_p)))
        weight = exposure / exposure.sum()
        log_p = np.log(self.group_p)
        mean = float((weight * log_p).sum())
        return mean, math.sqrt(float((weight * (log_p - mean) ** 2).sum()))


def _blocks(counts: np.ndarray, max_users: int) -> np.ndarray:
    ends = np.cumsum(counts)
    cuts = np.arange(_BLOCK_ROWS, int(ends[-1]), _BLOCK_ROWS)
    by_rows = np.searchsorted(ends, cuts, side="right")
    by_users = np.arange(0, len(counts), max_users)
    return np.unique(np.concatenate([[0, len(counts)], by_rows, by_users]).astype(np.int64))


def _build_world(spec: SyntheticSpec) -> _World:
    users, items, rank = spec.users, spec.items, spec.rank
    counts = _user_counts(spec)

    rng = _rng(spec, _RNG_ITEMS)
    popularity_rank = rng.permutation(items).astype(np.float64)
    weight = (popularity_rank + spec.popularity_head) ** -spec.popularity_exponent
    p = weight / weight.sum()
    curve = _DistinctCurve.of(p)
    log_p_mean, log_p_std = curve.log_popularity_moments(counts)  # so biases keep the mean
    z_pop = (np.log(p) - log_p_mean) / (log_p_std or 1.0)
    corr = spec.popularity_bias_corr
    own = rng.standard_normal(items)
    item_bias = spec.item_bias_std * (corr * z_pop + math.sqrt(1 - corr**2) * own)
    factor_std = (spec.interaction_std**2 / rank) ** 0.25
    item_factors = rng.normal(0.0, factor_std, (rank, items)).astype(np.float32)

    rng = _rng(spec, _RNG_FORCED)
    forced_counts = rng.multivariate_hypergeometric(counts, items, method="marginals")
    forced_items = rng.permutation(items).astype(np.int64)

    rng = _rng(spec, _RNG_USERS)
    user_bias = rng.normal(0.0, spec.user_bias_std, users).astype(np.float32)
    user_factors = rng.normal(0.0, factor_std, (rank, users)).astype(np.float32)
    if spec.kind == "movielens":
        style = np.where(rng.random(users) < spec.whole_star_share, 1.0, 0.5)
    elif spec.implicit_share in (0.0, 1.0):
        style = np.full(users, spec.implicit_share)
    else:
        a = _IMPLICIT_CONCENTRATION * spec.implicit_share
        style = rng.beta(a, _IMPLICIT_CONCENTRATION - a, users)
    full_span = spec.last_timestamp - spec.first_timestamp
    span = np.exp(rng.normal(math.log(spec.activity_days * _DAY), _SPAN_SIGMA, users))
    span = np.clip(span, 1, full_span).astype(np.int64)
    start = spec.first_timestamp + (rng.random(users) * (full_span - span + 1)).astype(np.int64)

    prob, alias = _alias_table(p)
    item_bits = max(1, (items - 1).bit_length())
    return _World(
        counts=counts,
        forced_offsets=np.concatenate([[0], np.cumsum(forced_counts)]).astype(np.int64),
        forced_items=forced_items,
        stream=curve.stream_lengths(counts, items),
        popularity=p,
        alias_prob=prob,
        alias_item=alias,
        user_bias=user_bias,
        item_bias=item_bias.astype(np.float32),
        user_factors=user_factors,
        item_factors=item_factors,
        user_style=style.astype(np.float32),
        window_start=start,
        window_span=span,
        blocks=_blocks(counts, 1 << (63 - item_bits - _TIME_BITS)),
        item_bits=item_bits,
    )


def _of_users(keys: np.ndarray, users: np.ndarray, n: int, bits: int) -> np.ndarray:
    """The (user << bits | item) keys that belong to `users` (local indices < n)."""
    wanted = np.zeros(n, dtype=bool)
    wanted[users] = True
    return keys[wanted[keys >> bits]]


def _stream_round(
    rng: np.random.Generator,
    w: _World,
    counts: np.ndarray,
    users: np.ndarray,
    lengths: np.ndarray,
    pinned: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's first `count` distinct items in a random stream of popularity draws.

    The first arrival of each item in a Poisson stream is an exponential race, so the earliest
    distinct arrivals are a popularity-weighted sample without replacement. Pinned keys (forced
    items, earlier rounds) arrive at time 0. Returns the chosen keys and which users fell short.
    """
    ib, tb = w.item_bits, _TIME_BITS
    draws = rng.poisson(lengths)
    owner = np.repeat(users.astype(np.int64), draws)
    column = rng.integers(0, len(w.alias_prob), owner.size)
    item = np.where(rng.random(owner.size) < w.alias_prob[column], column, w.alias_item[column])
    arrival = rng.integers(1, 1 << tb, owner.size)
    race = np.concatenate([(owner << (ib + tb)) | (item << tb) | arrival, pinned << tb])
    race.sort()
    pair = race >> tb
    first = np.ones(race.size, dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    race = race[first]
    owner = race >> (ib + tb)
    item = (race >> tb) & ((1 << ib) - 1)
    by_time = (owner << (tb + ib)) | ((race & ((1 << tb) - 1)) << ib) | item
    by_time.sort()
    owner = by_time >> (tb + ib)
    seen = np.bincount(owner, minlength=len(counts))
    rank_in_user = np.arange(by_time.size) - (np.cumsum(seen) - seen)[owner]
    keep = rank_in_user < counts[owner]
    chosen = (owner[keep] << ib) | (by_time[keep] & ((1 << ib) - 1))
    return chosen, seen[users] < counts[users]


def _rank_all_items(
    rng: np.random.Generator, w: _World, counts: np.ndarray, users: np.ndarray, pinned: np.ndarray
) -> np.ndarray:
    """The same weighted sample, drawn as the `count` smallest keys Exp(1) / p over all items."""
    items, ib = len(w.popularity), w.item_bits
    position = np.full(len(counts), -1, dtype=np.int64)
    chosen = []
    batch = max(1, _TOPK_CELLS // items)
    for lo in range(0, users.size, batch):
        group = users[lo : lo + batch]
        position[group] = np.arange(group.size)
        keys = rng.standard_exponential((group.size, items)) / w.popularity
        pins = _of_users(pinned, group, len(counts), ib)
        keys[position[pins >> ib], pins & ((1 << ib) - 1)] = -1.0
        order = np.argsort(keys, axis=1)
        row, col = np.nonzero(np.arange(items) < counts[group][:, None])
        chosen.append((group[row].astype(np.int64) << ib) | order[row, col])
    return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)


def _block_pairs(spec: SyntheticSpec, w: _World, block: int) -> tuple[np.ndarray, np.ndarray]:
    """All (user, item) pairs of one user block, sorted by user then item."""
    u0, u1 = int(w.blocks[block]), int(w.blocks[block + 1])
    rng = _rng(spec, _RNG_BLOCK, block)
    ib, n = w.item_bits, u1 - u0
    counts = w.counts[u0:u1]
    forced = np.diff(w.forced_offsets[u0 : u1 + 1])
    pinned = (np.repeat(np.arange(n, dtype=np.int64), forced) << ib) | w.forced_items[
        w.forced_offsets[u0] : w.forced_offsets[u1]
    ]
    lengths = w.stream[u0:u1]
    ranked = np.flatnonzero(~np.isfinite(lengths))
    pending = np.flatnonzero(np.isfinite(lengths))
    parts = [_rank_all_items(rng, w, counts, ranked, _of_users(pinned, ranked, n, ib))]
    pinned = _of_users(pinned, pending, n, ib)
    for _ in range(_STREAM_ROUNDS):
        if pending.size == 0:
            break
        chosen, short = _stream_round(rng, w, counts, pending, lengths[pending], pinned)
        pending_short = pending[short]
        parts.append(_of_users(chosen, pending[~short], n, ib))
        pinned = _of_users(chosen, pending_short, n, ib)
        deficit = counts[pending_short] - np.bincount(pinned >> ib, minlength=n)[pending_short]
        lengths = np.zeros(n)
        lengths[pending_short] = 0.5 * w.stream[u0:u1][pending_short] + 4.0 * deficit
        pending = pending_short
    parts.append(_rank_all_items(rng, w, counts, pending, pinned))
    keys = np.concatenate(parts)
    keys.sort()
    return u0 + (keys >> ib), keys & ((1 << ib) - 1)


def _block_frame(spec: SyntheticSpec, w: _World, block: int, include_score: bool) -> pl.DataFrame:
    user, item = _block_pairs(spec, w, block)
    rng = _rng(spec, _RNG_BLOCK, block, 1)
    score = np.float32(spec.global_mean) + w.user_bias[user] + w.item_bias[item]
    for k in range(spec.rank):
        score += w.user_factors[k][user] * w.item_factors[k][item]
    noisy = score + rng.standard_normal(user.size, dtype=np.float32) * np.float32(spec.noise_std)
    style = w.user_style[user]
    if spec.kind == "movielens":
        rating = np.clip(np.round(noisy / style) * style, style, 5.0)
        expected = np.clip(score, 0.5, 5.0)
    else:
        implicit = rng.random(user.size, dtype=np.float32) < style
        rating = np.where(implicit, 0.0, np.clip(np.round(noisy), 1.0, 10.0))
        expected = (1.0 - style) * np.clip(score, 1.0, 10.0)
    offset = (rng.random(user.size) * w.window_span[user]).astype(np.int64)
    timestamp = w.window_start[user] + offset
    columns = {USER: user, ITEM: item, RATING: rating, TIMESTAMP: timestamp}
    frame = pl.DataFrame({k: pl.Series(k, v, dtype=RATINGS_SCHEMA[k]) for k, v in columns.items()})
    if include_score:
        frame = frame.with_columns(pl.Series(SCORE, expected, dtype=pl.Float32))
    return frame


def generate_chunks(
    spec: SyntheticSpec, chunk_rows: int = 2_000_000, *, include_score: bool = False
) -> Iterator[pl.DataFrame]:
    """Stream the spec's ratings as DataFrames of `chunk_rows` rows (the last one may be shorter).

    Rows come sorted by user, then item, with the dataset contract's columns and dtypes; the
    concatenated output does not depend on `chunk_rows`.

    Args:
        spec: What to generate.
        chunk_rows: Rows per yielded DataFrame; memory grows with it.
        include_score: Add a float32 `score` column: the ground-truth expected rating before noise
            and rounding (times the explicit probability for Book-Crossing). Its RMSE against
            `rating` is the noise floor a perfect model would reach.
    """
    _check("chunk_rows", chunk_rows, 1, None, integer=True, open_low=False)
    return _chunks(spec, chunk_rows, include_score)


def _chunks(spec: SyntheticSpec, chunk_rows: int, include_score: bool) -> Iterator[pl.DataFrame]:
    world = _build_world(spec)
    pending: pl.DataFrame | None = None
    for block in range(len(world.blocks) - 1):
        frame = _block_frame(spec, world, block, include_score)
        pending = frame if pending is None else pl.concat([pending, frame], rechunk=False)
        while pending.height >= chunk_rows:
            yield pending.slice(0, chunk_rows).rechunk()
            pending = pending.slice(chunk_rows)
    if pending is not None and pending.height:
        yield pending.rechunk()


def movie_ids(spec: SyntheticSpec, sparse: bool = True) -> np.ndarray:
    """MovieLens-style movieId of each item index: increasing, 1-based, with gaps when `sparse`.

    ML-25M numbers 59,047 rated movies up to 209,171, so exports mimic that spread (mean gap 3.5).
    """
    if not sparse:
        return np.arange(1, spec.items + 1, dtype=np.int64)
    gaps = _rng(spec, _RNG_IDS).geometric(1 / 3.5, spec.items)
    return np.cumsum(gaps).astype(np.int64)


def export_movielens_csv(
    spec: SyntheticSpec, path: str | Path, *, sparse_ids: bool = True, chunk_rows: int = 2_000_000
) -> int:
    """Write the spec's ratings as an ML-25M `ratings.csv`; returns the rows written.

    Header `userId,movieId,rating,timestamp`, 1-based ids, ratings printed like `4.0` / `3.5`, LF
    line endings, rows sorted by userId then movieId as in the real file.

    Args:
        spec: What to generate; must be kind "movielens".
        path: File to write (parent folders are created, an existing file is replaced once the
            new one is complete).
        sparse_ids: Spread movieIds with gaps like ML-25M (see `movie_ids`) instead of 1..items.
        chunk_rows: Rows generated and written at a time.
    """
    if spec.kind != "movielens":
        raise DataError(
            "export_movielens_csv writes MovieLens half-star ratings, but "
            f"spec.kind={spec.kind!r}; use kind='movielens'"
        )
    ids = movie_ids(spec, sparse=sparse_ids)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # a crash never leaves a plausible file
    written = 0
    try:
        with partial.open("wb") as handle:
            for chunk in generate_chunks(spec, chunk_rows):
                out = pl.DataFrame(
                    {
                        "userId": chunk[USER] + 1,
                        "movieId": ids[chunk[ITEM].to_numpy()],
                        "rating": chunk[RATING],
                        "timestamp": chunk[TIMESTAMP],
                    }
                )
                out.write_csv(handle, include_header=written == 0, float_precision=1)
                written += out.height
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return written
