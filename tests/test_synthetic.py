"""The synthetic generator: exact, unique, covering, deterministic, shaped like the real data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lightning_mf.prepare import synthetic_sampling, synthetic_world
from lightning_mf.data.schema import RATINGS_SCHEMA
from lightning_mf.prepare.synthetic import (
    SyntheticSpec,
    export_movielens_csv,
    generate_chunks,
    movie_ids,
    scale_of,
)
from lightning_mf.errors import DataError

SMALL = dict(rows=20_000, users=500, items=800)
SHAPED = dict(rows=50_000, users=1_000, items=2_000)  # big enough for stable shape statistics


def collect(spec: SyntheticSpec, chunk_rows: int = 2_000_000, **kwargs: bool) -> pl.DataFrame:
    return pl.concat(list(generate_chunks(spec, chunk_rows, **kwargs)))


def assert_valid(frame: pl.DataFrame, spec: SyntheticSpec) -> None:
    """Exactly `rows` rows, unique pairs, every user and item present, contract dtypes."""
    assert frame.height == spec.rows
    assert frame.columns[:4] == list(RATINGS_SCHEMA)
    assert {k: frame.schema[k] for k in RATINGS_SCHEMA} == RATINGS_SCHEMA
    assert frame.select(pl.struct("user", "item").is_duplicated().any()).item() is False
    assert frame["user"].n_unique() == spec.users
    assert frame["item"].n_unique() == spec.items
    assert (frame["user"].min(), frame["user"].max()) == (0, spec.users - 1)
    assert (frame["item"].min(), frame["item"].max()) == (0, spec.items - 1)


@pytest.fixture(scope="module")
def movielens() -> tuple[SyntheticSpec, pl.DataFrame]:
    spec = SyntheticSpec(**SHAPED)
    return spec, collect(spec, include_score=True)


@pytest.fixture(scope="module")
def bookcrossing() -> tuple[SyntheticSpec, pl.DataFrame]:
    spec = SyntheticSpec(**SHAPED, kind="bookcrossing")
    return spec, collect(spec, include_score=True)


def test_scales() -> None:
    ml, bx = scale_of("movielens"), scale_of("bookcrossing")
    assert (ml.min, ml.max, ml.step) == (0.5, 5.0, 0.5)
    assert (bx.min, bx.max, bx.step) == (0.0, 10.0, 1.0)


@pytest.mark.parametrize("kind", ["movielens", "bookcrossing"])
def test_exact_unique_covering(kind: str) -> None:
    spec = SyntheticSpec(**SMALL, kind=kind)
    assert_valid(collect(spec), spec)


def test_deterministic_for_any_chunk_size_and_seeded() -> None:
    spec = SyntheticSpec(**SMALL)
    whole = collect(spec)
    assert collect(SyntheticSpec(**SMALL)).equals(whole)
    chunks = list(generate_chunks(spec, chunk_rows=3_000))
    assert [c.height for c in chunks] == [3_000] * 6 + [2_000]
    assert pl.concat(chunks).equals(whole)
    other = collect(SyntheticSpec(**SMALL, seed=7))
    assert_valid(other, spec)
    assert not other.equals(whole)
    assert (other["rating"] != whole["rating"]).mean() > 0.3


def test_blocks_are_stitched_seamlessly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic_world, "_BLOCK_ROWS", 1_500)  # ~13 user blocks for 20K rows
    spec = SyntheticSpec(**SMALL)
    whole = collect(spec)
    assert_valid(whole, spec)
    assert pl.concat(list(generate_chunks(spec, chunk_rows=777))).equals(whole)
    assert whole.select(pl.col("user").diff().min()).item() >= 0  # sorted by user across blocks


def test_exact_ranking_fallback_gives_a_valid_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Users whose popularity stream falls short are finished by ranking all items."""
    monkeypatch.setattr(synthetic_sampling, "_STREAM_ROUNDS", 0)  # every light user takes the fallback
    spec = SyntheticSpec(rows=5_000, users=200, items=300)
    assert_valid(collect(spec), spec)


