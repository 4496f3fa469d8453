"""The command line, driven like a user would: `python -m lightning_mf ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from lightning_mf.training.module import RatingPredictor

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"
# The quickstart config, shrunk to seconds: a small synthetic set and two short epochs.
SMALL = [
    "--data.prepare.rows", "20000", "--data.prepare.users", "400", "--data.prepare.items", "300",
    "--data.batch_size", "1024", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
]


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lightning_mf", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = run(["--help"], tmp_path)
    assert result.returncode == 0
    for command in ("prepare", "fit", "validate", "test", "predict", "recommend", "export", "serve"):
        assert f"\n  {command} " in result.stdout
    assert run([], tmp_path).returncode == 2
    unknown = run(["train"], tmp_path)
    assert unknown.returncode == 2 and "unknown command 'train'" in unknown.stderr


@pytest.mark.slow
def test_subcommand_help_and_print_config(tmp_path: Path) -> None:
    assert "--data.shuffle_window" in run(["fit", "--help"], tmp_path).stdout
    result = run(["fit", "--config", str(QUICKSTART), "--print_config"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout)
    assert config["data"]["prepare"]["source"] == "synthetic"
    assert config["checkpoint"]["monitor"] == "val/rmse" and config["checkpoint"]["save_last"] is True
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == "runs"
    # Sizes are linked from the data at instantiation, never written into the config.
    assert "num_users" not in config["model"]
    assert not (tmp_path / "data").exists(), "--print_config must not prepare data"


def test_prepare_is_routed(tmp_path: Path) -> None:
    result = run(["prepare", "--help"], tmp_path)
    assert result.returncode == 0 and "--source" in result.stdout


def test_bad_data_dir_exits_2_with_a_message(tmp_path: Path) -> None:
    result = run(["fit", "--data.data_dir", str(tmp_path / "nowhere"), "--trainer.logger", "false"], tmp_path)
    assert result.returncode == 2
    assert "error: " in result.stderr and "is not a prepared dataset folder" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working folder of one quickstart `fit`: data/quickstart and runs/quickstart/version_0."""
    cwd = tmp_path_factory.mktemp("quickstart")
    result = run(["fit", "--config", str(QUICKSTART), *SMALL], cwd)
    assert result.returncode == 0, result.stderr[-4000:]
    return cwd


@pytest.mark.slow
def test_fit_writes_checkpoints_config_and_curves(fitted: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = fitted / "runs" / "quickstart" / "version_0"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and any(name.startswith("epoch") and "val_rmse" in name for name in checkpoints)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["data_dir"] == "data/quickstart" and saved["trainer"]["max_epochs"] == 2
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "val/loss", "val/rmse"):
        assert tag in scalars
    assert len(events.Scalars("train/loss")) == 2 and len(events.Scalars("val/loss")) == 2


@pytest.mark.slow
def test_test_reports_rmse_and_predict_writes_parquet(fitted: Path) -> None:
    checkpoint = fitted / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    result = run(["test", "--config", str(QUICKSTART), *SMALL, "--ckpt_path", str(checkpoint)], fitted)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "test/rmse" in result.stdout
    assert "test/full_ndcg@10" in result.stdout and "test/popular_recall@10" in result.stdout
    out = fitted / "predictions.parquet"
    result = run(["predict", "--config", str(QUICKSTART), *SMALL, "--ckpt_path", str(checkpoint),
                  "--predictions.path", str(out)], fitted)
    assert result.returncode == 0, result.stderr[-4000:]
    table = pq.read_table(out)
    assert table.column_names == ["user", "item", "rating", "prediction", "user_raw_id", "item_raw_id", "fallback"]
    assert table.num_rows > 0
    # Raw ids beside the indices, as the dataset's id tables map them; every test user was trained.
    for side in ("user", "item"):
        raw_ids = pq.read_table(fitted / "data" / "quickstart" / f"{side}s.parquet").column("raw_id").to_numpy()
        np.testing.assert_array_equal(table.column(f"{side}_raw_id").to_numpy(),
                                      raw_ids[table.column(side).to_numpy()])
    assert set(table.column("fallback").to_pylist()) <= {"model", "user unseen", "item unseen", "global mean"}
    # The rows are the test split's, in order, and each prediction is the checkpoint's model's own.
    split = pq.read_table(fitted / "data" / "quickstart" / "test.parquet")
    for name in ("user", "item", "rating"):
        assert table.column(name).to_pylist() == split.column(name).to_pylist(), name
    model = RatingPredictor.load_from_checkpoint(checkpoint, map_location="cpu").model.eval()
    user, item = (torch.from_numpy(table.column(name).to_numpy()) for name in ("user", "item"))
    with torch.no_grad():
        expected = model(user, item).numpy()
    np.testing.assert_allclose(table.column("prediction").to_numpy(), expected, rtol=0, atol=1e-6)
    assert expected.std() > 0.05, "a trained model, not the global mean"


@pytest.mark.slow
def test_bf16_mixed_precision_runs_on_cpu(fitted: Path) -> None:
    args = ["fit", "--config", str(QUICKSTART), *SMALL, "--trainer.max_epochs", "1",
            "--trainer.precision", "bf16-mixed", "--trainer.logger.init_args.name", "bf16"]
    result = run(args, fitted)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (fitted / "runs" / "bf16" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_checkpointing_off_drops_the_default_checkpoint(fitted: Path) -> None:
    args = ["fit", "--config", str(QUICKSTART), *SMALL, "--trainer.max_epochs", "1",
            "--trainer.enable_checkpointing", "false", "--trainer.logger.init_args.name", "no_checkpoints"]
    result = run(args, fitted)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = fitted / "runs" / "no_checkpoints" / "version_0"
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_recommend_reads_a_fit_checkpoint(fitted: Path, tmp_path: Path) -> None:
    """`recommend` on what `fit` wrote: every user's top 5, scored as the LightningModule predicts."""
    from lightning_mf.__main__ import main

    checkpoint = fitted / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    data = fitted / "data" / "quickstart"
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--ckpt_path", str(checkpoint), "--data_dir", str(data), "--k", "5",
                 "--out", str(out)]) == 0
    recs = pq.read_table(out)
    users = pq.read_table(data / "users.parquet")
    assert recs.num_rows == 5 * users.num_rows
    index = {name: {raw: i for i, raw in enumerate(pq.read_table(data / f"{name}s.parquet").column("raw_id")
                                                   .to_pylist())} for name in ("user", "item")}
    user = torch.tensor([index["user"][raw] for raw in recs.column("user").to_pylist()])
    item = torch.tensor([index["item"][raw] for raw in recs.column("item").to_pylist()])
    model = RatingPredictor.load_from_checkpoint(checkpoint, map_location="cpu").model.eval()
    with torch.no_grad():
        expected = model(user, item).numpy()
    np.testing.assert_allclose(recs.column("score").to_numpy(), expected, rtol=0, atol=1e-5)
    train = pq.read_table(data / "train.parquet")
    rated = set(zip(train.column("user").to_pylist(), train.column("item").to_pylist()))
    assert not rated & set(zip(user.tolist(), item.tolist()))
