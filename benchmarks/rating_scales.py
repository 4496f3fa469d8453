"""The untuned default recipe on other rating scales, against Surprise's defaults on the same rows.

    python benchmarks/rating_scales.py                       # ml-100k u1..u5 and ml-latest-small
    python benchmarks/rating_scales.py --splits u1,ml-latest-small --json docs/rating-scales.json

A user's data is rarely on MovieLens's 1-5 stars. Every split of benchmarks/accuracy.py (the
official ml-100k folds, ml-latest-small's seeded 90/10), with a seeded 5% of the training part held
out as validation (the default recipe's early stopping needs one), is scored as released and with
every rating mapped affinely onto 0-10 and onto -10..10. On each:

- `lightning_mf default`: `fit --config configs/default.yaml`, nothing else (rating_unit auto,
  early stopping on val/rmse, the best epoch tested);
- `surprise-svd`: Surprise's `SVD()` with its defaults (100 factors, 20 epochs, lr 0.005, reg 0.02);
- `surprise-baseline`: Surprise's `BaselineOnly()` (biases only, ALS), the reference each gain is
  measured against.

Both train on the same training rows (the validation rows are left out of Surprise's too) and are
tested on the same test rows. Printed: RMSE, RMSE in units of the original scale (divided by the
mapping's factor) and each system's gain over the biases, `1 - RMSE / RMSE(BaselineOnly)`: a
scale-free recipe keeps the same gain on every scale.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
from machine import describe, load_average

from lightning_mf.prepare.options import PrepareOptions
from lightning_mf.prepare.pipeline import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
SCALES = {"as released": None, "0-10": (0.0, 10.0), "-10..10": (-10.0, 10.0)}
SYSTEMS = ("lightning_mf default", "surprise-svd", "surprise-baseline")


def map_ratings(folder: Path, out: Path, low: float, high: float) -> tuple[Path, float]:
    """A copy of the dataset folder with every rating mapped affinely onto [low, high] (the
    scale in meta.json with it); returns the copy and the mapping's factor."""
    meta = json.loads((folder / "meta.json").read_text())
    old_low, old_high = meta["rating_scale"]["min"], meta["rating_scale"]["max"]
    factor = (high - low) / (old_high - old_low)
    shutil.copytree(folder, out)
    for split in ("train", "val", "test"):
        path = out / f"{split}.parquet"
        frame = pl.read_parquet(path)
        mapped = ((pl.col("rating") - old_low) * factor + low).cast(frame.schema["rating"])
        frame.with_columns(mapped.alias("rating")).write_parquet(path, row_group_size=262_144)
    step = meta["rating_scale"].get("step")
    meta["rating_scale"] = {**meta["rating_scale"], "min": low, "max": high, "step": step and step * factor}
    meta["rating"] = {key: (value - old_low) * factor + low if key in ("mean", "min", "max") else
                      value * factor if key == "std" else value for key, value in meta["rating"].items()}
    meta["fingerprint"] = f"{meta.get('fingerprint', '')}-mapped-{low}-{high}"
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out, factor


def splits(data_root: Path, work: Path, only: set[str] | None) -> dict[str, Path]:
    """accuracy.py's splits, each with a seeded 5% of its training part as validation."""
    options = {fold: PrepareOptions(source=str(data_root / "ml-100k"), split="predefined", fold=fold,
                                    val_fraction=0.05) for fold in ("u1", "u2", "u3", "u4", "u5")}
    options["ml-latest-small"] = PrepareOptions(source=str(data_root / "ml-latest-small"), val_fraction=0.05,
                                                test_fraction=0.1, seed=42, on_bad_rows="skip")
    return {name: prepare_dataset(option, work / name) for name, option in options.items()
            if only is None or name in only}


