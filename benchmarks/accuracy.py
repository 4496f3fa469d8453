"""Rating accuracy of lightning_mf against Surprise SVD and SVD++ on the same MovieLens splits.

    python benchmarks/accuracy.py                        # everything (Surprise: pip install -e ".[bench]")
    python benchmarks/accuracy.py --quick                # lightning_mf only
    python benchmarks/accuracy.py --json results.json    # also write the figures

Splits: ml-100k's official u1..u5 folds, and ml-latest-small shuffled with
`numpy.random.default_rng(42).permutation`, first 90% for training. Both are made by
`prepare` (ml-latest-small's ratings of movies missing from movies.csv are rejected, as
`prepare --on_bad_rows skip` does), and every system trains and tests on exactly those rows.
lightning_mf trains with the committed configs (configs/base.yaml + configs/ml-100k.yaml or
configs/ml-latest-small.yaml) on the whole training part, as the hyperparameters were chosen on
a validation split carved out of it (docs/accuracy.md), and is scored with its final weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from lightning_mf.prepare.options import PrepareOptions
from lightning_mf.prepare.pipeline import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
ML100K_FOLDS = ("u1", "u2", "u3", "u4", "u5")


@dataclass
class Split:
    dataset: str
    name: str
    folder: Path
    config: Path


@dataclass
class Score:
    dataset: str
    split: str
    system: str
    rmse: float
    mae: float
    fit_s: float
    ndcg: float | None = None
    recall: float | None = None


def prepare_splits(data_root: Path, work: Path) -> list[Split]:
    """The benchmark's splits as dataset folders; validation empty, so training uses all of train."""
    splits = []
    for fold in ML100K_FOLDS:
        options = PrepareOptions(source=str(data_root / "ml-100k"), split="predefined", fold=fold, val_fraction=0.0)
        folder = prepare_dataset(options, work / f"ml-100k-{fold}")
        splits.append(Split("ml-100k", fold, folder, REPO / "configs" / "ml-100k.yaml"))
    options = PrepareOptions(
        source=str(data_root / "ml-latest-small"), val_fraction=0.0, test_fraction=0.1, seed=42, on_bad_rows="skip"
    )
    folder = prepare_dataset(options, work / "ml-latest-small-90-10")
    splits.append(Split("ml-latest-small", "90/10", folder, REPO / "configs" / "ml-latest-small.yaml"))
    return splits


# lightning_mf's recipes beside the committed configs (the headline): the same recipe with the exact
# SVD++ term on the autograd sparse path (how the configs trained before the fast path covered it),
# and without the SVD++ term. Each is a list of overrides after the committed config.
VARIANTS = {
    "lightning_mf": [],
    "lightning_mf exact SVD++ (autograd)": ["--model.optimizer", "torch.optim.SGD", "--model.optimizer.lr", "0.01"],
    "lightning_mf no SVD++": ["--model.implicit_feedback", "false"],
    # configs/full25m.yaml's recipe (row-wise Adagrad, large batches) in place of the split's config,
    # at a batch these 100K-rating sets can fill (16,384) and twice its epochs.
    "lightning_mf full25m recipe": ["--config", str(REPO / "configs" / "full25m.yaml"), "--data.batch_size", "16384",
                                    "--trainer.max_epochs", "40", "--trainer.logger.init_args.name", "full25m"],
}


