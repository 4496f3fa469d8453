"""Does `bf16-true` (bfloat16 tables on the fast path) cost accuracy, and does it pay on this CPU?

    python benchmarks/precision.py                   # ml-latest-small from ../shared/data + quickstart data
    python benchmarks/precision.py --json docs/precision-cpu.json

Two fits per dataset, `--trainer.precision 32-true` and `bf16-true`, otherwise identical:

- ml-latest-small, the 90/10 split of benchmarks/accuracy.py (`default_rng(42)`), with its committed
  config (configs/ml-latest-small.yaml: FusedSGD, SVD++, 40 epochs);
- the quickstart data (configs/quickstart.yaml's 500,000 synthetic ratings, its 90/5/5 split) with
  configs/full25m.yaml's recipe (FusedRowAdagrad, SVD++, batch auto), 8 epochs.

Printed: test RMSE of both precisions, their difference (the target: at most 0.003) and fit
times. On a CPU the bfloat16 path converts rows to float32 and back and sums repeated rows before
rounding them, so it is slower there; it is meant for GPUs, where a step is bound by the bytes the
tables move (`benchmarks/gpu_check.sh` times it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import describe, load_average

from lightning_mf.prepare.options import PrepareOptions
from lightning_mf.prepare.pipeline import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
BOUND = 0.003
PRECISIONS = ("32-true", "bf16-true")


def fit_and_test(configs: list[Path], data: Path, precision: str, work: Path, extra: list[str]) -> dict[str, float]:
    from lightning_mf.cli import build_cli

    args = [arg for config in configs for arg in ("--config", str(config))]
    args += ["--data.data_dir", str(data), "--data.prepare", "null", "--trainer.precision", precision,
             "--trainer.accelerator", "cpu", "--trainer.devices", "1",
             "--trainer.logger.init_args.save_dir", str(work / "runs"), "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--trainer.enable_checkpointing", "false", *extra]
    cli = build_cli(args, run=False)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_s = time.perf_counter() - started
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return {"rmse": metrics["test/rmse"], "mae": metrics["test/mae"], "fit_s": fit_s}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", type=Path, default=REPO.parent / "shared" / "data",
                        help="Folder holding ml-latest-small/ (default: ../shared/data).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    load = load_average()
    configs = REPO / "configs"
    results: dict[str, Any] = {"machine": describe(), "load_average_before": load, "bound": BOUND, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="lmf-precision-") as scratch:
        work = Path(scratch)
        small = prepare_dataset(PrepareOptions(source=str(args.data_root / "ml-latest-small"), val_fraction=0.0,
                                               test_fraction=0.1, seed=42, on_bad_rows="skip"), work / "mls")
        quick = prepare_dataset(PrepareOptions(source="synthetic", rows=500_000, users=5_000, items=2_000),
                                work / "quickstart")
        runs = {
            "ml-latest-small 90/10, configs/ml-latest-small.yaml": ([configs / "base.yaml",
                                                                     configs / "ml-latest-small.yaml"], small, []),
            "quickstart data, configs/full25m.yaml recipe, 8 epochs": ([configs / "full25m.yaml"], quick,
                                                                       ["--trainer.max_epochs", "8"]),
        }
        for name, (files, data, extra) in runs.items():
            results["datasets"][name] = {precision: fit_and_test(files, data, precision, work, extra)
                                         for precision in PRECISIONS}
    results["load_average_after"] = load_average()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def report(results: dict[str, Any]) -> str:
    lines = [f"machine: {results['machine']}; load average {results['load_average_before']:.2f} before, "
             f"{results['load_average_after']:.2f} after", "",
             "| data, recipe | 32-true RMSE | bf16-true RMSE | difference | fit 32-true (s) | fit bf16-true (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, runs in results["datasets"].items():
        full, half = runs["32-true"], runs["bf16-true"]
        lines.append(f"| {name} | {full['rmse']:.4f} | {half['rmse']:.4f} | {half['rmse'] - full['rmse']:+.4f} | "
                     f"{full['fit_s']:.1f} | {half['fit_s']:.1f} |")
    worst = max(abs(runs["bf16-true"]["rmse"] - runs["32-true"]["rmse"]) for runs in results["datasets"].values())
    lines += ["", f"largest difference {worst:.4f} (target: at most {BOUND}): {'met' if worst <= BOUND else 'MISSED'}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
