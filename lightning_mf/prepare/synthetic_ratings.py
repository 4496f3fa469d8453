"""Synthetic ratings streamed in chunks: the rating, and when it was given, of every (user, item) pair.

The latent score is the global mean plus biases plus the factor dot product; noise, rounding (half
or whole stars; Book-Crossing's implicit zeros) and a timestamp in the user's activity window turn
it into a row. Each block has its own seeded stream and rows are re-cut into chunks afterwards, so
the output does not depend on `chunk_rows`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl

from lightning_mf.data.schema import ITEM, RATING, RATINGS_SCHEMA, TIMESTAMP, USER
from lightning_mf.prepare.synthetic_sampling import block_pairs
from lightning_mf.prepare.synthetic_spec import SyntheticSpec, check_number
from lightning_mf.prepare.synthetic_world import RNG_BLOCK, World, build_world, rng_for

SCORE = "score"


def _block_frame(spec: SyntheticSpec, w: World, block: int, include_score: bool) -> pl.DataFrame:
    """The rows of one user block, with the contract's columns and dtypes."""
    user, item = block_pairs(spec, w, block)
    rng = rng_for(spec, RNG_BLOCK, block, 1)
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
    check_number("chunk_rows", chunk_rows, 1, None, integer=True, open_low=False)
    return _chunks(spec, chunk_rows, include_score)


def _chunks(spec: SyntheticSpec, chunk_rows: int, include_score: bool) -> Iterator[pl.DataFrame]:
    world = build_world(spec)
    pending: pl.DataFrame | None = None
    for block in range(len(world.blocks) - 1):
        frame = _block_frame(spec, world, block, include_score)
        pending = frame if pending is None else pl.concat([pending, frame], rechunk=False)
        while pending.height >= chunk_rows:
            yield pending.slice(0, chunk_rows).rechunk()
            pending = pending.slice(chunk_rows)
    if pending is not None and pending.height:
        yield pending.rechunk()
