"""`prepare` end to end: the folder layout, meta.json, reuse, atomicity and real MovieLens counts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from lightning_mf.prepare import pipeline as prepare_module
from lightning_mf.prepare.options import PrepareOptions
from lightning_mf.prepare.pipeline import prepare_dataset
from lightning_mf.prepare.command import main as prepare_main
from lightning_mf.data.schema import RATINGS_SCHEMA, DatasetMeta
from lightning_mf.errors import DataError

ML_HEADER = "userId,movieId,rating,timestamp\n"


def _splits(folder: Path) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(folder / f"{name}.parquet") for name in ("train", "val", "test")}


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_tiny_csv_layout_and_meta(tmp_path: Path) -> None:
    lines = [f"{u},{i},{(u + i) % 10 / 2 + 0.5},{1000 + u * 10 + i}" for u in (3, 7, 11) for i in (10, 20, 30, 40)]
    lines.append("7,20,1.0,999")  # older duplicate of (7, 20): the later timestamp (1090) wins
    source = _write(tmp_path / "ratings.csv", ML_HEADER + "\n".join(lines) + "\n")
    out = prepare_dataset(PrepareOptions(source=str(source), val_fraction=0.25, test_fraction=0.25), tmp_path / "ds")
    meta = DatasetMeta.load(out)
    frames = _splits(out)
    assert (meta.num_users, meta.num_items) == (3, 4)
    assert {name: meta.rows(name) for name in frames} == {"train": 6, "val": 3, "test": 3}
    assert [r for r in meta.filters if r["name"] == "collapse_duplicates"][0]["removed_rows"] == 1
    for frame in frames.values():
        assert dict(frame.schema) == RATINGS_SCHEMA
    everything = pl.concat(frames.values())
    assert everything.select("user", "item").is_unique().all()
    assert set(everything["user"]) == {0, 1, 2} and set(everything["item"]) == {0, 1, 2, 3}
    assert everything.filter((pl.col("user") == 1) & (pl.col("item") == 1))["timestamp"].to_list() == [1090]
    users = pl.read_parquet(out / "users.parquet")
    assert users["raw_id"].to_list() == [3, 7, 11] and users["index"].to_list() == [0, 1, 2]
    assert users["train_ratings"].sum() == 6
    for name in ("val", "test"):
        assert frames[name].select("user", "item").rows() == sorted(frames[name].select("user", "item").rows())
    train = frames["train"]["rating"]
    assert meta.rating == pytest.approx({"min": train.min(), "max": train.max(), "mean": train.mean()})
    assert meta.rating_scale.min == 0.5 and meta.rating_scale.max == 5.0
    assert meta.sources[1]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert meta.split_spec == {"kind": "random", "val_fraction": 0.25, "test_fraction": 0.25, "seed": 42}


def test_unseen_rows_are_counted(tmp_path: Path) -> None:
    # user 9 and item 99 have a single rating each; with a temporal split both land in test only.
    lines = ["1,1,4,1", "1,2,4,2", "2,1,3,3", "2,2,3,4", "9,1,5,10", "1,99,2,11"]
    source = _write(tmp_path / "ratings.csv", ML_HEADER + "\n".join(lines) + "\n")
    options = PrepareOptions(source=str(source), split="temporal", val_fraction=0.0, test_start="10")
    meta = DatasetMeta.load(prepare_dataset(options, tmp_path / "ds"))
    assert meta.rows("test") == 2
    assert meta.unseen["test"] == {"unseen_user": 1, "unseen_item": 1, "unseen_either": 2}
    assert meta.unseen["val"] == {"unseen_user": 0, "unseen_item": 0, "unseen_either": 0}


def test_reuse_force_and_conflicting_options(tmp_path: Path) -> None:
    source = _write(tmp_path / "ratings.csv", ML_HEADER + "".join(f"{u},{i},3.5,{u}\n" for u in range(20) for i in range(5)))
    options = PrepareOptions(source=str(source))
    out = prepare_dataset(options, tmp_path / "ds")
    stamp = (out / "train.parquet").stat().st_mtime_ns
    prepare_dataset(options, out)
    assert (out / "train.parquet").stat().st_mtime_ns == stamp, "same inputs and options reuse the folder"
    with pytest.raises(DataError, match="other inputs or options.*--force"):
        prepare_dataset(PrepareOptions(source=str(source), seed=7), out)
    prepare_dataset(PrepareOptions(source=str(source), seed=7), out, force=True)
    assert DatasetMeta.load(out).split_spec["seed"] == 7


def test_interrupted_build_leaves_nothing_that_looks_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _write(tmp_path / "ratings.csv", ML_HEADER + "1,1,4.0,1\n2,2,3.0,2\n3,3,2.0,3\n")

    def interrupted(options: PrepareOptions, staging: Path) -> DatasetMeta:
        (staging / "train.parquet").write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(PrepareOptions(source=str(source)), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    assert not list(tmp_path.glob(".ds.partial-*"))


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    source = _write(tmp_path / "ratings.csv", ML_HEADER + "1,1,4.0,1\n")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a finished dataset"):
        prepare_dataset(PrepareOptions(source=str(source)), tmp_path / "ds")


def test_bookcrossing_drops_implicit_by_default(tmp_path: Path) -> None:
    rows = [
        ('276725', '034545104X', 0), ('276726', '0155061224', 5), ('276727', '0446520802', 0),
        ('276729', '052165615X', 3), ('276729', '0521795028', 6), ('276726', '034545104X', 8),
        ('276733', '2080674722', 0), ('276744', '038550120X', 7), ('276725', '0155061224', 9),
        ('276726', '3257224281', 10),
    ]
    text = '"User-ID";"ISBN";"Book-Rating"\n' + "".join(f'"{u}";"{i}";"{r}"\n' for u, i, r in rows)
    source = _write(tmp_path / "BX-Book-Ratings.csv", text, encoding="latin-1")
    out = prepare_dataset(PrepareOptions(source=str(source), val_fraction=0.0, test_fraction=0.0), tmp_path / "bx")
    meta = DatasetMeta.load(out)
    assert meta.format == "bookcrossing"
    assert [r for r in meta.filters if r["name"] == "drop_implicit"][0]["removed_rows"] == 3
    assert meta.rows("train") == 7 and meta.rating_scale.min == 1 and meta.rating_scale.max == 10
    items = pl.read_parquet(out / "items.parquet")
    assert items["raw_id"].dtype == pl.String and "034545104X" in items["raw_id"].to_list()
    kept = DatasetMeta.load(prepare_dataset(
        PrepareOptions(source=str(source), drop_implicit=False, val_fraction=0.0, test_fraction=0.0), tmp_path / "bx0"
    ))
    assert kept.rows("train") == 10 and kept.rating_scale.min == 0


def test_skip_bad_rows_writes_rejected_csv(tmp_path: Path) -> None:
    text = ML_HEADER + "1,1,4.0,1\n2,2,abc,2\n3,3,2.0,3\n4,4,9.0,4\n5,5,3.0,5\n"
    source = _write(tmp_path / "ratings.csv", text)
    out = prepare_dataset(PrepareOptions(source=str(source), on_bad_rows="skip", val_fraction=0, test_fraction=0), tmp_path / "ds")
    meta = DatasetMeta.load(out)
    rejected = pl.read_csv(out / "rejected.csv")
    assert meta.rejected_rows == 2 and rejected["line_number"].to_list() == [3, 5]
    assert meta.rows("train") == 3


def test_cli_exit_code_2_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _write(tmp_path / "ratings.csv", ML_HEADER + "1,1,4.0,1\n2,2,abc,2\n")
    status = prepare_main(["--source", str(source), "--out", str(tmp_path / "ds")])
    err = capsys.readouterr().err
    assert status == 2 and "ratings.csv" in err and "3" in err and "2,2,abc,2" in err
    assert not (tmp_path / "ds").exists()
    assert prepare_main(["--source", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "ds")]) == 2


def test_k_core_and_subset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = {(int(u), int(i)) for u, i in zip(rng.integers(0, 60, 800), rng.integers(0, 40, 800))}
    source = _write(tmp_path / "ratings.csv", ML_HEADER + "".join(f"{u},{i},3.0,{u}\n" for u, i in sorted(lines)))
    options = PrepareOptions(source=str(source), min_user_ratings=8, min_item_ratings=10, val_fraction=0, test_fraction=0)
    train = pl.read_parquet(prepare_dataset(options, tmp_path / "core") / "train.parquet")
    assert train.group_by("user").len()["len"].min() >= 8
    assert train.group_by("item").len()["len"].min() >= 10
    subset = PrepareOptions(source=str(source), subset=100, val_fraction=0, test_fraction=0)
    first = pl.read_parquet(prepare_dataset(subset, tmp_path / "s1") / "train.parquet")
    second = pl.read_parquet(prepare_dataset(subset, tmp_path / "s2") / "train.parquet")
    assert first.height == 100 and first.equals(second)


@pytest.mark.realdata
def test_ml_latest_small(ml_latest_small_dir: Path, tmp_path: Path) -> None:
    """610 users, 9,724 movies, 100,836 ratings; ratings of movies missing from movies.csv are rejected."""
    raw = pl.read_csv(ml_latest_small_dir / "ratings.csv")
    movies = pl.read_csv(ml_latest_small_dir / "movies.csv")["movieId"]
    dangling = raw.filter(~pl.col("movieId").is_in(movies.implode())).height
    options = PrepareOptions(source=str(ml_latest_small_dir), on_bad_rows="skip")
    out = prepare_dataset(options, tmp_path / "mls")
    meta = DatasetMeta.load(out)
    assert (meta.num_users, meta.num_items) == (610, 9_724)
    assert sum(meta.rows(s) for s in ("train", "val", "test")) == 100_836
    assert (meta.rows("val"), meta.rows("test")) == (10_084, 10_084)
    assert meta.rejected_rows == dangling
    assert [s["role"] for s in meta.sources[1:]] == ["ratings", "catalog"]
    parquet = pq.ParquetFile(out / "train.parquet")
    assert parquet.metadata.num_rows == meta.rows("train")
    train = pl.read_parquet(out / "train.parquet")
    assert not train["user"].is_sorted(), "train rows are shuffled"
    assert meta.rating["mean"] == pytest.approx(raw["rating"].mean(), abs=0.02)


@pytest.mark.realdata
@pytest.mark.parametrize("fold", ["u1", "u2", "u3", "u4", "u5"])
def test_ml100k_predefined_folds(ml100k_dir: Path, tmp_path: Path, fold: str) -> None:
    options = PrepareOptions(source=str(ml100k_dir), split="predefined", fold=fold, val_fraction=0.0)
    meta = DatasetMeta.load(prepare_dataset(options, tmp_path / fold))
    assert (meta.rows("train"), meta.rows("val"), meta.rows("test")) == (80_000, 0, 20_000)
    assert meta.num_users <= 943 and meta.num_items <= 1_682


@pytest.mark.realdata
def test_ml100k_whole_file_and_val_carved_from_base(ml100k_dir: Path, tmp_path: Path) -> None:
    whole = DatasetMeta.load(prepare_dataset(PrepareOptions(source=str(ml100k_dir / "u.data")), tmp_path / "all"))
    assert (whole.num_users, whole.num_items) == (943, 1_682)
    assert sum(whole.rows(s) for s in ("train", "val", "test")) == 100_000
    options = PrepareOptions(
        source=str(ml100k_dir / "u1.base"), test_source=str(ml100k_dir / "u1.test"), split="predefined", val_fraction=0.05
    )
    meta = DatasetMeta.load(prepare_dataset(options, tmp_path / "u1"))
    assert (meta.rows("train"), meta.rows("val"), meta.rows("test")) == (76_000, 4_000, 20_000)


def test_synthetic_prepare_is_deterministic_and_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_mf.prepare import synthetic_build

    monkeypatch.setattr(synthetic_build, "BUCKET_ROWS", 3_000)  # force several shuffle buckets
    monkeypatch.setattr(synthetic_build, "CHUNK_ROWS", 2_500)
    options = PrepareOptions(source="synthetic", rows=12_000, users=400, items=300, row_group_size=1_000)
    first = prepare_dataset(options, tmp_path / "a")
    second = prepare_dataset(options, tmp_path / "b")
    meta = DatasetMeta.load(first)
    assert (meta.num_users, meta.num_items) == (400, 300)
    assert (meta.rows("train"), meta.rows("val"), meta.rows("test")) == (9_600, 1_200, 1_200)
    for name, frame in _splits(first).items():
        assert frame.equals(_splits(second)[name])
    everything = pl.concat(_splits(first).values())
    assert everything.height == 12_000 and everything.select("user", "item").is_unique().all()
    for name in ("val", "test"):
        frame = _splits(first)[name]
        assert frame.select("user", "item").rows() == sorted(frame.select("user", "item").rows())
    assert pq.ParquetFile(first / "train.parquet").metadata.row_group(0).num_rows == 1_000
    assert not _splits(first)["train"]["user"].is_sorted()


def test_module_entry_point_help_lists_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_mf", "prepare", "--help"], capture_output=True, text=True, check=True
    )
    for option in ("--source", "--out", "--split", "--drop_implicit", "--subset", "--on_bad_rows", "--min_user_ratings"):
        assert option in result.stdout


def test_meta_json_is_plain_json(tmp_path: Path) -> None:
    source = _write(tmp_path / "ratings.csv", ML_HEADER + "1,1,4.0,1\n1,2,3.0,2\n2,1,2.0,3\n2,2,5.0,4\n")
    out = prepare_dataset(PrepareOptions(source=str(source), val_fraction=0, test_fraction=0.25), tmp_path / "ds")
    raw = json.loads((out / "meta.json").read_text())
    for key in ("num_users", "num_items", "splits", "rating", "sources", "split_spec", "filters", "rejected_rows", "unseen"):
        assert key in raw
    assert raw["splits"]["train"] == {"rows": 3}
