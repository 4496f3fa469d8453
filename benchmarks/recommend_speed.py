"""How fast is `recommend`, and in how much memory? Every user's top 10 at ML-25M's shapes.

    python benchmarks/recommend_speed.py                       # 162,541 users x 59,047 items, dim 128
    python benchmarks/recommend_speed.py --users 20000 --items 5000 --train_rows 1000000   # quicker

Writes (once, into `--cache_dir`) a dataset folder of ML-25M's shapes, 24M random training pairs
(what recommend leaves out) and a checkpoint of a dim-128 model with random factors (the speed
does not depend on the values), then runs `python -m lightning_mf recommend` on all users in a
child process and reports users/s (the command's own timing of the scoring: blocked products,
masks, top-k), the child's wall time and its peak RSS (the issue's budget: 2 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
ML25M_USERS, ML25M_ITEMS, ML25M_TRAIN = 162_541, 59_047, 24_000_000


def build(folder: Path, users: int, items: int, train_rows: int, dim: int, seed: int = 0) -> Path:
    """A dataset folder and a checkpoint of `fit`'s format in `folder` (reused when present)."""
    checkpoint = folder / "model.ckpt"
    if checkpoint.is_file():
        return checkpoint
    import torch

    from lightning_mf.data.schema import DatasetMeta, RatingScale
    from lightning_mf.training.model import MatrixFactorization

    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Popularity-skewed items, as real catalogs are; every user and item occurs.
    user = rng.integers(0, users, train_rows, dtype=np.int32)
    item = np.minimum(rng.zipf(1.3, train_rows) - 1, items - 1).astype(np.int32)
    user[:users], item[:items] = np.arange(users), np.arange(items)
    rating = rng.integers(1, 11, train_rows).astype(np.float32) / 2
    pq.write_table(pa.table({"user": user, "item": item, "rating": rating,
                             "timestamp": pa.nulls(train_rows, pa.int64())}), data / "train.parquet")
    for name, count, column in (("users", users, user), ("items", items, item)):
        pq.write_table(pa.table({"index": np.arange(count, dtype=np.int32), "raw_id": np.arange(count) + 1,
                                 "train_ratings": np.bincount(column, minlength=count)}), data / f"{name}.parquet")
    meta = DatasetMeta(num_users=users, num_items=items, splits={"train": {"rows": train_rows}},
                       rating={"min": 0.5, "max": 5.0, "mean": float(rating.mean())},
                       rating_scale=RatingScale(0.5, 5.0, 0.5), format="benchmark", fingerprint=f"recommend-{seed}")
    meta.save(data)
    torch.manual_seed(seed)
    model = MatrixFactorization(users, items, 0.5, 5.0, meta.rating["mean"], embedding_dim=dim, init_std=0.1)
    model.user_seen.fill_(True)
    model.item_seen.fill_(True)
    hparams = {"embedding_dim": dim, "num_users": users, "num_items": items, "rating_min": 0.5, "rating_max": 5.0,
               "global_mean": meta.rating["mean"], "l2": 0.05}
    torch.save({"hyper_parameters": hparams, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "RatingsDataModule": {"data_dir": str(data), "fingerprint": meta.fingerprint}}, checkpoint)
    return checkpoint


def measure(checkpoint: Path, out: Path, k: int, block_mb: int, threads: int | None) -> dict[str, Any]:
    """Runs `recommend` on every user in a child; its timing line, wall time and peak RSS."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "lightning_mf", "recommend", "--ckpt_path", str(checkpoint),
                             "--k", str(k), "--out", str(out), "--block_mb", str(block_mb), "--device", "cpu"],
                            capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"recommend failed ({result.returncode}):\n{result.stderr[-3000:]}")
    found = re.search(r"recommended (\d+) items for ([\d,]+) users in ([\d.]+) s", result.stderr)
    users, seconds = int(found.group(2).replace(",", "")), float(found.group(3))
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"users": users, "k": k, "scoring_s": seconds, "users_per_s": users / seconds, "command_wall_s": wall,
            "peak_rss_mb": peak_kb / 1024, "rows_written": pq.read_metadata(out).num_rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=ML25M_USERS)
    parser.add_argument("--items", type=int, default=ML25M_ITEMS)
    parser.add_argument("--train_rows", type=int, default=ML25M_TRAIN, help="Training pairs left out of the ranking.")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--block_mb", type=int, default=256, help="recommend --block_mb.")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the child (unset: torch's default).")
    parser.add_argument("--cache_dir", type=Path, default=REPO / "data" / "benchmarks")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    folder = args.cache_dir / f"recommend-{args.users}u-{args.items}i-{args.train_rows}r-{args.dim}d"
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average {os.getloadavg()[0]:.2f}", flush=True)
    checkpoint = build(folder, args.users, args.items, args.train_rows, args.dim)
    result = {"cpu": cpu_model(), "cores": os.cpu_count(), "items": args.items, "dim": args.dim,
              "train_rows": args.train_rows, "block_mb": args.block_mb,
              **measure(checkpoint, folder / "recs.parquet", args.k, args.block_mb, args.threads)}
    print(f"| users x items, dim | top-k | users/s | scoring s | command s | peak RSS MB |\n|---|---:|---:|---:|---:|---:|\n"
          f"| {result['users']:,} x {args.items:,}, {args.dim} | {args.k} | {result['users_per_s']:,.0f} | "
          f"{result['scoring_s']:.1f} | {result['command_wall_s']:.1f} | {result['peak_rss_mb']:,.0f} |")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
