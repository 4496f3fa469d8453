"""Latency and throughput of `serve`: concurrent requests from a real HTTP client on 127.0.0.1.

    python benchmarks/serve_latency.py                          # 1,000 requests per endpoint, 8 at a time
    python benchmarks/serve_latency.py --requests 200 --concurrency 4 --ckpt_path CKPT

Starts `python -m lightning_mf serve` in a child process (by default on a random dim-128 model
of 20,000 users x 10,000 items built by `recommend_speed.build`), waits for `GET /health`, then
for each endpoint sends `--requests` requests from `--concurrency` threads, each with its own
keep-alive `http.client` connection (bounded by the count and by `--max_seconds`), and reports
latency percentiles and requests/s. The server is stopped with SIGTERM at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fire(port: int, path: str, payloads: list[bytes], requests: int, concurrency: int,
         max_seconds: float = 60.0) -> dict[str, Any]:
    """Send `requests` POSTs (cycling through `payloads`) from `concurrency` threads; their latencies."""
    latencies: list[float] = []
    failures: list[int] = []
    lock, counter = threading.Lock(), iter(range(requests))
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while time.monotonic() < deadline:
                with lock:
                    number = next(counter, None)
                if number is None:
                    return
                started = time.perf_counter()
                connection.request("POST", path, body=payloads[number % len(payloads)],
                                   headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                elapsed = time.perf_counter() - started
                with lock:
                    (latencies if response.status == 200 else failures).append(
                        elapsed if response.status == 200 else response.status)
        finally:
            connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"path": path, "requests": len(latencies), "failed": len(failures), "concurrency": concurrency,
            "seconds": wall, "requests_per_s": len(latencies) / wall,
            **{f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 90, 99)}}


def start_server(checkpoint: Path, port: int, extra: list[str], timeout: float = 180.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    server = subprocess.Popen([sys.executable, "-m", "lightning_mf", "serve", "--ckpt_path", str(checkpoint),
                               "--port", str(port), "--log_level", "warning", *extra],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"serve exited with {server.returncode}: {server.stderr.read()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"serve was not healthy after {timeout:.0f} s")


def stop_server(server: subprocess.Popen) -> int:
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


def payloads(num_users: int, num_items: int, pairs: int, k: int, seed: int = 0) -> dict[str, list[bytes]]:
    """Random requests by raw id (index + 1, as `recommend_speed.build` writes them)."""
    rng = np.random.default_rng(seed)
    predict = [json.dumps({"pairs": np.stack([rng.integers(1, num_users + 1, pairs),
                                              rng.integers(1, num_items + 1, pairs)], 1).tolist()}).encode()
               for _ in range(50)]
    recommend = [json.dumps({"user": int(u), "k": k}).encode() for u in rng.integers(1, num_users + 1, 50)]
    return {"/predict": predict, "/recommend": recommend}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from machine import cpu_model
    from recommend_speed import build

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", type=Path, default=None, help="Serve this model (raw ids index + 1 assumed).")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1000, help="Requests per endpoint.")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=100, help="Pairs per /predict request.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max_seconds", type=float, default=60.0, help="Per endpoint.")
    parser.add_argument("--cache_dir", type=Path, default=REPO / "data" / "benchmarks")
    parser.add_argument("--json", type=Path, default=None)
    args, extra = parser.parse_known_args(argv)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average {os.getloadavg()[0]:.2f}", flush=True)
    checkpoint = args.ckpt_path or build(args.cache_dir / f"serve-{args.users}u-{args.items}i", args.users,
                                         args.items, 50 * args.users, 128)
    server = start_server(checkpoint, free_port(), extra)
    port = int(server.args[server.args.index("--port") + 1])
    try:
        bodies = payloads(args.users, args.items, args.pairs, args.k)
        fire(port, "/predict", bodies["/predict"], 20, 2)  # warm-up
        results = [fire(port, path, bodies[path], args.requests, args.concurrency, args.max_seconds)
                   for path in ("/predict", "/recommend")]
    finally:
        status = stop_server(server)
    print("| endpoint | requests | concurrency | req/s | p50 ms | p90 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        label = f"POST {r['path']} ({args.pairs} pairs)" if r["path"] == "/predict" else f"POST {r['path']} (k={args.k})"
        print(f"| {label} | {r['requests']:,} | {r['concurrency']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.1f} | "
              f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} |")
    summary = {"cpu": cpu_model(), "cores": os.cpu_count(), "server_exit_status": status, "results": results}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
