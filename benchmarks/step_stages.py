"""The fast path's optimizer step alone, stage by stage, for each CPU backend: eager torch kernels,
inductor's compiled updates (`kernels: inductor`) and the C loops (`kernels: native`).

Where `throughput.py` times a whole fit, this times the pieces of one `FusedRowAdagrad` step on
random batches at ML-25M's table shapes (162,541 x 59,047, dim 128, batch 32,768; users and items
drawn with power-law popularity, so rows repeat as in real batches): the forward stage (gather, Gram
products, errors), the user table's update, the item side's (item table and both bias tables),
and whole steps on one and on two threads, in milliseconds. No data on disk, no Lightning.

    OMP_NUM_THREADS=1 python benchmarks/step_stages.py --json docs/step-stages-cpu.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe, load_average

BACKENDS = {"eager": {"compile": False}, "inductor": {"compile": True, "kernels": "inductor"},
            "native": {"compile": True, "kernels": "native"}}
STAGES = ("forward", "user table", "item side", "step, 1 thread", "step, 2 threads")


def batches(users: int, items: int, size: int, count: int, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Seeded batches with power-law popular users and items (exponents 0.5 and 0.9)."""
    rng = np.random.default_rng(seed)
    user_p = 1.0 / np.arange(1, users + 1) ** 0.5
    item_p = 1.0 / np.arange(1, items + 1) ** 0.9
    made = []
    for _ in range(count):
        user = torch.from_numpy(rng.choice(users, size=size, p=user_p / user_p.sum()))
        item = torch.from_numpy(rng.choice(items, size=size, p=item_p / item_p.sum()))
        rating = torch.from_numpy(rng.uniform(0.5, 5.0, size=size).astype(np.float32))
        made.append((user, item, rating))
    return made


def measure(backend: str, args: argparse.Namespace, data: list[tuple[torch.Tensor, ...]]) -> dict[str, float]:
    """Milliseconds per stage (mean over the batches after `args.warmup` warm-up steps)."""
    from lightning_mf.training.fused import FusedRowAdagrad
    from lightning_mf.training.fused_step import forward_part
    from lightning_mf.training.fused_tables import TableUpdates
    from lightning_mf.training.model import MatrixFactorization

    torch.manual_seed(0)
    model = MatrixFactorization(args.users, args.items, 0.5, 5.0, 3.5, args.dim, sparse=True)
    times = dict.fromkeys(STAGES, 0.0)
    for threads, stage in ((1, "step, 1 thread"), (2, "step, 2 threads")):
        optimizer = FusedRowAdagrad(model.parameters(), lr=0.05, threads=threads, keep_freed_memory=True,
                                    **BACKENDS[backend])
        for k, batch in enumerate(data):
            started = time.perf_counter()
            optimizer.update(model, *batch, l2=0.02)
            if k >= args.warmup:
                times[stage] += time.perf_counter() - started
    device = torch.device("cpu")
    with torch.no_grad():
        for k, (user, item, rating) in enumerate(data):
            compiled = optimizer._compiled_stages(device, user.shape[0])
            native = compiled if backend == "native" else None
            step = optimizer._inputs(model, user, item, rating, 2.0 / user.shape[0], 0.02, 0.0, 0.0, None, native)
            marks = [time.perf_counter()]
            forward_part(step, slice(0, user.shape[0]))
            marks.append(time.perf_counter())
            updates = TableUpdates(optimizer, step, compiled)
            updates.user_side()
            marks.append(time.perf_counter())
            updates.item_side()
            marks.append(time.perf_counter())
            if k >= args.warmup:
                for stage, (a, b) in zip(STAGES[:3], itertools.pairwise(marks)):
                    times[stage] += b - a
    counted = len(data) - args.warmup
    return {stage: 1e3 * seconds / counted for stage, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=162_541)
    parser.add_argument("--items", type=int, default=59_047)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32_768)
    parser.add_argument("--steps", type=int, default=30, help="Batches per measurement (default 30).")
    parser.add_argument("--warmup", type=int, default=5, help="Of them, not timed (compiling, first touches).")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="Comma-separated: eager, inductor, native.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup must be in [0, --steps), got {args.warmup} of {args.steps}")
    chosen = args.backends.split(",")
    unknown = sorted(set(chosen) - set(BACKENDS))
    if unknown:
        parser.error(f"--backends: unknown {unknown}, expected some of {sorted(BACKENDS)}")
    torch.set_num_threads(1)
    before = load_average()
    data = batches(args.users, args.items, args.batch_size, args.steps)
    results = {backend: measure(backend, args, data) for backend in chosen}
    after = load_average()
    print(f"machine: {describe()}; torch {torch.__version__}, 1 torch thread "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); load average {before:.2f} before, "
          f"{after:.2f} after")
    print(f"{args.users:,} x {args.items:,} tables, dim {args.dim}, batch {args.batch_size:,}; ms per batch, "
          f"mean of {args.steps - args.warmup}")
    print("| backend | " + " | ".join(STAGES) + " | M ratings/s (2 threads) |")
    print("|---|" + "---:|" * (len(STAGES) + 1))
    for backend, stages in results.items():
        rate = args.batch_size / stages["step, 2 threads"] / 1e3
        print(f"| {backend} | " + " | ".join(f"{stages[s]:.2f}" for s in STAGES) + f" | {rate:.2f} |")
    if args.json:
        payload = {"machine": describe(), "torch": torch.__version__, "load_average": [before, after],
                   "shapes": {"users": args.users, "items": args.items, "dim": args.dim,
                              "batch_size": args.batch_size},
                   "timed_steps": args.steps - args.warmup, "milliseconds": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
