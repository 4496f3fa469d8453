"""Training throughput of lightning_mf on MovieLens-25M-shaped data, beside its baselines.

    python benchmarks/throughput.py                          # 25M ratings on CPU, a few minutes
    python benchmarks/throughput.py --rows 2000000           # a quicker run
    python benchmarks/throughput.py --device cuda --precision bf16-mixed --json gpu.json

In one run, each in its own child process:

1. dataset: `prepare --source synthetic` (162,541 users, 59,047 items; 96/2/2 split), made once
   into `--cache_dir` and reused;
2. loader: the DataModule alone, iterating its train loader for one epoch;
3. lightning_mf: `python -m lightning_mf fit --config configs/throughput.yaml` (dim 128, row-wise
   Adagrad in closed form, `lightning_mf.training.fused.FusedRowAdagrad`, large batches) for one epoch, or
   `--steps`; a callback (`benchmarks/fit_timer.py`) times it from inside, start-up and the first
   batch left out;
4. seed config: the experiment log's configuration (`configs/base.yaml` + `configs/log-ml25m-final.yaml`:
   batch 256, dense Adam with weight decay 1e-5, dim 128, dropout 0.05) for `--seed_steps` steps,
   its epoch extrapolated;
5. Surprise: `surprise.SVD` with 128 factors on `--surprise_rows` training ratings over the full
   user and item tables (Surprise keeps Python lists per user, so not all 25M), timed around
   `fit` for `--surprise_epochs` epochs (5); rating updates per second = epochs * ratings / fit
   time. `fit` also draws the factor tables (about 0.5 s here), which a one-epoch fit would
   count against a single epoch: five epochs amortize it the way Surprise's default 20-epoch fit
   does. Its SGD loop alone (the fit less an `n_epochs=0` fit, timed apart) is reported too, the
   strictest yardstick. Skipped, with a note, when scikit-surprise (the `bench` extra) is not
   installed.

It prints a markdown table and the ratios (lightning_mf against the multi-epoch Surprise fit, the
headline, and against Surprise's loop alone), and `--json PATH` writes the figures. Timings move
with other load on the machine: the 1-minute load average before and after is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import describe

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
FAST_CONFIG = REPO / "configs" / "throughput.yaml"
SEED_CONFIGS = (REPO / "configs" / "base.yaml", REPO / "configs" / "log-ml25m-final.yaml")
ML25M_USERS, ML25M_ITEMS = 162_541, 59_047
SPLIT_FRACTION = 0.02  # val and test each: 96% of the ratings train
DEFAULT_BATCH = {"cpu": 32_768, "cuda": 262_144}
SURPRISE_EPOCHS = 5
TARGET_EPOCH_RATINGS = 25_000_000

LOADER = """
import json, sys, time
import torch
from lightning_mf.data.datamodule import RatingsDataModule
data_dir, batch_size, pin, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
loader = RatingsDataModule(data_dir=data_dir, batch_size=batch_size, pin_memory=pin).train_dataloader()
ratings = batches = 0
started = time.perf_counter()
for batch in loader:
    ratings += batch.rating.shape[0]
    batches += 1
    if batches == limit:
        break
seconds = time.perf_counter() - started
print(json.dumps({"ratings": ratings, "batches": batches, "seconds": seconds, "ratings_per_s": ratings / seconds}))
"""

SURPRISE = """
import json, sys, time
import numpy as np
import pyarrow.parquet as pq
from surprise import SVD, Trainset
path, rows, users, items, factors, epochs = sys.argv[1], *map(int, sys.argv[2:7])
started = time.perf_counter()
parquet = pq.ParquetFile(path)
parts, have = [], 0
for group in range(parquet.num_row_groups):  # train.parquet is shuffled: its head is a random sample
    parts.append(parquet.read_row_group(group, columns=["user", "item", "rating"]))
    have += parts[-1].num_rows
    if have >= rows:
        break
user, item, rating = (np.concatenate([part.column(name).to_numpy() for part in parts])[:rows]
                      for name in ("user", "item", "rating"))
