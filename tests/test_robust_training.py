"""Training that carries over to new data: a diverging fit stops and says why, NaN is never "best",
early stopping picks the epochs, and the default recipe means the same on any rating scale."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import make_dataset

from lightning_mf.__main__ import main
from lightning_mf.cli import build_cli
from lightning_mf.errors import TrainingDiverged
from lightning_mf.training.stop_checkpoint import ResumableCheckpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
DEFAULT = REPO_ROOT / "configs" / "default.yaml"


def quiet(work: Path) -> list[str]:
    return ["--trainer.logger.init_args.save_dir", str(work / "runs"), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("robust") / "data"
    make_dataset(folder, train_rows=2000, val_rows=400, test_rows=300, num_users=60, num_items=40)
    return folder


def test_a_diverging_fit_stops_within_the_log_interval_naming_step_and_rate(
        tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--config", str(DEFAULT), "--data.data_dir", str(tiny), *quiet(tmp_path),
            "--model.optimizer", "lightning_mf.training.fused.FusedSGD", "--model.optimizer.lr", "1e6",
            "--model.loss_reduction", "sum", "--data.batch_size", "64", "--trainer.log_every_n_steps", "5"]
    cli = build_cli(args, run=False)
    with pytest.raises(TrainingDiverged, match=r"became NaN or infinite at step (\d+) \(learning rate 1e\+06\)") as caught:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    first_bad = int(str(caught.value).split("at step ")[1].split(" ")[0])
    # The flag is read on the steps the logger writes: the fit ends within log_every_n_steps of it.
    assert cli.trainer.global_step - first_bad <= 5, (cli.trainer.global_step, first_bad)
    checkpoints = list((tmp_path / "runs").rglob("*.ckpt"))
    assert not any("nan" in path.name for path in checkpoints), "no NaN checkpoint is kept as best"
    # From the command line: the message, no traceback, exit status 1.
    assert main(["fit", *args, "--trainer.logger.init_args.name", "cli"]) == 1
    err = capsys.readouterr().err
    assert "error: the training loss became NaN or infinite" in err and "Lower the learning rate" in err
    assert "Traceback" not in err


def test_a_nan_or_infinite_score_is_never_among_the_best() -> None:
    callback = ResumableCheckpoint(monitor="val/rmse", mode="min", save_top_k=1)
    trainer = SimpleNamespace()
    for bad in (float("nan"), float("inf")):
        assert not callback.check_monitor_top_k(trainer, torch.tensor(bad))  # type: ignore[arg-type]
    assert callback.check_monitor_top_k(trainer, torch.tensor(0.9))  # type: ignore[arg-type]


def test_early_stopping_picks_the_epochs_and_test_scores_the_best(tiny: Path, tmp_path: Path) -> None:
    """Random ratings: val RMSE bottoms out within a few epochs, then rises; the fit stops `patience`
    epochs after its best, and testing "best" loads that epoch's weights, not the last."""
    cli = build_cli(["--config", str(DEFAULT), "--data.data_dir", str(tiny), *quiet(tmp_path),
                     "--model.optimizer.init_args.lr", "0.2", "--model.l2", "0.0", "--model.implicit_feedback",
                     "false"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    stopper = next(c for c in cli.trainer.callbacks if type(c).__name__ == "EarlyStopping")
    checkpoint = cli.trainer.checkpoint_callback
    best_epoch = torch.load(checkpoint.best_model_path, weights_only=False)["epoch"]
    assert 0 < cli.trainer.current_epoch < 100, "stopped early"
    assert stopper.stopped_epoch == best_epoch + stopper.patience
    last = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/rmse"]
    best = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]["test/rmse"]
    assert best != last
    weights = torch.load(checkpoint.best_model_path, weights_only=False)["state_dict"]["model.user_factors.weight"]
    assert torch.equal(cli.model.model.user_factors.weight, weights), "test ran on the best epoch's weights"


@pytest.mark.realdata
def test_the_default_recipe_means_the_same_on_any_rating_scale(
        ml100k_dir: Path, ml_latest_small_dir: Path, tmp_path: Path) -> None:
    """ml-100k (1-5) and ml-latest-small (0.5-5) mapped onto 0-10 and -10..10: the test RMSE of the
    default recipe (3 epochs) scales by the mapping's factor, within 1%, so its gain over the biases
    is the same."""
    from rating_scales import map_ratings

    from lightning_mf.prepare.options import PrepareOptions
    from lightning_mf.prepare.pipeline import prepare_dataset

    sources = {
        "ml-100k": PrepareOptions(source=str(ml100k_dir), split="predefined", fold="u1", val_fraction=0.05),
        "ml-latest-small": PrepareOptions(source=str(ml_latest_small_dir), on_bad_rows="skip"),
    }
    for name, options in sources.items():
        folder = prepare_dataset(options, tmp_path / name)
        rmse = {}
        for low, high in ((None, None), (0.0, 10.0), (-10.0, 10.0)):
            data, factor = ((folder, 1.0) if low is None
                            else map_ratings(folder, tmp_path / f"{name}-{low}-{high}", low, high))
            cli = build_cli(["--config", str(DEFAULT), "--data.data_dir", str(data), *quiet(tmp_path),
                             "--trainer.max_epochs", "3", "--trainer.callbacks", "[]"], run=False)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            rmse[(low, high)] = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/rmse"]
            rmse[(low, high)] /= factor
        base = rmse[(None, None)]
        for scale, value in rmse.items():
            assert value == pytest.approx(base, rel=0.01), (name, scale, value, base)