def run_lightning_mf(split: Split, work: Path, system: str = "lightning_mf") -> Score:
    """Fit with the committed config (and the variant's overrides) on `split`, then test the final weights."""
    from lightning_mf.cli import build_cli

    args = [
        "--config", str(REPO / "configs" / "base.yaml"), "--config", str(split.config), *VARIANTS[system],
        "--data.data_dir", str(split.folder), "--data.prepare", "null",
        "--trainer.logger.init_args.save_dir", str(work / "runs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    cli = build_cli(args, run=False)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_s = time.perf_counter() - started
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return Score(
        split.dataset, split.name, system, metrics["test/rmse"], metrics["test/mae"], fit_s,
        metrics["test/ndcg@10"], metrics["test/recall@10"],
    )


def _write_surprise_csv(frame: pl.DataFrame, path: Path) -> None:
    frame.select("user", "item", "rating").write_csv(path, include_header=False)


def run_surprise(split: Split, algorithm: str, work: Path) -> Score:
    """Surprise on the very same train/test rows (read from the prepared folder)."""
    from surprise import SVD, Dataset, Reader, SVDpp, accuracy
    from surprise.model_selection import PredefinedKFold

    meta = json.loads((split.folder / "meta.json").read_text())
    scale = meta["rating_scale"]
    files = []
    for name in ("train", "test"):
        path = work / f"surprise-{split.dataset}-{split.name.replace('/', '-')}-{name}.csv"
        _write_surprise_csv(pl.read_parquet(split.folder / f"{name}.parquet"), path)
        files.append(str(path))
    reader = Reader(line_format="user item rating", sep=",", rating_scale=(scale["min"], scale["max"]))
    data = Dataset.load_from_folds([tuple(files)], reader=reader)
    trainset, testset = next(PredefinedKFold().split(data))
    model = SVD(random_state=0) if algorithm == "surprise-svd" else SVDpp(random_state=0)
    started = time.perf_counter()
    model.fit(trainset)
    fit_s = time.perf_counter() - started
    predictions = model.test(testset)
    rmse = accuracy.rmse(predictions, verbose=False)
    mae = accuracy.mae(predictions, verbose=False)
    return Score(split.dataset, split.name, algorithm, rmse, mae, fit_s)


def summarize(scores: list[Score]) -> list[dict]:
    """Mean over splits per dataset and system, in the shape `--json` promises."""
    results = []
    keys = sorted({(s.dataset, s.system) for s in scores}, key=lambda k: (k[0], not k[1].startswith("lightning_mf"), k[1]))
    for dataset, system in keys:
        rows = [s for s in scores if s.dataset == dataset and s.system == system]
        results.append(
            {
                "dataset": dataset,
                "system": system,
                "rmse": float(np.mean([r.rmse for r in rows])),
                "mae": float(np.mean([r.mae for r in rows])),
                "fit_s": float(np.mean([r.fit_s for r in rows])),
                "splits": len(rows),
            }
        )
        if rows[0].ndcg is not None:
            results[-1]["ndcg@10"] = float(np.mean([r.ndcg for r in rows]))
            results[-1]["recall@10"] = float(np.mean([r.recall for r in rows]))
    return results


def markdown(scores: list[Score], results: list[dict]) -> str:
    lines = [
        "| dataset | split | system | RMSE | MAE | NDCG@10 | Recall@10 | fit s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]

    def ranking(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    for s in scores:
        lines.append(
            f"| {s.dataset} | {s.split} | {s.system} | {s.rmse:.4f} | {s.mae:.4f} | {ranking(s.ndcg)} | "
            f"{ranking(s.recall)} | {s.fit_s:.1f} |"
        )
    for r in results:
        label = "mean" if r["splits"] > 1 else "(one split)"
        lines.append(
            f"| **{r['dataset']}** | **{label}** | **{r['system']}** | **{r['rmse']:.4f}** | "
            f"**{r['mae']:.4f}** | {ranking(r.get('ndcg@10'))} | {ranking(r.get('recall@10'))} | **{r['fit_s']:.1f}** |"
        )
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (figures differ between the machines' kinds)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return (
        f"{platform.machine()} {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", type=Path, default=REPO.parent / "shared" / "data",
                        help="Folder holding ml-100k/ and ml-latest-small/ (default: ../shared/data).")
    parser.add_argument("--quick", action="store_true", help="Only lightning_mf (no Surprise).")
    parser.add_argument("--variants", action="store_true",
                        help="Also lightning_mf's recipe with the exact SVD++ term (autograd) and without SVD++.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for lightning_mf (default 1).")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep datasets and runs here (default: temp).")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*could not find the monitored key.*")
    warnings.filterwarnings("ignore", ".*across ranks is zero.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    ours = list(VARIANTS) if args.variants else ["lightning_mf"]
    systems = ours if args.quick else [*ours, "surprise-svd", "surprise-svdpp"]
    if not args.quick:
        try:
            import surprise  # noqa: F401
        except ImportError:
            parser.error('Surprise is not installed: pip install -e ".[bench]", or pass --quick')

    with tempfile.TemporaryDirectory() as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        splits = prepare_splits(args.data_root, work)
        scores = []
        for split in splits:
            for system in systems:
                score = (run_lightning_mf(split, work, system) if system in VARIANTS
                         else run_surprise(split, system, work))
                print(f"{score.dataset} {score.split} {score.system}: RMSE {score.rmse:.4f} "
                      f"MAE {score.mae:.4f} fit {score.fit_s:.1f} s", flush=True)
                scores.append(score)

    results = summarize(scores)
    print(f"\nmachine: {machine()}\n")
    print(markdown(scores, results))
    if args.json:
        payload = {"machine": machine(), "results": results, "splits": [s.__dict__ for s in scores]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