order = np.argsort(user, kind="stable")
user, item, rating = user[order], item[order].tolist(), rating[order].astype(np.float64).tolist()
starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1], True])
# Surprise's own layout: inner id -> list of (item, rating). Our indices serve as inner ids, so the
# factor tables span every user and item of the dataset, as lightning_mf's do.
ur = {int(user[a]): list(zip(item[a:b], rating[a:b])) for a, b in zip(starts[:-1], starts[1:])}
trainset = Trainset(ur, {}, users, items, len(rating), (0.5, 5.0), {}, {})
trainset.global_mean  # computed once and cached: part of building the trainset, not of fitting
build_s = time.perf_counter() - started
started = time.perf_counter()
SVD(n_factors=factors, n_epochs=epochs, random_state=0).fit(trainset)
fit_s = time.perf_counter() - started
# The same fit without epochs: drawing the 128-factor tables, Surprise's start-up cost.
started = time.perf_counter()
SVD(n_factors=factors, n_epochs=0, random_state=0).fit(trainset)
init_s = time.perf_counter() - started
updates = epochs * len(rating)
print(json.dumps({"ratings": len(rating), "epochs": epochs, "fit_s": fit_s, "init_s": init_s, "build_s": build_s,
                  "ratings_per_s": updates / fit_s, "sgd_ratings_per_s": updates / max(fit_s - init_s, 1e-9)}))
