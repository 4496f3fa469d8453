"""Rating accuracy of lightning_mf against Surprise SVD and SVD++ on the same MovieLens splits.

    python benchmarks/accuracy.py                        # everything (Surprise: pip install -e ".[bench]")
    python benchmarks/accuracy.py --quick                # lightning_mf only
    python benchmarks/accuracy.py --json results.json    # also write the figures
    python benchmarks/accuracy.py --tune 600 --splits u1,ml-latest-small   # + `tune` and Surprise's grid search

Splits: ml-100k's official u1..u5 folds, and ml-latest-small shuffled with
`numpy.random.default_rng(42).permutation`, first 90% for training. Both are made by
`prepare` (ml-latest-small's ratings of movies missing from movies.csv are rejected, as
`prepare --on_bad_rows skip` does), and every system trains and tests on exactly those rows.
lightning_mf trains with the committed configs (configs/base.yaml + configs/ml-100k.yaml or
configs/ml-latest-small.yaml) on the whole training part, as the hyperparameters were chosen on
a validation split carved out of it (docs/accuracy.md), and is scored with its final weights.

With `--tune SECONDS`, each split also gets two tuned systems. `lightning_mf-tuned`: `tune` with
that time budget on the split's training part (configs/base.yaml plus the data, none of the
hand-tuned settings), scored on a validation split carved from the training part as the committed
configs were (a seeded 5%: `prepare --val_fraction 0.05`, the same test rows); then its best
config is refit on the whole training part and tested with its final weights. `surprise-svd-grid`:
Surprise's `GridSearchCV` over SVD (the grid in SURPRISE_GRID, 3-fold CV inside the training
part), refit on the whole training part by GridSearchCV, tested on the same test rows. Their
`fit_s` is the search plus the refit.
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
from machine import cpu_model

from lightning_mf.prepare.options import PrepareOptions
from lightning_mf.prepare.pipeline import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
ML100K_FOLDS = ("u1", "u2", "u3", "u4", "u5")
LATEST_SMALL = "ml-latest-small"
TUNE_VAL_FRACTION = 0.05  # as the committed configs were chosen (docs/accuracy.md)
SURPRISE_GRID = {
    "n_factors": [20, 50, 100, 200],
    "n_epochs": [20, 50],
    "lr_all": [0.005, 0.01],
    "reg_all": [0.02, 0.05, 0.1],
    "random_state": [0],
}
SURPRISE_CV_FOLDS = 3


@dataclass
class Split:
    dataset: str
    name: str
    folder: Path
    config: Path
    # The same split prepared again with a validation part carved from its training rows (for `tune`).
    options: PrepareOptions | None = None

    @property
    def label(self) -> str:
        """The name `--splits` selects it by: the fold (u1..u5) or the dataset."""
        return self.name if self.dataset == "ml-100k" else self.dataset


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


def prepare_splits(data_root: Path, work: Path, only: set[str] | None = None) -> list[Split]:
    """The benchmark's splits as dataset folders; validation empty, so training uses all of train.

    Args:
        data_root: Holds ml-100k/ and ml-latest-small/.
        work: Where the dataset folders go.
        only: Labels of the splits to keep (`u1`..`u5`, `ml-latest-small`); None keeps all.
    """
    splits = []
    for fold in ML100K_FOLDS:
        if only is not None and fold not in only:
            continue
        source = str(data_root / "ml-100k")
        options = PrepareOptions(source=source, split="predefined", fold=fold, val_fraction=0.0)
        folder = prepare_dataset(options, work / f"ml-100k-{fold}")
        tune_options = PrepareOptions(source=source, split="predefined", fold=fold, val_fraction=TUNE_VAL_FRACTION)
        splits.append(Split("ml-100k", fold, folder, REPO / "configs" / "ml-100k.yaml", tune_options))
    if only is None or LATEST_SMALL in only:
        common = {"source": str(data_root / LATEST_SMALL), "test_fraction": 0.1, "seed": 42, "on_bad_rows": "skip"}
        folder = prepare_dataset(PrepareOptions(val_fraction=0.0, **common), work / "ml-latest-small-90-10")
        # The test rows are the permutation's last 10% whatever the val fraction (prepare.split.random_split).
        tune_options = PrepareOptions(val_fraction=TUNE_VAL_FRACTION, **common)
        splits.append(Split(LATEST_SMALL, "90/10", folder, REPO / "configs" / "ml-latest-small.yaml", tune_options))
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


def run_lightning_mf(split: Split, work: Path, configs: list[Path] | None = None,
                     system: str = "lightning_mf", search_s: float = 0.0) -> Score:
    """Fit on `split`'s training part with `configs` (default: base.yaml and the committed dataset
    config) and the variant's overrides, then test the final weights; `search_s` is added to the fit time."""
    from lightning_mf.cli import build_cli

    args = []
    for config in configs or [REPO / "configs" / "base.yaml", split.config]:
        args += ["--config", str(config)]
    args += [
        *VARIANTS.get(system, []),
        "--data.data_dir", str(split.folder), "--data.prepare", "null",
        "--trainer.logger.init_args.save_dir", str(work / "runs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    cli = build_cli(args, run=False)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_s = time.perf_counter() - started + search_s
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return Score(
        split.dataset, split.name, system, metrics["test/rmse"], metrics["test/mae"], fit_s,
        metrics["test/ndcg@10"], metrics["test/recall@10"],
    )


def run_tuned(split: Split, work: Path, seconds: float, seed: int, jobs: int) -> tuple[Score, dict]:
    """`tune` for `seconds` on the split's training part (its own val carved out), then refit the
    best config on the whole training part and test it; also returns what the study found."""
    from lightning_mf.tuning.study import TuneOptions, run_tune

    assert split.options is not None
    slug = f"{split.dataset}-{split.name.replace('/', '-')}"
    tune_folder = prepare_dataset(split.options, work / f"{slug}-tune")
    base = REPO / "configs" / "base.yaml"
    options = TuneOptions(
        configs=[str(base)], extra_args=["--data.data_dir", str(tune_folder), "--data.prepare", "null"],
        out=work / f"tune-{slug}" / "best.yaml", timeout=seconds, seed=seed, jobs=jobs,
    )  # fmt: skip
    started = time.perf_counter()
    result = run_tune(options, echo=lambda line: print(f"  {slug} {line}", flush=True))
    search_s = time.perf_counter() - started
    if result.best_config is None:
        raise RuntimeError(f"tune completed no trial on {slug} in {seconds} s; see {result.tables[1]}")
    best = result.study.best_trial
    states = [t.state.name.lower() for t in result.study.trials]
    found = {
        "split": split.name, "dataset": split.dataset, "search_s": search_s, "best_trial": best.number,
        "val_rmse": best.value, "params": best.params, "trials": {s: states.count(s) for s in sorted(set(states))},
        "best_config": result.best_config.read_text(),
    }  # fmt: skip
    score = run_lightning_mf(split, work, [base, result.best_config], "lightning_mf-tuned", search_s)
    return score, found


def run_surprise_grid(split: Split, work: Path) -> Score:
    """Surprise's GridSearchCV over SVD (SURPRISE_GRID, 3-fold CV) on the training rows, refit on all
    of them, tested on the test rows."""
    from surprise import SVD, Dataset, accuracy
    from surprise.model_selection import GridSearchCV, KFold

    train_csv, test_csv, reader = _surprise_files(split, work)
    data = Dataset.load_from_file(str(train_csv), reader=reader)
    testset = Dataset.load_from_file(str(test_csv), reader=reader).build_full_trainset().build_testset()
    cv = KFold(n_splits=SURPRISE_CV_FOLDS, random_state=0, shuffle=True)
    search = GridSearchCV(SVD, SURPRISE_GRID, measures=["rmse"], cv=cv, refit=True, n_jobs=1)
    started = time.perf_counter()
    search.fit(data)
    fit_s = time.perf_counter() - started
    predictions = search.test(testset)
    rmse = accuracy.rmse(predictions, verbose=False)
    mae = accuracy.mae(predictions, verbose=False)
    print(f"  {split.dataset} {split.name} surprise-svd-grid best {search.best_params['rmse']} "
          f"(CV RMSE {search.best_score['rmse']:.4f})", flush=True)
    return Score(split.dataset, split.name, "surprise-svd-grid", rmse, mae, fit_s)


def _write_surprise_csv(frame: pl.DataFrame, path: Path) -> None:
    frame.select("user", "item", "rating").write_csv(path, include_header=False)


def _surprise_files(split: Split, work: Path) -> tuple[Path, Path, object]:
    """The split's train and test rows as CSV files Surprise reads, and a Reader for its scale."""
    from surprise import Reader

    scale = json.loads((split.folder / "meta.json").read_text())["rating_scale"]
    files = []
    for name in ("train", "test"):
        path = work / f"surprise-{split.dataset}-{split.name.replace('/', '-')}-{name}.csv"
        _write_surprise_csv(pl.read_parquet(split.folder / f"{name}.parquet"), path)
        files.append(path)
    reader = Reader(line_format="user item rating", sep=",", rating_scale=(scale["min"], scale["max"]))
    return files[0], files[1], reader


def run_surprise(split: Split, algorithm: str, work: Path) -> Score:
    """Surprise on the very same train/test rows (read from the prepared folder)."""
    from surprise import SVD, Dataset, SVDpp, accuracy
    from surprise.model_selection import PredefinedKFold

    train_csv, test_csv, reader = _surprise_files(split, work)
    data = Dataset.load_from_folds([(str(train_csv), str(test_csv))], reader=reader)
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


def machine() -> str:
    return (
        f"{platform.machine()} {cpu_model()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
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
    parser.add_argument("--tune", type=float, default=None, metavar="SECONDS",
                        help="Also `tune` lightning_mf for this many seconds per split (then refit and test), "
                        "and run Surprise's GridSearchCV SVD beside it.")
    parser.add_argument("--tune_seed", type=int, default=42, help="Seed of tune's sampler (default 42).")
    parser.add_argument("--tune_jobs", type=int, default=os.cpu_count() or 1,
                        help="tune's --jobs: trials at once (default: one per core, as a user would run it).")
    parser.add_argument("--splits", default=None,
                        help="Comma-separated splits to run: u1..u5, ml-latest-small (default: all six).")
    args = parser.parse_args()
    only = None
    if args.splits:
        only = {name.strip() for name in args.splits.split(",") if name.strip()}
        unknown = only - {*ML100K_FOLDS, LATEST_SMALL}
        if unknown:
            known = ", ".join([*ML100K_FOLDS, LATEST_SMALL])
            parser.error(f"--splits: unknown {sorted(unknown)}; expected some of {known}")

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*could not find the monitored key.*")
    warnings.filterwarnings("ignore", ".*across ranks is zero.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    ours = list(VARIANTS) if args.variants else ["lightning_mf"]
    systems = ours if args.quick else [*ours, "surprise-svd", "surprise-svdpp"]
    if args.tune is not None:
        systems += ["lightning_mf-tuned"] if args.quick else ["lightning_mf-tuned", "surprise-svd-grid"]
    if not args.quick:
        try:
            import surprise  # noqa: F401
        except ImportError:
            parser.error('Surprise is not installed: pip install -e ".[bench]", or pass --quick')

    with tempfile.TemporaryDirectory() as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        splits = prepare_splits(args.data_root, work, only)
        scores, tuned = [], []
        for split in splits:
            for system in systems:
                if system in VARIANTS:
                    score = run_lightning_mf(split, work, system=system)
                elif system == "lightning_mf-tuned":
                    score, found = run_tuned(split, work, args.tune, args.tune_seed, args.tune_jobs)
                    tuned.append(found)
                elif system == "surprise-svd-grid":
                    score = run_surprise_grid(split, work)
                else:
                    score = run_surprise(split, system, work)
                print(f"{score.dataset} {score.split} {score.system}: RMSE {score.rmse:.4f} "
                      f"MAE {score.mae:.4f} fit {score.fit_s:.1f} s", flush=True)
                scores.append(score)

    results = summarize(scores)
    print(f"\nmachine: {machine()}\n")
    print(markdown(scores, results))
    for found in tuned:
        print(f"\ntuned on {found['dataset']} {found['split']}: trial {found['best_trial']} of {found['trials']}, "
              f"val/rmse {found['val_rmse']:.4f}, search {found['search_s']:.0f} s\n{found['best_config']}", end="")
    if args.json:
        payload = {"machine": machine(), "results": results, "splits": [s.__dict__ for s in scores]}
        if args.tune is not None:
            payload["tune"] = {"seconds": args.tune, "seed": args.tune_seed, "jobs": args.tune_jobs,
                               "surprise_grid": SURPRISE_GRID,
                               "studies": tuned}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
