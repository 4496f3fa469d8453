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

The parts: `synthetic_spec` (what to generate, checked), `synthetic_world` (the draws made once),
`synthetic_sampling` (who rates what) and `synthetic_ratings` (the rows, in chunks). This module
gathers their public names and writes the ratings as an ML-25M `ratings.csv`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from lightning_mf.data.schema import ITEM, RATING, TIMESTAMP, USER
from lightning_mf.errors import DataError
from lightning_mf.prepare.synthetic_ratings import SCORE, generate_chunks
from lightning_mf.prepare.synthetic_spec import KINDS, SyntheticKind, SyntheticSpec, scale_of
from lightning_mf.prepare.synthetic_world import RNG_IDS, rng_for

__all__ = [
    "KINDS",
    "SCORE",
    "SyntheticKind",
    "SyntheticSpec",
    "export_movielens_csv",
    "generate_chunks",
    "movie_ids",
    "scale_of",
]


def movie_ids(spec: SyntheticSpec, sparse: bool = True) -> np.ndarray:
    """MovieLens-style movieId of each item index: increasing, 1-based, with gaps when `sparse`.

    ML-25M numbers 59,047 rated movies up to 209,171, so exports mimic that spread (mean gap 3.5).
    """
    if not sparse:
        return np.arange(1, spec.items + 1, dtype=np.int64)
    gaps = rng_for(spec, RNG_IDS).geometric(1 / 3.5, spec.items)
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
