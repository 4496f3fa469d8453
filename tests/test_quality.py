"""Quality is a test too: the committed configs learn real MovieLens and keep their accuracy."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
import torch

from lightning_mf.cli import build_cli
from lightning_mf.experiments.tb_events import read_curves

REPO = Path(__file__).resolve().parents[1]


def _cli(tmp_path: Path, config: str, *overrides: str):
    args = [
        "--config", str(REPO / "configs" / "base.yaml"), "--config", str(REPO / "configs" / config),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        *overrides,
    ]  # fmt: skip
    return build_cli(args, run=False)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fastest setting on small CPUs (benchmarks/README.md)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.realdata
def test_ml_latest_small_train_loss_falls_and_val_beats_the_global_mean(
    ml_latest_small_dir: Path, tmp_path: Path
) -> None:
    cli = _cli(
        tmp_path, "ml-latest-small.yaml",
        "--data.prepare.source", str(ml_latest_small_dir), "--data.data_dir", str(tmp_path / "mls"),
        "--trainer.max_epochs", "8",
    )  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    curves = read_curves(Path(cli.trainer.log_dir), ["train/loss", "val/rmse"])
    train_loss = curves["train/loss"].value.tolist()
    assert len(train_loss) == 8 and train_loss[-1] < 0.85 * train_loss[0]
    assert all(later <= earlier for earlier, later in zip(train_loss, train_loss[1:]))
    val = pl.read_parquet(tmp_path / "mls" / "val.parquet")["rating"]
    baseline = math.sqrt(((val - cli.datamodule.global_mean) ** 2).mean())
    assert curves["val/rmse"].value[-1] < baseline - 0.05, (curves["val/rmse"].value, baseline)


@pytest.mark.slow
@pytest.mark.realdata
def test_ml100k_u1_keeps_its_accuracy(ml100k_dir: Path, tmp_path: Path) -> None:
    """The committed ml-100k config on fold u1, trained on all of u1.base as benchmarks/accuracy.py does."""
    cli = _cli(
        tmp_path, "ml-100k.yaml",
        "--data.prepare.source", str(ml100k_dir), "--data.prepare.val_fraction", "0",
        "--data.data_dir", str(tmp_path / "u1"),
    )  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert metrics["test/rmse"] < 0.915, metrics
    assert 0.0 < metrics["test/ndcg@10"] <= 1.0 and 0.0 < metrics["test/recall@10"] <= 1.0
