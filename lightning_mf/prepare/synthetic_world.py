"""The synthetic draws made once per spec, in O(users + items) memory: the generator's world.

Who rates how much, item popularity, the ground-truth biases and factors, each user's rounding
style and activity window, and the user blocks that are generated one at a time. Every draw comes
from its own keyed stream of the spec's seed (`rng_for`), so adding a draw never shifts another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lightning_mf.prepare.synthetic_spec import SyntheticSpec

_BLOCK_ROWS = 1 << 20  # ratings per user block; changing it changes the data for a seed
TIME_BITS = 22  # arrival-time bits of a sampling key; blocks are sized so (user, item, time) fits int64
_DAY = 86_400
_SPAN_SIGMA = 2.5  # lognormal spread of activity windows: ~1 day (10%) .. ~2 years (90%)
_IMPLICIT_CONCENTRATION = 1.0  # Beta(a, b) with a + b = 1: most users mostly implicit or explicit
RNG_COUNTS, RNG_ITEMS, RNG_FORCED, RNG_USERS, RNG_IDS, RNG_BLOCK = range(6)


@dataclass
class World:
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


def rng_for(spec: SyntheticSpec, *key: int) -> np.random.Generator:
    """The spec's random stream for `key`: independent of every other key's."""
    return np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=key))


def _user_counts(spec: SyntheticSpec) -> np.ndarray:
    """Skewed ratings per user, each in [1, items], summing to exactly `rows`."""
    rng = rng_for(spec, RNG_COUNTS)
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
    """User boundaries of blocks of about `_BLOCK_ROWS` ratings and at most `max_users` users."""
    ends = np.cumsum(counts)
    cuts = np.arange(_BLOCK_ROWS, int(ends[-1]), _BLOCK_ROWS)
    by_rows = np.searchsorted(ends, cuts, side="right")
    by_users = np.arange(0, len(counts), max_users)
    return np.unique(np.concatenate([[0, len(counts)], by_rows, by_users]).astype(np.int64))


def build_world(spec: SyntheticSpec) -> World:
    """Everything the blocks share, drawn from the spec's keyed streams."""
    users, items, rank = spec.users, spec.items, spec.rank
    counts = _user_counts(spec)

    rng = rng_for(spec, RNG_ITEMS)
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

    rng = rng_for(spec, RNG_FORCED)
    forced_counts = rng.multivariate_hypergeometric(counts, items, method="marginals")
    forced_items = rng.permutation(items).astype(np.int64)

    rng = rng_for(spec, RNG_USERS)
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
    return World(
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
        blocks=_blocks(counts, 1 << (63 - item_bits - TIME_BITS)),
        item_bits=item_bits,
    )