def test_dense_spec_ranks_heavy_users() -> None:
    spec = SyntheticSpec(rows=30 * 40 // 2, users=30, items=40)  # 50% filled: every user heavy
    frame = collect(spec)
    assert_valid(frame, spec)
    assert frame.group_by("user").len()["len"].max() <= spec.items


def test_movielens_values_and_timestamps(movielens: tuple[SyntheticSpec, pl.DataFrame]) -> None:
    spec, frame = movielens
    assert_valid(frame, spec)
    assert set(frame["rating"].unique().to_list()) == {x / 2 for x in range(1, 11)}
    assert spec.first_timestamp <= frame["timestamp"].min()
    assert frame["timestamp"].max() <= spec.last_timestamp
    years = pl.from_epoch(frame["timestamp"]).dt.year()
    assert years.min() <= 1998 and years.max() >= 2017  # spread for a temporal split


def test_movielens_marginal(movielens: tuple[SyntheticSpec, pl.DataFrame]) -> None:
    """ML-25M: mean 3.53, std 1.06, mode 4.0, ~70% whole stars."""
    rating = movielens[1]["rating"]
    assert 3.35 < rating.mean() < 3.7
    assert 0.95 < rating.std() < 1.15
    assert rating.mode().to_list() == [4.0]
    assert 0.55 < (rating.round() == rating).mean() < 0.8


def test_movielens_is_learnable(movielens: tuple[SyntheticSpec, pl.DataFrame]) -> None:
    """The ground truth's RMSE (the noise floor) is far below the global-mean baseline."""
    frame = movielens[1]
    baseline = frame["rating"].std()
    floor = ((frame["rating"] - frame["score"]) ** 2).mean() ** 0.5
    assert 0.6 < floor < 0.75 < 0.8 * baseline


def test_popularity_and_activity_are_skewed(movielens: tuple[SyntheticSpec, pl.DataFrame]) -> None:
    frame = movielens[1]
    per_item = np.sort(frame.group_by("item").len()["len"].to_numpy())[::-1]
    per_user = np.sort(frame.group_by("user").len()["len"].to_numpy())[::-1]
    top_share = per_item[: len(per_item) // 100].sum() / per_item.sum()
    assert top_share > 0.08  # 8x the uniform share
    assert per_item[0] > 20 * np.median(per_item)
    assert per_user[0] > 10 * np.median(per_user)
    assert per_user.min() >= 20  # min_user_ratings, as ML-25M


def test_bookcrossing_implicit_zeros(bookcrossing: tuple[SyntheticSpec, pl.DataFrame]) -> None:
    """~62% implicit 0s; explicit 1..10 skewed high (BX: mean 7.6); zeros hide the signal."""
    spec, frame = bookcrossing
    assert_valid(frame, spec)
    rating = frame["rating"]
    assert set(rating.unique().to_list()) <= set(map(float, range(11)))
    assert 0.55 < (rating == 0).mean() < 0.7
    explicit = frame.filter(pl.col("rating") > 0)
    assert 7.2 < explicit["rating"].mean() < 8.0
    assert rating.std() > 2 * explicit["rating"].std()
    floor_with_zeros = ((rating - frame["score"]) ** 2).mean() ** 0.5
    assert floor_with_zeros > 2.0  # no model recovers the coin flips


def test_csv_export_matches_ml25m_format(tmp_path: Path) -> None:
    spec = SyntheticSpec(**SMALL)
    path = tmp_path / "ml" / "ratings.csv"
    assert export_movielens_csv(spec, path, chunk_rows=6_000) == spec.rows
    raw = path.read_bytes()
    assert raw.startswith(b"userId,movieId,rating,timestamp\n")
    assert b"\r" not in raw and raw.endswith(b"\n")
    lines = raw.decode().splitlines()[1:]
    assert len(lines) == spec.rows
    assert all(re.fullmatch(r"\d+,\d+,[0-5]\.[05],\d{9,10}", line) for line in lines[:2_000])

    parsed = pl.read_csv(path, schema_overrides={"rating": pl.Float32})
    assert parsed.columns == ["userId", "movieId", "rating", "timestamp"]
    assert (parsed["userId"].min(), parsed["userId"].max()) == (1, spec.users)
    assert parsed["movieId"].n_unique() == spec.items
    assert parsed["movieId"].max() > spec.items  # sparse like ML-25M's movieIds
    frame = collect(spec)
    assert parsed["rating"].equals(frame["rating"])
    assert parsed["timestamp"].equals(frame["timestamp"])
    assert (parsed["movieId"].to_numpy() == movie_ids(spec)[frame["item"].to_numpy()]).all()
    assert not list(tmp_path.rglob("*.partial"))


def test_csv_export_dense_ids(tmp_path: Path) -> None:
    spec = SyntheticSpec(rows=2_000, users=50, items=100)
    export_movielens_csv(spec, tmp_path / "ratings.csv", sparse_ids=False)
    parsed = pl.read_csv(tmp_path / "ratings.csv")
    assert (parsed["movieId"].min(), parsed["movieId"].max()) == (1, spec.items)


def test_csv_export_rejects_bookcrossing(tmp_path: Path) -> None:
    spec = SyntheticSpec(**SMALL, kind="bookcrossing")
    with pytest.raises(DataError, match="spec.kind='bookcrossing'"):
        export_movielens_csv(spec, tmp_path / "ratings.csv")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rows=99, users=100, items=10), r"rows=99 is less than max\(users, items\)=100"),
        (dict(rows=50, users=10, items=60), r"rows=50 is less than max\(users, items\)=60"),
        (dict(rows=51, users=10, items=10), r"rows=51 exceeds half of users \* items = 50"),
        (dict(rows=0, users=1, items=1), r"rows must be an integer >= 1, got 0"),
        (dict(rows=100.5, users=10, items=20), r"rows must be an integer >= 1, got 100.5"),
        (dict(rows=100, users=True, items=20), r"users must be an integer"),
        (dict(rows=100, users=10, items=20, kind="netflix"), r"kind='netflix' is unknown"),
        (dict(rows=100, users=10, items=20, noise_std=-1.0), r"noise_std must be .* >= 0, got -1"),
        (dict(rows=100, users=10, items=20, rank=0), r"rank must be an integer >= 1, got 0"),
        (dict(rows=100, users=10, items=20, implicit_share=1.5), r"implicit_share .* <= 1"),
        (dict(rows=100, users=10, items=20, popularity_head=0.0), r"popularity_head .* > 0"),
        (dict(rows=100, users=10, items=20, global_mean=float("nan")), r"global_mean must be a"),
        (
            dict(rows=100, users=10, items=20, first_timestamp=5, last_timestamp=5),
            r"first_timestamp=5 must be before last_timestamp=5",
        ),
    ],
)
def test_impossible_specs_are_explained(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        SyntheticSpec(**kwargs)


def test_chunk_rows_is_checked() -> None:
    with pytest.raises(DataError, match="chunk_rows must be an integer >= 1, got 0"):
        generate_chunks(SyntheticSpec(**SMALL), chunk_rows=0)


def test_kind_defaults_are_filled_and_overridable() -> None:
    assert SyntheticSpec(**SMALL).noise_std == 0.7
    assert SyntheticSpec(**SMALL, kind="bookcrossing").noise_std == 1.1
    quiet = SyntheticSpec(**SMALL, noise_std=0.0)
    frame = collect(quiet, include_score=True)
    assert ((frame["rating"] - frame["score"]).abs() <= 0.5 + 1e-6).all()  # only rounding left
