"""Data-parallel training of the fast path: measured on 2 CPU processes, projected to GPUs on paper.

    python benchmarks/ddp.py                       # 2M synthetic ratings, about 3 minutes
    python benchmarks/ddp.py --rows 500000 --json ddp.json

Measured, on this machine, through the CLI: one epoch of `fit --config configs/full25m.yaml` on
synthetic MovieLens-shaped data (users and items scaled from ML-25M's by the number of ratings),
once as one process (both cores: the fast path's second thread) and once as 2 DDP processes on
gloo (one thread each), batch `auto` (32,768 ratings a step over all ranks). Each rank times
itself (`fit_timer.FitTimer`); the table gives every rank's ratings per second, the exchange the
ranks used (`lightning_mf.training.fused_exchange`) and the bytes each rank sends per step and per
epoch.

On paper, at ML-25M shapes (162,541 users, 59,047 items, dim 128, 24M training ratings, a global
batch of 262,144): the bytes of both exchanges per step, and the projected epoch time on 1, 8 and
64 GPUs over NVLink (one node of 8) and InfiniBand (between nodes). The model of a step, every
assumption printed: a single GPU's step takes `--gpu_step_ms` (default: the 1.2 ms estimate of
benchmarks/README.md, 3 GB moved at 2.5 TB/s, until `benchmarks/gpu_check.sh` measures it); the
forward stage is the fraction of it measured here on the CPU; under the ratings exchange each rank
runs the forward on its share and the update on the whole batch, then waits for the all-gather;
under the dense exchange it runs both on its share, then all-reduces and applies whole tables.
"""

from __future__ import annotations

import argparse
import json
import math
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
sys.path.insert(0, str(REPO))
ML25M = {"users": 162_541, "items": 59_047, "width": 128, "train": 24_000_000, "batch": 262_144}
LINKS = {"NVLink (8 GPUs of a node)": 450e9, "InfiniBand NDR, 400 Gb/s a GPU": 50e9}
HOP_LATENCY_S = 10e-6  # per collective step of a ring; a rough figure for NVLink/NCCL


