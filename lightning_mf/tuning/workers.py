"""`tune --jobs N`: N processes run trials of one study at once, sharing its SQLite file.

Why processes: a trial is a whole single-threaded `fit` (the space's fast path runs on one thread
at its batch size), so on an N-core machine N trials at a time do N times the search in the same
`--timeout`. Threads would share Python's interpreter lock and Lightning's process-wide state.

The `tune` process starts N - 1 helpers with the same arguments, `--jobs 1`, the time left of its
budget and `--worker K`. Each helper runs trials into the same study with its own sampler seed (so
the processes do not draw the same values) and stops at the same deadline, or once the study has
`--trials` finished trials (up to N - 1 more may be running then and still finish). Only the main
process writes the best config, the tables and the PNG, after its helpers have ended.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_mf.tuning.study import TuneOptions

SEED_STRIDE = 7919  # a helper's sampler seed: seed + trials so far + SEED_STRIDE * worker


def helper_command(options: TuneOptions, worker: int, deadline: float | None) -> list[str]:
    """The command line of helper `worker`: `options` as `tune` takes them, with the time left."""
    args = [sys.executable, "-m", "lightning_mf", "tune", "--out", str(options.out), "--study", str(options.study_path),
            "--study_name", options.study_name, "--seed", str(options.seed), "--pruner", options.pruner,
            "--objective", options.objective, "--startup_trials", str(options.startup_trials),
            "--jobs", "1", "--worker", str(worker)]  # fmt: skip
    for config in options.configs:
        args += ["--config", str(config)]
    if options.trials is not None:
        args += ["--trials", str(options.trials)]
    if deadline is not None:
        args += ["--timeout", f"{max(deadline - time.monotonic(), 1.0):.3f}"]
    if options.space is not None:
        args += ["--space", str(options.space)]
    return [*args, "--", *options.extra_args]


def threads_per_job(jobs: int) -> int:
    """torch threads of each of `jobs` processes: the cores shared out, so they do not oversubscribe them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // jobs)


def start_helpers(options: TuneOptions, deadline: float | None) -> list[subprocess.Popen[bytes]]:
    """Starts the `--jobs` - 1 helper processes (their progress lines go to this process's output),
    each on its share of the cores, as this process is (`run_tune` sets its threads)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_job(options.jobs))}
    return [subprocess.Popen(helper_command(options, worker, deadline), env=env)
            for worker in range(1, options.jobs)]


def wait_for_helpers(helpers: list[subprocess.Popen[bytes]], stop: bool = False) -> list[int]:
    """Waits for the helpers to end on their own (deadline or `--trials` reached), or stops them
    first (`stop`: after Ctrl-C or an error in this process); returns their exit statuses."""
    for helper in helpers:
        if stop and helper.poll() is None:
            helper.terminate()
    return [helper.wait() for helper in helpers]
