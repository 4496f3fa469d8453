"""Does fold-in work? Users held out of training, folded in from 80% of their ratings, predict the other 20%.

    python benchmarks/fold_in_quality.py                       # reads ../shared/data/ml-latest-small
    python benchmarks/fold_in_quality.py --epochs 40 --json fold_in.json

10% of ml-latest-small's users (seeded) are left out of the dataset entirely; the model trains on
the others with the committed `configs/ml-latest-small.yaml` recipe (SVD++, count-weighted
penalties; `--epochs` shortens it). Each held-out user's ratings are split 80/20 at random. The
20% are predicted three ways: by the bias fallback (an unknown user: global mean + item bias, what
the model gives without fold-in), by the global mean, and after `TrainedModel.fold_in` of the 80%
(a closed-form ridge solve against the fixed item factors, with the model's own penalty). Prints
the three RMSEs; `tests/test_fold_in.py` asserts fold-in beats the fallback by a margin.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "ml-latest-small"


def held_out_split(ratings: pl.DataFrame, share: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(training ratings, held-out users' 80% to fold in, their 20% to predict)."""
    rng = np.random.default_rng(seed)
    users = ratings["userId"].unique().sort().to_numpy()
    held = rng.choice(users, size=max(1, int(len(users) * share)), replace=False)
    is_held = pl.col("userId").is_in(held.tolist())
    train, rest = ratings.filter(~is_held), ratings.filter(is_held)
    rest = rest.with_columns(pl.Series("u", rng.random(rest.height)))
    return train, rest.filter(pl.col("u") < 0.8).drop("u"), rest.filter(pl.col("u") >= 0.8).drop("u")


def measure(source: Path, workdir: Path, epochs: int = 40, share: float = 0.1, seed: int = 0,
            overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train without the held-out users, then compare fold-in with the fallbacks on their 20%."""
    import torch

    import lightning_mf
    from lightning_mf.cli import build_cli

    ratings = pl.read_csv(source / "ratings.csv")
    train, fold, target = held_out_split(ratings, share, seed)
    raw = workdir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train.write_csv(raw / "ratings.csv")
    shutil.copy(source / "movies.csv", raw / "movies.csv")
    args = ["--config", str(REPO / "configs" / "base.yaml"), "--config", str(REPO / "configs" / "ml-latest-small.yaml"),
            "--data.prepare.source", str(raw), "--data.data_dir", str(workdir / "data"),
            "--trainer.max_epochs", str(epochs), "--trainer.logger.init_args.save_dir", str(workdir / "runs"),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *overrides]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        cli = build_cli(args, run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        fit_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    checkpoint = Path(cli.trainer.checkpoint_callback.last_model_path)
    truth = target["rating"].to_numpy()

    def rmse(frame: pl.DataFrame) -> float:
        return float(math.sqrt(np.mean((frame["prediction"].to_numpy() - truth) ** 2)))

    model = lightning_mf.load(checkpoint, device="cpu")
    fallback = model.predict(target["userId"], target["movieId"])
    start = time.perf_counter()
    report = model.fold_in(fold.select(pl.col("userId").alias("user"), pl.col("movieId").alias("item"), "rating"))
    fold_s = time.perf_counter() - start
    folded = model.predict(target["userId"], target["movieId"])
    return {
        "held_out_users": int(target["userId"].n_unique()), "fold_in_ratings": fold.height,
        "predicted_ratings": target.height, "epochs": epochs, "fit_s": round(fit_s, 1),
        "fold_in_s": round(fold_s, 3), "fold_in": report.describe(),
        "rmse_fold_in": rmse(folded), "rmse_bias_fallback": rmse(fallback),
        "rmse_global_mean": float(math.sqrt(np.mean((model.state.global_mean - truth) ** 2))),
        "fallback_of_fold_in_predictions": dict(folded["fallback"].value_counts().iter_rows()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="The ml-latest-small folder.")
    parser.add_argument("--epochs", type=int, default=40, help="Training epochs (the config's 40 by default).")
    parser.add_argument("--share", type=float, default=0.1, help="Share of users held out.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    options = parser.parse_args()
    sys.argv = sys.argv[:1]  # LightningCLI is given its arguments; it would warn about these
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"CPU: {cpu_model()}")
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(options.source, Path(tmp), options.epochs, options.share)
    print("| predicting the held-out 20% | RMSE |\n|---|---:|")
    for key, label in (("rmse_fold_in", "fold-in of the other 80%"), ("rmse_bias_fallback", "bias fallback (no fold-in)"),
                       ("rmse_global_mean", "global mean")):
        print(f"| {label} | {result[key]:.4f} |")
    print(json.dumps(result, indent=2))
    if options.json:
        options.json.write_text(json.dumps({"cpu": cpu_model(), **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
