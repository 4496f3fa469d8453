"""The memory rates a fast-path step is bound by, on this CPU: a big copy and random row gathers.

    python benchmarks/memory_rates.py
    python benchmarks/memory_rates.py --json docs/memory-rates-cpu.json

A step gathers and scatters 512-byte rows (dim 128, float32) at random over tables of 30-80 MB,
so the random-row rate, not the copy bandwidth, decides how fast the fast path runs. Measured on
one thread: a 256 MB `numpy` copy (GB/s), and `index_select` of 32,768 random rows from a
162,541 x 128 table (ML-25M's user table) in memory on ordinary 4 KiB pages and in memory advised
for transparent huge pages (`lightning_mf.training.huge_pages`, what the fast path does with its
tables). Printed with the CPU model and the kernel's THP setting, which explain most of the
difference between the development VMs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import describe, load_average

from lightning_mf.training.huge_pages import empty_on_huge_pages, huge_pages_available

ROWS, WIDTH, BATCH = 162_541, 128, 32_768


def best_of(repeats: int, call: Any) -> float:
    """The fastest of `repeats` timed calls, in seconds (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def copy_rate() -> float:
    source = np.ones(32 * 1024 * 1024, dtype=np.float64)  # 256 MB
    target = np.empty_like(source)
    return source.nbytes / best_of(5, lambda: np.copyto(target, source)) / 1e9


def gather_rate(table: torch.Tensor, repeats: int = 20) -> float:
    """Rows per second of `index_select`, fresh random rows each time (as in training: the same
    rows again would come from the cache)."""
    generator = torch.Generator().manual_seed(0)
    batches = iter([torch.randint(0, ROWS, (BATCH,), generator=generator) for _ in range(repeats + 1)])
    out = torch.empty(BATCH, WIDTH)
    torch.index_select(table, 0, next(batches), out=out)  # first touch of `out`
    return BATCH / best_of(repeats, lambda: torch.index_select(table, 0, next(batches), out=out))


def thp_setting() -> str:
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        return "unavailable"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load = load_average()
    plain = torch.randn(ROWS, WIDTH)
    huge = empty_on_huge_pages((ROWS, WIDTH), torch.float32).copy_(plain)
    results = {
        "machine": describe(), "load_average": load, "transparent_hugepage": thp_setting(),
        "huge_pages_available": huge_pages_available(), "copy_gb_per_s": copy_rate(),
        "gather_rows_per_s_4k_pages": gather_rate(plain), "gather_rows_per_s_huge_pages": gather_rate(huge),
    }
    print(f"machine: {results['machine']}; load average {load:.2f}; THP: {results['transparent_hugepage']}\n")
    print("| what (one thread) | rate |\n|---|---:|")
    print(f"| numpy copy of 256 MB | {results['copy_gb_per_s']:.1f} GB/s |")
    print(f"| random 512-byte row gather, 4 KiB pages | {results['gather_rows_per_s_4k_pages'] / 1e6:.1f}M rows/s |")
    print(f"| random 512-byte row gather, huge pages (madvise) | "
          f"{results['gather_rows_per_s_huge_pages'] / 1e6:.1f}M rows/s |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
