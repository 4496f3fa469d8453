"""`export`: the files and their schema, a Polars + NumPy scorer that reproduces `predict`, and loading it back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import lightning_mf
from inference_helpers import make_model_checkpoint, make_string_id_dataset
from lightning_mf.__main__ import main

REPO = Path(__file__).resolve().parents[1]
# Runs the example with torch and lightning_mf made unimportable: it must need neither.
WITHOUT_PACKAGE = ("import runpy, sys; sys.modules['torch'] = None; sys.modules['lightning_mf'] = None; "
                   "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.parametrize("output, copies, implicit", [("linear", 1, True), ("sigmoid", 2, False)])
def test_a_numpy_scorer_of_the_export_reproduces_predict(tmp_path: Path, output: str, copies: int,
                                                         implicit: bool) -> None:
    make_string_id_dataset(tmp_path / "data", train_rows=300, num_users=12, num_items=10)
    make_model_checkpoint(tmp_path / "data", tmp_path / "m.ckpt", output=output, ensemble_size=copies,
                          implicit_feedback=implicit)
    assert main(["export", "--ckpt_path", str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "export")]) == 0
    users = [f"u{i:03d}" for i in range(12)] + ["nobody"]
    items = [f"{i:09d}X" for i in range(10)] + ["?"]
    pairs = pl.DataFrame({"user": np.repeat(users, len(items)), "item": np.tile(items, len(users))})
    pairs.write_csv(tmp_path / "pairs.csv")
    result = subprocess.run([sys.executable, "-c", WITHOUT_PACKAGE, str(REPO / "examples" / "score_export.py"),
                             str(tmp_path / "export"), str(tmp_path / "pairs.csv"), str(tmp_path / "scored.csv")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = lightning_mf.load(tmp_path / "m.ckpt", device="cpu").predict(pairs["user"], pairs["item"])
    scored = pl.read_csv(tmp_path / "scored.csv")
    np.testing.assert_allclose(scored["prediction"].to_numpy(), expected["prediction"].to_numpy(), rtol=0, atol=2e-6)
    assert expected["prediction"].std() > 0.1


def test_export_files_schema_and_load_back(tmp_path: Path) -> None:
    make_string_id_dataset(tmp_path / "data", train_rows=300, num_users=12, num_items=10)
    make_model_checkpoint(tmp_path / "data", tmp_path / "m.ckpt", implicit_feedback=True)
    out = tmp_path / "export"
    assert main(["export", "--ckpt_path", str(tmp_path / "m.ckpt"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "implicit_item_factors.npy", "item_factors.npy", "items.parquet", "model.parquet", "train_pairs.parquet",
        "user_factors.npy", "users.parquet"]
    users = pl.read_parquet(out / "users.parquet")
    assert users.schema == pl.Schema({"index": pl.Int32, "raw_id": pl.String, "seen": pl.Boolean,
                                      "bias": pl.Float32, "factors": pl.Array(pl.Float32, 4)})
    assert np.array_equal(np.stack(users["factors"].to_numpy()), np.load(out / "user_factors.npy"))
    model = pl.read_parquet(out / "model.parquet").row(0, named=True)
    assert (model["output"], model["copies"], model["dim"], model["rating_min"], model["rating_max"]) == (
        "linear", 1, 4, 0.5, 5.0)
    assert pl.read_parquet(out / "train_pairs.parquet").height == 300
    # Loaded back, the export predicts, recommends and folds in as the checkpoint does.
    from_checkpoint, from_export = (lightning_mf.load(path, device="cpu") for path in (tmp_path / "m.ckpt", out))
    assert from_export.recommend(k=4).equals(from_checkpoint.recommend(k=4))
    new = pl.DataFrame({"user": ["new"] * 3, "item": ["000000001X", "000000002X", "000000003X"],
                        "rating": [5.0, 1.0, 3.0]})
    for model_ in (from_checkpoint, from_export):
        model_.fold_in(new)
    assert from_export.predict(["new"], ["000000004X"]).equals(from_checkpoint.predict(["new"], ["000000004X"]))
    assert main(["export", "--ckpt_path", str(tmp_path / "m.ckpt"), "--out", str(out)]) == 2  # never overwrites