def run_default(folder: Path, work: Path) -> dict[str, float]:
    from lightning_mf.cli import build_cli

    cli = build_cli(["--config", str(REPO / "configs" / "default.yaml"), "--data.data_dir", str(folder),
                     "--data.prepare", "null", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                     "--trainer.logger.init_args.save_dir", str(work / "runs"),
                     "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"], run=False)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_s = time.perf_counter() - started
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    return {"rmse": metrics["test/rmse"], "fit_s": fit_s, "epochs": cli.trainer.current_epoch}


def run_surprise(folder: Path, algorithm: str, work: Path) -> dict[str, float]:
    from surprise import SVD, BaselineOnly, Dataset, Reader, accuracy
    from surprise.model_selection import PredefinedKFold

    scale = json.loads((folder / "meta.json").read_text())["rating_scale"]
    files = []
    for name in ("train", "test"):
        path = work / f"{folder.name}-{name}.csv"
        pl.read_parquet(folder / f"{name}.parquet").select("user", "item", "rating").write_csv(
            path, include_header=False)
        files.append(str(path))
    reader = Reader(line_format="user item rating", sep=",", rating_scale=(scale["min"], scale["max"]))
    trainset, testset = next(PredefinedKFold().split(Dataset.load_from_folds([tuple(files)], reader=reader)))
    model = SVD(random_state=0) if algorithm == "surprise-svd" else BaselineOnly(verbose=False)
    started = time.perf_counter()
    model.fit(trainset)
    fit_s = time.perf_counter() - started
    return {"rmse": accuracy.rmse(model.test(testset), verbose=False), "fit_s": fit_s}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--splits", default=None, help="Comma-separated: u1..u5, ml-latest-small (default: all).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    only = set(args.splits.split(",")) if args.splits else None
    results: dict[str, Any] = {"machine": describe(), "load_average_before": load_average(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="lmf-scales-") as scratch:
        work = Path(scratch)
        for name, folder in splits(args.data_root, work, only).items():
            for scale, bounds in SCALES.items():
                data, factor = (folder, 1.0) if bounds is None else map_ratings(
                    folder, work / f"{name}-{scale}", *bounds)
                for system in SYSTEMS:
                    score = (run_default(data, work) if system == "lightning_mf default"
                             else run_surprise(data, system, work))
                    results["runs"].append({"split": name, "scale": scale, "factor": factor, "system": system,
                                            **score})
                    print(f"{name} {scale} {system}: RMSE {score['rmse']:.4f}", flush=True)
    results["load_average_after"] = load_average()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def report(results: dict[str, Any]) -> str:
    """Per dataset and scale, each system's mean RMSE, RMSE in original units and gain over the biases."""
    frame = pl.DataFrame(results["runs"]).with_columns(
        dataset=pl.when(pl.col("split").str.starts_with("u")).then(pl.lit("ml-100k u1..u5")).otherwise(pl.col("split")),
        original_units=pl.col("rmse") / pl.col("factor"))
    baseline = frame.filter(pl.col("system") == "surprise-baseline").select(
        "split", "scale", baseline=pl.col("rmse"))
    frame = frame.join(baseline, on=["split", "scale"]).with_columns(gain=1 - pl.col("rmse") / pl.col("baseline"))
    table = frame.group_by("dataset", "scale", "system", maintain_order=True).agg(
        pl.col("rmse").mean(), pl.col("original_units").mean(), pl.col("gain").mean(), pl.col("fit_s").mean())
    lines = [f"machine: {results['machine']}; load average {results['load_average_before']:.2f} before, "
             f"{results['load_average_after']:.2f} after", "",
             "| data | scale | system | RMSE | RMSE in original units | gain over biases | fit s |",
             "|---|---|---|---:|---:|---:|---:|"]
    for row in table.iter_rows(named=True):
        lines.append(f"| {row['dataset']} | {row['scale']} | {row['system']} | {row['rmse']:.4f} | "
                     f"{row['original_units']:.4f} | {row['gain']:+.2%} | {row['fit_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
