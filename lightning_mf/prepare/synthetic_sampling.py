"""Who rates what in one block of synthetic users: a popularity-weighted sample without replacement.

Each user's items are the first distinct arrivals of a random stream of popularity draws (cheap for
the many light users); heavy users, and the rare light user whose stream falls short, rank all
items instead. Both give the same distribution, and every item's forced rating is kept.
"""

from __future__ import annotations

import numpy as np

from lightning_mf.prepare.synthetic_spec import SyntheticSpec
from lightning_mf.prepare.synthetic_world import RNG_BLOCK, TIME_BITS, World, rng_for

_STREAM_ROUNDS = 3  # stream top-ups before the rare short user falls back to exact ranking
_TOPK_CELLS = 1 << 22  # keys per batch when ranking all items for heavy users


def _of_users(keys: np.ndarray, users: np.ndarray, n: int, bits: int) -> np.ndarray:
    """The (user << bits | item) keys that belong to `users` (local indices < n)."""
    wanted = np.zeros(n, dtype=bool)
    wanted[users] = True
    return keys[wanted[keys >> bits]]


def _stream_round(
    rng: np.random.Generator,
    w: World,
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
    ib, tb = w.item_bits, TIME_BITS
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
    rng: np.random.Generator, w: World, counts: np.ndarray, users: np.ndarray, pinned: np.ndarray
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


def block_pairs(spec: SyntheticSpec, w: World, block: int) -> tuple[np.ndarray, np.ndarray]:
    """All (user, item) pairs of one user block, sorted by user then item."""
    u0, u1 = int(w.blocks[block]), int(w.blocks[block + 1])
    rng = rng_for(spec, RNG_BLOCK, block)
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
