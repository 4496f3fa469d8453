"""`predict --pairs`: any pairs by raw id, every fallback, ids matched by value, malformed files refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import lightning_mf
from helpers import make_dataset
from inference_helpers import UNSEEN_ITEM, UNSEEN_USER, make_model_checkpoint, make_string_id_dataset
from lightning_mf.__main__ import main


@pytest.fixture(scope="module")
def integer_ids(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A dataset whose raw ids are index + 1 (integers), and a model over it."""
    folder = tmp_path_factory.mktemp("pairs")
    make_dataset(folder / "data", train_rows=400, num_users=20, num_items=15)
    return folder / "model.ckpt", make_model_checkpoint(folder / "data", folder / "model.ckpt")


def _forward(model, user: int, item: int) -> float:
    with torch.no_grad():
        return float(model(torch.tensor([user]), torch.tensor([item]))[0])


def test_known_unseen_and_unknown_pairs_each_get_their_fallback(integer_ids, tmp_path: Path) -> None:
    checkpoint, model = integer_ids
    pairs = tmp_path / "pairs.csv"
    # Raw id = index + 1. Rows: known; "3" is 3; user index 0 and item index 0 are unseen in training;
    # 99 and "x" are unknown ids; a blank line is skipped but counted.
    pairs.write_text(f'user,item\n2,5\n"3", 4 \n{UNSEEN_USER + 1},6\n7,{UNSEEN_ITEM + 1}\n\n99,x\n4,99\n')
    out = tmp_path / "predictions.parquet"
    assert main(["predict", "--ckpt_path", str(checkpoint), "--pairs", str(pairs), "--out", str(out)]) == 0
    frame = pl.read_parquet(out)
    assert frame.columns == ["user", "item", "prediction", "fallback"]
    assert frame["fallback"].to_list() == ["model", "model", "user unseen", "item unseen", "global mean", "item unseen"]
    assert frame["user"].to_list() == [2, 3, 1, 7, 99, 4]  # "3" is 3
    assert frame["item"].to_list() == ["5", "4", "6", "1", "x", "99"]  # "x" is no integer: all kept as text
    expected = [_forward(model, 1, 4), _forward(model, 2, 3), _forward(model, UNSEEN_USER, 5),
                _forward(model, 6, UNSEEN_ITEM)]
    np.testing.assert_allclose(frame["prediction"].to_numpy()[:4], expected, atol=1e-6)
    global_mean = float(model.offset)
    user_bias_only = global_mean + float(model.user_bias.weight[3, 0].detach())
    np.testing.assert_allclose(frame["prediction"].to_numpy()[4:], [global_mean, user_bias_only], atol=1e-6)


def test_ids_match_by_value(integer_ids, tmp_path: Path) -> None:
    checkpoint, _ = integer_ids
    model = lightning_mf.load(checkpoint, device="cpu")
    as_text = model.predict(["3", " 4 "], ["5", "6"])
    as_numbers = model.predict([3, 4], np.array([5, 6]))
    assert as_text["prediction"].to_list() == as_numbers["prediction"].to_list()
    assert as_text["user"].dtype == pl.Int64 and as_text["fallback"].to_list() == ["model", "model"]

    make_string_id_dataset(tmp_path / "isbn", train_rows=200, num_users=10, num_items=8)
    strings = lightning_mf.load(make_model_checkpoint_path(tmp_path), device="cpu")
    # String ids compare as strings: 1 is "1", which is not "000000001X"; leading zeros matter.
    frame = strings.predict(["u001", "u001", 1], ["000000001X", "000000001x", "000000001X"])
    assert frame["fallback"].to_list() == ["model", "item unseen", "user unseen"]
    assert frame["user"].dtype == pl.String


def make_model_checkpoint_path(tmp_path: Path) -> Path:
    make_model_checkpoint(tmp_path / "isbn", tmp_path / "isbn.ckpt")
    return tmp_path / "isbn.ckpt"


@pytest.mark.parametrize("content, expected", [
    ("user,item\n1,2\n3\n", r"pairs.csv, line 3: expected 2 comma-separated fields \(user, item\), found 1: '3'"),
    ("user,item\n1,2\n\n1,2,3\n", "pairs.csv, line 4: expected 2 comma-separated fields"),
    ("user,item\n1,2\n,5\n", "pairs.csv, line 3: empty user id"),
    ("userId,movieId\n1,2\n", r"pairs.csv, line 1: the header has \['userId', 'movieId'\]; expected the column\(s\) "
                              r"\['user', 'item'\]"),
    ("", "pairs.csv: the file is empty"),
])
def test_malformed_pair_files_name_the_file_and_line(integer_ids, tmp_path: Path, capsys, content: str,
                                                     expected: str) -> None:
    import re

    checkpoint, _ = integer_ids
    (tmp_path / "pairs.csv").write_text(content)
    assert main(["predict", "--ckpt_path", str(checkpoint), "--pairs", str(tmp_path / "pairs.csv"),
                 "--out", str(tmp_path / "out.parquet")]) == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not (tmp_path / "out.parquet").exists()


def test_parquet_pairs(integer_ids, tmp_path: Path, capsys) -> None:
    checkpoint, _ = integer_ids
    pl.DataFrame({"user": [2, 3], "item": ["5", "6"], "extra": [0.0, 1.0]}).write_parquet(tmp_path / "pairs.parquet")
    assert main(["predict", "--ckpt_path", str(checkpoint), "--pairs", str(tmp_path / "pairs.parquet"),
                 "--out", str(tmp_path / "out.csv")]) == 0
    assert pl.read_csv(tmp_path / "out.csv")["fallback"].to_list() == ["model", "model"]
    pl.DataFrame({"user": [2, None], "item": [5, 6]}).write_parquet(tmp_path / "nulls.parquet")
    assert main(["predict", "--ckpt_path", str(checkpoint), "--pairs", str(tmp_path / "nulls.parquet"),
                 "--out", str(tmp_path / "out.csv")]) == 2
    assert "nulls.parquet, row 2: empty user id" in capsys.readouterr().err
