"""`recommend` and the dense tables behind it, against brute force through the model's own forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import lightning_mf
from inference_helpers import UNSEEN_ITEM, make_model_checkpoint, make_string_id_dataset, model_scores
from lightning_mf.__main__ import main
from lightning_mf.training.dense_tables import DenseTables

K = 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    folder = tmp_path_factory.mktemp("recommend")
    make_string_id_dataset(folder / "data", train_rows=600, val_rows=100, test_rows=100, num_users=30, num_items=25)
    model = make_model_checkpoint(folder / "data", folder / "model.ckpt", implicit_feedback=True)
    return folder / "data", folder / "model.ckpt", model


def _ids(folder: Path, name: str) -> np.ndarray:
    return pl.read_parquet(folder / name)["raw_id"].to_numpy()


def _brute_force(folder: Path, model, k: int, exclude_splits: tuple[str, ...] = ("train",)) -> dict[str, list[str]]:
    """Each user's top k by the model's forward, with numpy: rated items and unseen items left out."""
    scores = model_scores(model, model.num_users, model.num_items)
    scores[:, ~model.item_seen.numpy()] = -np.inf
    for split in exclude_splits:
        rated = pl.read_parquet(folder / f"{split}.parquet")
        scores[rated["user"].to_numpy(), rated["item"].to_numpy()] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    users, items = _ids(folder, "users.parquet"), _ids(folder, "items.parquet")
    return {users[u]: [items[i] for i in order[u] if np.isfinite(scores[u, i])] for u in range(model.num_users)}


def _by_user(frame: pl.DataFrame) -> dict[str, list[str]]:
    frame = frame.sort("user", "rank")
    return {user: group["item"].to_list() for (user,), group in frame.group_by("user", maintain_order=True)}


def test_recommend_equals_a_brute_force_ranking_and_leaves_out_training_items(trained) -> None:
    folder, checkpoint, model = trained
    recs = lightning_mf.load(checkpoint, device="cpu").recommend(k=K)
    assert recs.columns == ["user", "item", "rank", "score"] and recs["user"].dtype == pl.String
    assert _by_user(recs) == _brute_force(folder, model, K)
    assert set(recs["user"]) == set(_ids(folder, "users.parquet"))  # raw ids round-trip, every user
    assert recs.group_by("user").agg(pl.col("rank").sort()).get_column("rank").to_list()[0] == list(range(1, K + 1))
    # No training item, and no item without trained factors.
    users, items = _ids(folder, "users.parquet"), _ids(folder, "items.parquet")
    train = pl.read_parquet(folder / "train.parquet")
    rated = pl.DataFrame({"user": users[train["user"].to_numpy()], "item": items[train["item"].to_numpy()]})
    assert recs.join(rated, on=["user", "item"], how="inner").height == 0
    assert items[UNSEEN_ITEM] not in set(recs["item"])


def test_score_is_the_prediction_of_the_pair(trained) -> None:
    folder, checkpoint, model = trained
    trained_model = lightning_mf.load(checkpoint, device="cpu")
    recs = trained_model.recommend(k=K)
    predicted = trained_model.predict(recs["user"], recs["item"])
    np.testing.assert_allclose(recs["score"].to_numpy(), predicted["prediction"].to_numpy(), rtol=0, atol=1e-5)
    # Unseen items are never recommended; the unseen user 0 still gets the fallback ranking.
    assert set(predicted["fallback"]) == {"model", "user unseen"}


def test_exclude_splits_and_include_seen(trained) -> None:
    folder, checkpoint, model = trained
    trained_model = lightning_mf.load(checkpoint, device="cpu")
    excluded = trained_model.recommend(k=K, exclude=["val", "test"])
    assert _by_user(excluded) == _brute_force(folder, model, K, ("train", "val", "test"))
    everything = trained_model.recommend(k=K, exclude_seen=False)
    assert _by_user(everything) == _brute_force(folder, model, K, ())


def test_command_line_writes_raw_ids_for_chosen_users(trained, tmp_path: Path) -> None:
    folder, checkpoint, model = trained
    out = tmp_path / "recs.csv"
    assert main(["recommend", "--ckpt_path", str(checkpoint), "--k", "3", "--out", str(out),
                 "--users", "u003,u007,nobody", "--device", "cpu"]) == 0
    recs = pl.read_csv(out)
    expected = _brute_force(folder, model, 3)
    assert _by_user(recs.filter(pl.col("user") != "nobody")) == {"u003": expected["u003"], "u007": expected["u007"]}
    # An unknown user gets the fallback ranking: the most positive item biases, nothing excluded.
    cold = recs.filter(pl.col("user") == "nobody")["item"].to_list()
    bias = model.item_bias.weight[:, 0].detach().numpy().copy()
    bias[~model.item_seen.numpy()] = -np.inf
    assert cold == list(_ids(folder, "items.parquet")[np.argsort(-bias)[:3]])
    users_file = tmp_path / "users.csv"
    users_file.write_text("user\nu003\n")
    assert main(["recommend", "--ckpt_path", str(checkpoint), "--k", "3", "--out", str(tmp_path / "r.parquet"),
                 "--users_file", str(users_file)]) == 0
    assert pl.read_parquet(tmp_path / "r.parquet")["item"].to_list() == expected["u003"]


def test_a_checkpoint_on_another_dataset_is_refused(trained, tmp_path: Path, capsys) -> None:
    folder, checkpoint, model = trained
    make_string_id_dataset(tmp_path / "other", num_users=30, num_items=25, seed=5)
    assert main(["recommend", "--ckpt_path", str(checkpoint), "--out", str(tmp_path / "r.parquet"),
                 "--data_dir", str(tmp_path / "other")]) == 2
    message = capsys.readouterr().err
    assert "fingerprint tests-0" in message and "tests-5" in message and str(tmp_path / "other") in message


@pytest.mark.parametrize("output, copies, implicit", [("linear", 1, False), ("linear", 3, True),
                                                      ("sigmoid", 1, False), ("sigmoid", 2, True)])
def test_dense_tables_score_as_the_model_does(tmp_path: Path, output: str, copies: int, implicit: bool) -> None:
    make_string_id_dataset(tmp_path / "data", train_rows=300, num_users=12, num_items=9)
    model = make_model_checkpoint(tmp_path / "data", tmp_path / "m.ckpt", output=output, ensemble_size=copies,
                                  implicit_feedback=implicit)
    tables = DenseTables.from_model(model)
    expected = model_scores(model, 12, 9)
    users = torch.arange(12)
    np.testing.assert_allclose(tables.score_all_items(*tables.user_rows(users)).numpy(), expected, atol=1e-5)
    pairs_user, pairs_item = users.repeat_interleave(9), torch.arange(9).repeat(12)
    np.testing.assert_allclose(tables.score_pairs(pairs_user, pairs_item).numpy(), expected.ravel(), atol=1e-5)