"""


def child_env(threads: int | None) -> dict[str, str]:
    """The environment of every child: benchmarks/ and the repo importable, the thread count set."""
    env = dict(os.environ)
    paths = [str(BENCHMARKS), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    if threads is not None:
        # torch sizes its intra-op pool from OMP_NUM_THREADS; MKL too where it is used.
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_child(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> str:
    """Runs a child to completion; its output goes to `log`, which a failure shows the end of."""
    with log.open("w") as out:
        status = subprocess.run(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    text = log.read_text()
    if status != 0:
        raise RuntimeError(f"{' '.join(args[:4])} ... failed with exit status {status}; end of {log}:\n{text[-4000:]}")
    return text


def last_json(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])


def dataset(args: argparse.Namespace, env: dict[str, str], work: Path) -> Path:
    """The prepared synthetic dataset in the cache, made on first use."""
    folder = args.cache_dir / f"synthetic-{args.rows}r-{args.users}u-{args.items}i"
    if not (folder / "meta.json").is_file():
        print(f"preparing {folder} (once) ...", flush=True)
        run_child(
            [sys.executable, "-m", "lightning_mf", "prepare", "--source", "synthetic", "--rows", str(args.rows),
             "--users", str(args.users), "--items", str(args.items), "--val_fraction", str(SPLIT_FRACTION),
             "--test_fraction", str(SPLIT_FRACTION), "--out", str(folder)],
            env, work, work / "prepare.log",
        )
    return folder


def fit_args(configs: list[Path], data_dir: Path, timer: Path, work: Path, args: argparse.Namespace) -> list[str]:
    """`python -m lightning_mf fit` with the timing callback, on this device, logging under `work`."""
    command = [sys.executable, "-m", "lightning_mf", "fit"]
    for config in configs:
        command += ["--config", str(config)]
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    callback = {"class_path": "fit_timer.FitTimer", "init_args": {"path": str(timer)}}
    return command + [
        "--data.data_dir", str(data_dir), "--data.prepare", "null",  # the configs' sources would be prepared otherwise
        "--trainer.accelerator", accelerator, "--trainer.devices", "1", "--trainer.precision", args.precision,
        "--trainer.callbacks", json.dumps([callback]),
        "--trainer.logger.init_args.save_dir", str(work / "runs"),
        "--trainer.enable_progress_bar", "false",
        "--data.pin_memory", "true" if args.device == "cuda" else "false",
    ]


def measure_loader(args: argparse.Namespace, data_dir: Path, env: dict[str, str], work: Path) -> dict[str, Any]:
    pin = "1" if args.device == "cuda" else "0"
    command = [sys.executable, "-c", LOADER, str(data_dir), str(args.batch_size), pin, str(args.loader_batches)]
    return last_json(run_child(command, env, work, work / "loader.log"))


def measure_fast(args: argparse.Namespace, data_dir: Path, env: dict[str, str], work: Path) -> dict[str, Any]:
    timer = work / "fast.json"
    command = fit_args([args.fast_config], data_dir, timer, work, args) + [
        "--data.batch_size", str(args.batch_size), "--trainer.max_epochs", "1"]
    if args.steps:
        command += ["--trainer.max_steps", str(args.steps)]
    command += args.fit_overrides
    started = time.perf_counter()
    run_child(command, env, work, work / "fast.log")
    figures = json.loads(timer.read_text())
    figures["wall_s"] = time.perf_counter() - started
    return figures


def measure_seed(args: argparse.Namespace, data_dir: Path, env: dict[str, str], work: Path) -> dict[str, Any]:
    timer = work / "seed.json"
    command = fit_args(list(SEED_CONFIGS), data_dir, timer, work, args) + [
        "--trainer.max_steps", str(args.seed_steps), "--trainer.limit_val_batches", "0",
    ]
    run_child(command, env, work, work / "seed.log")
    return json.loads(timer.read_text())


def measure_surprise(args: argparse.Namespace, data_dir: Path, env: dict[str, str], work: Path) -> dict[str, Any]:
    try:
        import surprise  # noqa: F401
    except ImportError:
        return {"note": "scikit-surprise is not installed (pip install -e '.[bench]'); Surprise skipped"}
    command = [sys.executable, "-c", SURPRISE, str(data_dir / "train.parquet"), str(args.surprise_rows),
               str(args.users), str(args.items), "128", str(args.surprise_epochs)]
    return last_json(run_child(command, env, work, work / "surprise.log"))


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def summarize(args: argparse.Namespace, meta: dict[str, Any], parts: dict[str, dict[str, Any]],
              load: tuple[float, float]) -> dict[str, Any]:
    fast, seed, surprise, loader = (parts.get(name, {}) for name in ("fast", "seed", "surprise", "loader"))
    train_rows = meta["splits"]["train"]["rows"]
    rate = fast.get("ratings_per_s")
    if fast.get("epoch_complete"):
        epoch_s, kind = fast["epoch_s"], f"measured: one epoch of {train_rows:,} training ratings"
    else:
        epoch_s = train_rows / rate if rate else None
        kind = f"extrapolated from {fast.get('batches', 0)} steps to {train_rows:,} training ratings"
    seed_rate = seed.get("ratings_per_s")
    return {
        "device": fast.get("device", args.device),
        "fit_overrides": args.fit_overrides,
        "fast_config": str(args.fast_config.relative_to(REPO) if args.fast_config.is_relative_to(REPO)
                           else args.fast_config),
        "precision": args.precision,
        "machine": describe(),
        "torch": fast.get("torch"),
        "lightning": fast.get("lightning"),
        "threads": fast.get("torch_threads"),
        "batch_size": args.batch_size,
        "rows": args.rows,
        "users": args.users,
        "items": args.items,
        "train_rows": train_rows,
        "lmf_ratings_per_s": rate,
        "lmf_ratings_per_cpu_s": ratio(fast.get("timed_ratings"), fast.get("timed_cpu_s")),
        "epoch_s": epoch_s,
        "epoch_s_kind": kind,
        "epoch_25m_s": TARGET_EPOCH_RATINGS / rate if rate else None,
        "warmup_s": fast.get("warmup_s"),
        "val_s": fast.get("val_s"),
        "val_rows": meta["splits"]["val"]["rows"],
        "val_rmse": fast.get("val_rmse"),
        "peak_rss_mb": fast.get("peak_rss_mb"),
        "fit_wall_s": fast.get("wall_s"),
        "seed_config_ratings_per_s": seed_rate,
        "seed_config_steps": seed.get("batches"),
        "seed_config_epoch_s": train_rows / seed_rate if seed_rate else None,
        "surprise_ratings_per_s": surprise.get("ratings_per_s"),
        "surprise_sgd_ratings_per_s": surprise.get("sgd_ratings_per_s"),
        "surprise_init_s": surprise.get("init_s"),
        "surprise_epochs": surprise.get("epochs"),
        "surprise_rows": surprise.get("ratings"),
        "surprise_note": surprise.get("note"),
        "loader_ratings_per_s": loader.get("ratings_per_s"),
        "lmf_over_surprise": ratio(rate, surprise.get("ratings_per_s")),
        "lmf_over_surprise_sgd": ratio(rate, surprise.get("sgd_ratings_per_s")),
        "lmf_over_seed_config": ratio(rate, seed_rate),
        "loader_over_lmf": ratio(loader.get("ratings_per_s"), rate),
        "load_average_before": load[0],
        "load_average_after": load[1],
    }


def fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value / scale:,.{digits}f}"


def times(value: float | None, digits: int = 2) -> str:
    """A ratio as `1.23x`, or `n/a` when a side was not measured."""
    return "n/a" if value is None else f"{fmt(value, 1, digits)}x"


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    m = 1e6
    lines = [
        f"\n{r['rows']:,} synthetic ratings ({r['train_rows']:,} train), {r['users']:,} users, {r['items']:,} items; "
        f"device {r['device']}, precision {r['precision']}, {r['threads']} torch thread(s); torch {r['torch']}, "
        f"lightning {r['lightning']}",
        f"machine: {r['machine']}; load average {r['load_average_before']:.2f} before, "
        f"{r['load_average_after']:.2f} after"
        + (f"; fast-path overrides: {' '.join(r['fit_overrides'])}" if r.get("fit_overrides") else ""),
        "",
        "| what | M ratings/s | epoch (s) | notes |",
        "|---|---:|---:|---|",
        f"| lightning_mf fast path (fit, {r['fast_config']}"
        f"{' with the overrides above' if r.get('fit_overrides') else ''}, {r['precision']}, "
        f"batch {r['batch_size']:,}) | "
        f"{fmt(r['lmf_ratings_per_s'], m, 3)} | {fmt(r['epoch_s'], 1, 1)} | {r['epoch_s_kind']}; "
        f"first step (compiling, if enabled) {fmt(r.get('warmup_s'), 1, 1)} s, in the epoch but not the rate; "
        f"val {fmt(r['val_s'], 1, 2)} s for {r['val_rows']:,} ratings, val RMSE {fmt(r['val_rmse'], 1, 4)}; "
        f"peak RSS {fmt(r['peak_rss_mb'], 1, 0)} MB |",
        f"| seed config (fit, batch 256, dense Adam, dim 128, wd 1e-5) | {fmt(r['seed_config_ratings_per_s'], m, 4)} | "
        f"{fmt(r['seed_config_epoch_s'], 1, 0)} | extrapolated from {r['seed_config_steps']} steps |",
        f"| Surprise SVD, 128 factors, {args.surprise_epochs}-epoch fit | "
        f"{fmt(r['surprise_ratings_per_s'], m, 3)} | {fmt(ratio(r['train_rows'], r['surprise_ratings_per_s']), 1, 0)} | "
        + (f"{r['surprise_rows']:,} training ratings, extrapolated; epochs x ratings / fit time, its "
           f"{fmt(r['surprise_init_s'], 1, 1)} s table initialisation included |" if r["surprise_rows"]
           else f"{r['surprise_note']} |"),
        f"| Surprise SVD, its SGD loop alone | {fmt(r['surprise_sgd_ratings_per_s'], m, 3)} | "
        f"{fmt(ratio(r['train_rows'], r['surprise_sgd_ratings_per_s']), 1, 0)} | the same fit less an "
        "`n_epochs=0` fit |",
        f"| DataModule alone (train loader) | {fmt(r['loader_ratings_per_s'], m, 1)} | "
        f"{fmt(ratio(r['train_rows'], r['loader_ratings_per_s']), 1, 1)} | batch {r['batch_size']:,} |",
        "",
        f"lightning_mf / Surprise ({args.surprise_epochs}-epoch fit): {times(r['lmf_over_surprise'])}; "
        f"lightning_mf / Surprise's SGD loop alone: {times(r['lmf_over_surprise_sgd'])}; lightning_mf / seed config: "
        f"{times(r['lmf_over_seed_config'], 0)}; loader / lightning_mf: {times(r['loader_over_lmf'], 1)}; "
        f"a 25M-rating epoch at this rate: {fmt(r['epoch_25m_s'], 1, 1)} s",
    ]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=25_000_000, help="Synthetic ratings in all (default 25M).")
    parser.add_argument("--users", type=int, default=ML25M_USERS)
    parser.add_argument("--items", type=int, default=ML25M_ITEMS)
    parser.add_argument("--cache_dir", type=Path, default=REPO / "data" / "benchmarks",
                        help="Where prepared datasets are kept and reused.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("32-true", "bf16-true"), default="32-true",
                        help="bf16-true: the fast path's tables in bfloat16, stochastically rounded (bf16-mixed "
                             "changes nothing on it and is refused).")
    parser.add_argument("--fast_config", type=Path, default=FAST_CONFIG,
                        help="The fast path's config (default configs/throughput.yaml; configs/full25m.yaml is "
                             "the recommended model, SVD++ term included); one epoch of it is timed.")
    parser.add_argument("--batch_size", type=int, default=None,
                        help=f"Fast-path batch size (default {DEFAULT_BATCH['cpu']:,} on CPU, "
                             f"{DEFAULT_BATCH['cuda']:,} on CUDA).")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of every child (OMP_NUM_THREADS); default 1 on CPU, torch's own on CUDA.")
    parser.add_argument("--steps", type=int, default=0, help="Fast-path steps; 0: one whole epoch.")
    parser.add_argument("--seed_steps", type=int, default=300, help="Steps of the seed configuration.")
    parser.add_argument("--surprise_rows", type=int, default=3_000_000, help="Training ratings Surprise fits on.")
    parser.add_argument("--surprise_epochs", type=int, default=SURPRISE_EPOCHS,
                        help=f"Epochs of the Surprise fit (default {SURPRISE_EPOCHS}: its table initialisation "
                             "amortized, as in Surprise's default 20-epoch fit).")
    parser.add_argument("--loader_batches", type=int, default=0, help="Batches the loader alone reads; 0: one epoch.")
    parser.add_argument("--skip", nargs="*", default=[], choices=("seed", "surprise", "loader"),
                        help="Parts to leave out.")
    parser.add_argument("--quick", action="store_true",
                        help="A smoke run: 20 seed-config steps and at most 20,000 ratings for Surprise.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures as JSON.")
    parser.add_argument("fit_overrides", nargs="*", metavar="-- FIT_ARG",
                        help="After `--`: more `fit` arguments for the fast path, e.g. "
                             "`-- --model.optimizer.init_args.threads 1`.")
    args = parser.parse_args(argv)
    args.fast_config = args.fast_config.resolve()  # the fits run in a scratch folder
    if not args.fast_config.is_file():
        parser.error(f"--fast_config: no such file: {args.fast_config}")
    if args.quick:
        args.seed_steps = min(args.seed_steps, 20)
        args.surprise_rows = min(args.surprise_rows, 20_000)
    for name in ("rows", "users", "items", "seed_steps", "surprise_rows", "surprise_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("steps", "loader_batches"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.batch_size is None:
        args.batch_size = DEFAULT_BATCH[args.device]
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    env = child_env(args.threads)
    load_before = os.getloadavg()[0]
    if load_before > 1.5:
        print(f"warning: load average {load_before:.2f}: other work on this machine will slow these timings",
              flush=True)
    with tempfile.TemporaryDirectory(prefix="lmf-throughput-") as scratch:
        work = Path(scratch)
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        data_dir = dataset(args, env, work)
        meta = json.loads((data_dir / "meta.json").read_text())
        steps = {"loader": measure_loader, "fast": measure_fast, "seed": measure_seed, "surprise": measure_surprise}
        parts: dict[str, dict[str, Any]] = {}
        for name, measure in steps.items():
            if name in args.skip:
                continue
            print(f"measuring {name} ...", flush=True)
            parts[name] = measure(args, data_dir, env, work)
    if "surprise" in args.skip:
        parts["surprise"] = {"note": "skipped (--skip surprise)"}
    results = summarize(args, meta, parts, (load_before, os.getloadavg()[0]))
    print(report(results, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
