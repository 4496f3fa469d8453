"""Does the fast path reach the dense path's accuracy? Test RMSE of both on ml-latest-small.

    python benchmarks/rmse_parity.py                          # reads ../shared/data/ml-latest-small
    python benchmarks/rmse_parity.py --source PATH --json parity.json

Both train dim-128 biased MF on the same random 80/10/10 split (seed 42), keep the epoch with the
best validation RMSE and report its test RMSE:

- dense: the experiment log's recipe, dense embedding gradients and Adam with weight decay over
  whole tables, batch 256, dropout 0.05; weight decay tuned up from the log's 1e-5 (which overfits
  this small set by its 6th epoch) to 3e-4;
- fast: what `configs/throughput.yaml` runs at 25M, row-wise Adagrad updates of the batch's rows
  only, in closed form (`FusedRowAdagrad`, its table updates compiled), with the per-rating L2
  penalty and a batch suited to 80K training ratings (1,024; 16K would leave five steps per epoch).

The target: the fast path's test RMSE at most 0.005 above the dense path's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lightning_mf.data.datamodule import RatingsDataModule
from lightning_mf.prepare.options import PrepareOptions
from lightning_mf.training.fused import FusedRowAdagrad
from lightning_mf.training.module import RatingPredictor

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.005


@dataclass(frozen=True)
class Recipe:
    """One way to train: model keyword arguments, optimizer, batch size and epochs."""

    name: str
    optimizer: Any
    batch_size: int
    epochs: int
    model: dict[str, Any] = field(default_factory=dict)


RECIPES = (
    Recipe("dense: Adam lr 1e-3, weight decay 3e-4, dropout 0.05, batch 256",
           partial(torch.optim.Adam, lr=1e-3, weight_decay=3e-4), 256, 25, {"dropout": 0.05}),
    Recipe("fast: FusedRowAdagrad lr 0.05, compiled, l2 0.1, batch 1,024",
           partial(FusedRowAdagrad, lr=0.05, compile=True), 1024, 20, {"sparse": True, "l2": 0.1}),
)


def train_and_test(
    recipe: Recipe, data_dir: Path, work: Path, embedding_dim: int = 128, seed: int = 0
) -> dict[str, Any]:
    """Fits `recipe` keeping the best-validation epoch; returns its val and test RMSE and the time."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    pl.seed_everything(seed, verbose=False)
    data = RatingsDataModule(data_dir=str(data_dir), batch_size=recipe.batch_size)
    model = RatingPredictor(data.num_users, data.num_items, data.rating_min, data.rating_max, data.global_mean,
                            embedding_dim=embedding_dim, optimizer=recipe.optimizer, **recipe.model)
    best = ModelCheckpoint(dirpath=work, monitor="val/rmse", mode="min", save_top_k=1)
    trainer = pl.Trainer(max_epochs=recipe.epochs, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[best],
                         default_root_dir=work)
    started = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - started
    test = trainer.test(model, data, ckpt_path="best", verbose=False)[0]
    epoch = torch.load(best.best_model_path, map_location="cpu", weights_only=False)["epoch"]
    return {"recipe": recipe.name, "val_rmse": float(best.best_model_score), "test_rmse": test["test/rmse"],
            "best_epoch": epoch + 1, "epochs": recipe.epochs, "fit_s": seconds}


def prepare(source: Path, out: Path) -> Path:
    """ml-latest-small as a prepared folder (its shared copy has bad rows: they are skipped)."""
    options = PrepareOptions(source=str(source), on_bad_rows="skip")
    RatingsDataModule(data_dir=str(out), prepare=options)
    return out


def compare(source: Path, data_root: Path) -> dict[str, Any]:
    """Both recipes on ml-latest-small prepared under `data_root`; checkpoints in a temporary folder."""
    data_dir = prepare(source, data_root / "ml-latest-small")
    with tempfile.TemporaryDirectory(prefix="lmf-parity-") as scratch:
        dense, fast = (train_and_test(recipe, data_dir, Path(scratch) / str(i)) for i, recipe in enumerate(RECIPES))
    gap = fast["test_rmse"] - dense["test_rmse"]
    return {"dense": dense, "fast": fast, "gap": gap, "tolerance": TOLERANCE, "within": gap <= TOLERANCE}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "ml-latest-small",
                        help="ml-latest-small: its folder, ratings.csv or zip.")
    parser.add_argument("--data_root", type=Path, default=REPO / "data" / "benchmarks",
                        help="Where ml-latest-small is prepared (once).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures as JSON.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = compare(args.source, args.data_root)
    print("\n| path | test RMSE | best val RMSE | best epoch | fit (s) |\n|---|---:|---:|---:|---:|")
    for key in ("dense", "fast"):
        r = results[key]
        print(f"| {r['recipe']} | {r['test_rmse']:.4f} | {r['val_rmse']:.4f} | {r['best_epoch']}/{r['epochs']} | "
              f"{r['fit_s']:.0f} |")
    verdict = "within" if results["within"] else "NOT within"
    print(f"\nfast - dense test RMSE: {results['gap']:+.4f} ({verdict} the {TOLERANCE} target)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
