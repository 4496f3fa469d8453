"""Fold-in: each solved row equals a direct least-squares solve with the model's penalty; on real data it
predicts held-out users far better than the bias fallback."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import lightning_mf
from helpers import make_dataset
from inference_helpers import make_model_checkpoint
from lightning_mf.__main__ import main
from lightning_mf.errors import DataError

L2, L2_BIAS, POWER, BIAS_POWER = 0.2, 0.5, 0.75, 0.0
PENALTY = {"l2": L2, "l2_bias": L2_BIAS, "l2_count_power": POWER, "l2_bias_count_power": BIAS_POWER}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fold") / "data"
    make_dataset(folder, train_rows=500, num_users=20, num_items=15)  # raw id = index + 1
    return folder


def _ridge(fixed: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """argmin |target - fixed p - b|^2 + L2 n^POWER |p|^2 + L2_BIAS n^BIAS_POWER b^2, as a stacked lstsq."""
    n, dim = fixed.shape
    design = np.hstack([fixed, np.ones((n, 1))])
    scale = np.sqrt(np.r_[np.full(dim, L2 * n**POWER), L2_BIAS * n**BIAS_POWER])
    theta = np.linalg.lstsq(np.vstack([design, np.diag(scale)]), np.r_[target, np.zeros(dim + 1)], rcond=None)[0]
    return theta[:dim], theta[dim]


@pytest.mark.parametrize("implicit, copies", [(False, 1), (True, 1), (False, 2)])
def test_a_folded_user_equals_a_direct_least_squares_solve(data_dir: Path, tmp_path: Path, implicit: bool,
                                                           copies: int) -> None:
    model = make_model_checkpoint(data_dir, tmp_path / "m.ckpt", implicit_feedback=implicit, ensemble_size=copies,
                                  **PENALTY)
    items = np.array([1, 2, 3, 5, 8, 9, 11])  # indices; raw ids are index + 1
    ratings = np.array([4.0, 3.5, 1.0, 5.0, 2.5, 3.0, 4.5], dtype=np.float32)
    trained = lightning_mf.load(tmp_path / "m.ckpt", device="cpu")
    report = trained.fold_in(pl.DataFrame({"user": [1000] * len(items), "item": items + 1,
                                           "rating": ratings}))
    assert (report.users, report.items, report.ratings_used) == (1, 0, len(items))
    row = int(trained.users.indices([1000])[0])
    assert row == model.num_users  # a new id takes the next index
    dim = model.embedding_dim
    q = model.item_factors.weight.detach().numpy().reshape(-1, copies, dim)
    b = model.item_bias.weight.detach().numpy()
    tables = trained.state.tables
    for c in range(copies):
        term = np.zeros(dim)
        if implicit:
            y = model.implicit_factors.weight.detach().numpy().reshape(-1, copies, dim)[:, c]
            term = y[items].sum(0) / np.sqrt(len(items))
        target = ratings - float(model.offset) - b[items, c] - q[items, c] @ term
        factors, bias = _ridge(q[items, c].astype(np.float64), target.astype(np.float64))
        np.testing.assert_allclose(tables.user_factors[row, c].numpy(), factors + term, atol=2e-5)
        np.testing.assert_allclose(float(tables.user_bias[row, c]), bias, atol=2e-5)
    assert trained.predict([1000], [2])["fallback"].to_list() == ["model"]


def test_a_folded_item_equals_a_direct_least_squares_solve(data_dir: Path, tmp_path: Path) -> None:
    model = make_model_checkpoint(data_dir, tmp_path / "m.ckpt", **PENALTY)
    users = np.array([2, 4, 6, 7, 10, 13])
    ratings = np.array([5.0, 4.0, 2.0, 3.5, 1.5, 4.0], dtype=np.float32)
    trained = lightning_mf.load(tmp_path / "m.ckpt", device="cpu")
    report = trained.fold_in(pl.DataFrame({"user": users + 1, "item": [777] * len(users), "rating": ratings}))
    assert (report.users, report.items) == (0, 1)
    row = int(trained.items.indices([777])[0])
    p = model.user_factors.weight.detach().numpy()
    b = model.user_bias.weight.detach().numpy()[:, 0]
    factors, bias = _ridge(p[users].astype(np.float64), (ratings - float(model.offset) - b[users]).astype(np.float64))
    np.testing.assert_allclose(trained.state.tables.item_factors[row, 0].numpy(), factors, atol=2e-5)
    np.testing.assert_allclose(float(trained.state.tables.item_bias[row, 0]), bias, atol=2e-5)
    # The folded item is now recommended like any trained one.
    assert 777 in set(trained.recommend(k=16, exclude_seen=False)["item"].to_list())


def test_unusable_ratings_are_counted_and_rated_items_left_out(data_dir: Path, tmp_path: Path) -> None:
    make_model_checkpoint(data_dir, tmp_path / "m.ckpt", **PENALTY)
    trained = lightning_mf.load(tmp_path / "m.ckpt", device="cpu")
    ratings = pl.DataFrame({
        "user": [500, 500, 500, 500, 3, 501],
        "item": [2, 3, 3, 900, 4, 901],  # (500, 3) twice; 900 / 901 are rated only by new users
        "rating": [4.0, 1.0, 2.0, 3.0, 5.0, 4.0],
    })
    report = trained.fold_in(ratings)
    assert (report.users, report.items, report.duplicates) == (1, 0, 1)
    assert (report.ratings_used, report.ratings_of_trained_rows, report.ratings_without_factors) == (2, 1, 2)
    assert "1 ratings by trained users of trained items not used" in report.describe()
    recommended = trained.recommend([500], k=15)["item"].to_list()
    assert 2 not in recommended and 3 not in recommended and len(recommended) == 15 - 2 - 1  # item index 0 unseen


def test_sigmoid_models_and_bad_ratings_are_refused(data_dir: Path, tmp_path: Path) -> None:
    make_model_checkpoint(data_dir, tmp_path / "s.ckpt", output="sigmoid")
    with pytest.raises(DataError, match="fold-in needs a model with output='linear'"):
        lightning_mf.load(tmp_path / "s.ckpt", device="cpu").fold_in(pl.DataFrame({"user": [99], "item": [2],
                                                                                  "rating": [4.0]}))
    make_model_checkpoint(data_dir, tmp_path / "m.ckpt")
    trained = lightning_mf.load(tmp_path / "m.ckpt", device="cpu")
    with pytest.raises(DataError, match=r"fold-in rating 9.0 .* not a number on the model's scale \[0.5, 5\]"):
        trained.fold_in(pl.DataFrame({"user": [99], "item": [2], "rating": [9.0]}))
    with pytest.raises(DataError, match="user id 'abc' .* this dataset's user ids are integers"):
        trained.fold_in(pl.DataFrame({"user": ["abc"], "item": ["2"], "rating": [4.0]}))


def test_command_line_folds_in_a_ratings_file(data_dir: Path, tmp_path: Path, capsys) -> None:
    make_model_checkpoint(data_dir, tmp_path / "m.ckpt", **PENALTY)
    (tmp_path / "new.csv").write_text("user,item,rating\n500,2,4\n500,3,1.5\n500,9,5\n")
    (tmp_path / "pairs.csv").write_text("user,item\n500,4\n")
    out = tmp_path / "p.csv"
    assert main(["predict", "--ckpt_path", str(tmp_path / "m.ckpt"), "--pairs", str(tmp_path / "pairs.csv"),
                 "--ratings", str(tmp_path / "new.csv"), "--out", str(out)]) == 0
    assert "folded in 1 users and 0 items from 3 ratings" in capsys.readouterr().err
    direct = lightning_mf.load(tmp_path / "m.ckpt", device="cpu")
    direct.fold_in(tmp_path / "new.csv")
    assert pl.read_csv(out)["prediction"].to_list() == pytest.approx(direct.predict([500], [4])["prediction"].to_list())
    (tmp_path / "bad.csv").write_text("user,item,rating\n500,2,4\n500,3,lots\n")
    assert main(["recommend", "--ckpt_path", str(tmp_path / "m.ckpt"), "--ratings", str(tmp_path / "bad.csv"),
                 "--out", str(tmp_path / "r.parquet")]) == 2
    assert "bad.csv, line 3" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.realdata
def test_fold_in_of_held_out_users_beats_the_bias_fallback_on_ml_latest_small(ml_latest_small_dir: Path,
                                                                             tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from fold_in_quality import measure

    torch.manual_seed(0)
    result = measure(ml_latest_small_dir, tmp_path, epochs=8)
    assert result["held_out_users"] == 61 and result["fold_in_ratings"] > 5000
    assert result["rmse_fold_in"] < result["rmse_bias_fallback"] - 0.03, result
    assert result["rmse_bias_fallback"] < result["rmse_global_mean"], result
