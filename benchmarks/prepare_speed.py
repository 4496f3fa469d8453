"""Time and peak memory of `prepare` on an ML-25M-format ratings.csv (synthetic, same shape).

    python benchmarks/prepare_speed.py                  # 25M rows, 162,541 users, 59,047 items
    python benchmarks/prepare_speed.py --rows 2000000   # a quick run

Each step runs in a fresh child process that reports its own wall time and peak RSS, so the
figures are the command's, not this script's. For scale it also times a bare Polars streaming
CSV -> Parquet copy of the same file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import describe

CHILD = """
import json, resource, sys, time
started = time.perf_counter()
{body}
print(json.dumps({{"seconds": time.perf_counter() - started,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

PREPARE = """
from lightning_mf.prepare.command import main
status = main(sys.argv[1:])
if status:
    sys.exit(status)
"""

COPY = """
import polars as pl
pl.scan_csv(sys.argv[1]).sink_parquet(sys.argv[2])
"""


def run_child(body: str, *args: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(body=body), *args], check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=25_000_000)
    parser.add_argument("--users", type=int, default=162_541)
    parser.add_argument("--items", type=int, default=59_047)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the CSV and dataset here (default: a temp dir).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures as JSON.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        csv = work / f"ratings-{args.rows}.csv"
        if not csv.exists():
            print(f"generating {csv} ...", flush=True)
            subprocess.run(
                [sys.executable, "-m", "lightning_mf", "prepare", "--source", "synthetic", "--rows", str(args.rows),
                 "--users", str(args.users), "--items", str(args.items), "--export_csv", str(csv)],
                check=True,
            )
        size_mb = csv.stat().st_size / 2**20
        copy = run_child(COPY, str(csv), str(work / "copy.parquet"))
        prepared = run_child(PREPARE, "--source", str(csv), "--out", str(work / "dataset"), "--force", "true")
        meta = json.loads((work / "dataset" / "meta.json").read_text())

    rows = {
        "polars streaming CSV -> Parquet copy (reference)": copy,
        "lightning_mf prepare (validate, index, split, shuffle, write)": prepared,
    }
    print(f"\n{args.rows:,} ratings, {size_mb:,.0f} MB CSV; machine: {describe()}")
    print(f"splits: {json.dumps(meta['splits'])}")
    print("| step | seconds | peak RSS (MB) |\n|---|---:|---:|")
    for name, figures in rows.items():
        print(f"| {name} | {figures['seconds']:.1f} | {figures['peak_rss_mb']:,.0f} |")
    if args.json:
        payload = {"rows": args.rows, "machine": describe(), "csv_mb": size_mb, "copy": copy, "prepare": prepared}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