def run(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    with log.open("w") as out:
        status = subprocess.run(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if status:
        raise RuntimeError(f"{' '.join(args[:5])} ... failed ({status}); end of {log}:\n{log.read_text()[-3000:]}")


def dataset(rows: int, cache: Path, env: dict[str, str], work: Path) -> tuple[Path, int, int]:
    scale = rows / 25_000_000
    users, items = max(100, round(ML25M["users"] * scale)), max(50, round(ML25M["items"] * scale))
    folder = cache / f"synthetic-{rows}r-{users}u-{items}i"
    if not (folder / "meta.json").is_file():
        print(f"preparing {folder} (once) ...", flush=True)
        run([sys.executable, "-m", "lightning_mf", "prepare", "--source", "synthetic", "--rows", str(rows), "--users",
             str(users), "--items", str(items), "--val_fraction", "0.02", "--test_fraction", "0.02", "--out",
             str(folder)], work, env, work / "prepare.log")
    return folder, users, items


def fit(data: Path, processes: int, work: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """One epoch of configs/full25m.yaml on `processes` CPU processes; every rank's FitTimer figures."""
    timer = work / f"timer-{processes}.json"
    callback = {"class_path": "fit_timer.FitTimer", "init_args": {"path": str(timer)}}
    args = [sys.executable, "-m", "lightning_mf", "fit", "--config", str(REPO / "configs" / "full25m.yaml"),
            "--data.data_dir", str(data), "--data.prepare", "null", "--trainer.max_epochs", "1",
            "--trainer.accelerator", "cpu", "--trainer.devices", str(processes),
            "--trainer.callbacks", json.dumps([callback]), "--trainer.logger.init_args.save_dir", str(work / "runs"),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false"]
    if processes > 1:
        # Two processes share the two cores: one thread each.
        args += ["--trainer.strategy", "ddp", "--model.optimizer.init_args.threads", "1"]
    run(args, work, env, work / f"fit-{processes}.log")
    if processes == 1:
        return [json.loads(timer.read_text())]
    return [json.loads(timer.with_name(f"{timer.stem}.rank{r}{timer.suffix}").read_text()) for r in range(processes)]


def forward_share(batch: int = 32_768) -> float:
    """The forward stage's share of a fused step at ML-25M's table shapes, on this CPU, one thread."""
    import torch

    from lightning_mf.training.fused import FusedRowAdagrad
    from lightning_mf.training.fused_step import forward_part
    from lightning_mf.training.model import MatrixFactorization

    torch.set_num_threads(1)
    model = MatrixFactorization(ML25M["users"], ML25M["items"], 0.5, 5.0, 3.5, embedding_dim=ML25M["width"])
    optimizer = FusedRowAdagrad(model.parameters(), threads=1)
    generator = torch.Generator().manual_seed(0)
    user = torch.randint(0, ML25M["users"], (batch,), generator=generator)
    item = torch.randint(0, ML25M["items"], (batch,), generator=generator)
    rating = torch.rand(batch, generator=generator) * 4.5 + 0.5
    optimizer.update(model, user, item, rating, l2=0.02)  # warm-up
    whole = forward = 0.0
    for _ in range(10):
        started = time.perf_counter()
        optimizer.update(model, user, item, rating, l2=0.02)
        whole += time.perf_counter() - started
        step = optimizer._inputs(model, user, item, rating, 2.0 / batch, 0.02, 0.0, 0.0, None)
        started = time.perf_counter()
        forward_part(step, slice(0, batch))
        forward += time.perf_counter() - started
    return forward / whole


def projection(gpu_step_s: float, forward: float, gpus: int, bandwidth: float) -> dict[str, float]:
    """Seconds per epoch at ML-25M shapes under each exchange (see the module docstring)."""
    from lightning_mf.training.fused_exchange import exchange_bytes

    batch, steps = ML25M["batch"], math.ceil(ML25M["train"] / ML25M["batch"])
    out = {}
    for mode in ("ratings", "dense"):
        sent = exchange_bytes(mode, batch, ML25M["users"], ML25M["items"], ML25M["width"])
        if gpus == 1:
            compute, comm = gpu_step_s, 0.0
        elif mode == "ratings":
            compute = gpu_step_s * (forward / gpus + (1 - forward))
            comm = (gpus - 1) / gpus * sent / bandwidth + HOP_LATENCY_S * (gpus - 1)
        else:
            table_pass = 2 * 4 * (ML25M["users"] + ML25M["items"]) * (ML25M["width"] + 1) / 2.5e12
            compute = gpu_step_s / gpus + table_pass
            comm = (gpus - 1) / gpus * sent / bandwidth + 2 * HOP_LATENCY_S * (gpus - 1)
        out[mode] = steps * (compute + comm)
        out[f"{mode}_bytes_per_step"] = sent
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="Synthetic ratings (default 2M).")
    parser.add_argument("--cache_dir", type=Path, default=REPO / "data" / "benchmarks")
    parser.add_argument("--gpu_step_ms", type=float, default=1.2,
                        help="One GPU's fused step at batch 262,144, for the projection (default: the estimate).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(BENCHMARKS), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(name, None)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lmf-ddp-") as scratch:
        work = Path(scratch)
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        data, users, items = dataset(args.rows, args.cache_dir, env, work)
        meta = json.loads((data / "meta.json").read_text())
        single, ddp = fit(data, 1, work, env), fit(data, 2, work, env)
    share = forward_share()

    from lightning_mf.training.fused_exchange import choose, exchange_bytes

    train = meta["splits"]["train"]["rows"]
    batch = 32_768  # batch_size auto on a CPU, the global batch
    mode = choose("auto", batch, users, items, 128, implicit=True)
    sent = exchange_bytes(mode, batch, users, items, 128, implicit=True)
    steps = math.ceil(train // 2 / (batch // 2))
    results: dict[str, Any] = {
        "machine": describe(), "load_average_before": load,
        "load_average_after": os.getloadavg()[0], "rows": args.rows, "train_rows": train, "users": users,
        "items": items, "batch": batch, "single": single[0], "ddp": ddp, "exchange": mode,
        "bytes_per_step": sent, "bytes_per_epoch": sent * steps, "steps_per_epoch": steps, "forward_share": share,
        "gpu_step_ms": args.gpu_step_ms,
        "projection": {link: {gpus: projection(args.gpu_step_ms / 1e3, share, gpus, bandwidth) for gpus in (1, 8, 64)}
                       for link, bandwidth in LINKS.items()},
    }
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def report(r: dict[str, Any]) -> str:
    single, ddp = r["single"], r["ddp"]
    total = sum(rank["ratings_per_s"] for rank in ddp)
    lines = [
        f"machine: {r['machine']}; load average {r['load_average_before']:.2f} before, {r['load_average_after']:.2f} after",
        f"{r['rows']:,} synthetic ratings ({r['train_rows']:,} train), {r['users']:,} users, {r['items']:,} items; "
        f"configs/full25m.yaml, one epoch, global batch {r['batch']:,}",
        "",
        "| run | rank | M ratings/s | epoch (s) |",
        "|---|---:|---:|---:|",
        f"| 1 process, 2 threads | 0 | {single['ratings_per_s'] / 1e6:.3f} | {single['epoch_s']:.1f} |",
        *(f"| 2 DDP processes (gloo), 1 thread each | {rank['rank']} | {rank['ratings_per_s'] / 1e6:.3f} | "
          f"{rank['epoch_s']:.1f} |" for rank in ddp),
        f"| 2 DDP processes, both ranks | | {total / 1e6:.3f} | |",
        "",
        f"exchange: {r['exchange']}; {r['bytes_per_step'] / 1e6:.2f} MB sent per rank per step, "
        f"{r['bytes_per_epoch'] / 1e6:.1f} MB per epoch ({r['steps_per_epoch']} steps)",
        f"the forward stage's share of a fused step here (ML-25M tables, batch 32,768, one thread): "
        f"{r['forward_share']:.0%}",
        "",
        f"On paper, ML-25M shapes, global batch {ML25M['batch']:,}, {math.ceil(ML25M['train'] / ML25M['batch'])} "
        f"steps an epoch, one GPU's step {r['gpu_step_ms']} ms, hop latency {HOP_LATENCY_S * 1e6:.0f} us:",
        "",
        "| link | GPUs | ratings exchange: MB/step | epoch (s) | dense exchange: MB/step | epoch (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for link, by_gpus in r["projection"].items():
        for gpus, p in by_gpus.items():
            lines.append(f"| {link} | {gpus} | {p['ratings_bytes_per_step'] / 1e6:.1f} | {p['ratings']:.3f} | "
                         f"{p['dense_bytes_per_step'] / 1e6:.1f} | {p['dense']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
