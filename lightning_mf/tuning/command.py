"""`python -m lightning_mf tune --config ... [--trials N] [--timeout S] [--out best.yaml] [-- fit args]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning_mf.passthrough import split_fit_args
from lightning_mf.tuning.space import DEFAULT_SPACE, load_space

DESCRIPTION = """\
Search the model and optimizer settings of a fit with Optuna (TPE, seeded; bad trials pruned from
their per-epoch val/rmse), scored on the validation split only. Each trial is a `fit` with the
given configs plus the trial's settings. Writes the best settings as a config that goes after
yours, a trials table (CSV and Markdown) and a PNG of the search; the study is kept in SQLite, so
running the same command again resumes it. Arguments after `--` go to every fit.

examples:
  python -m lightning_mf tune --config configs/base.yaml --config my-data.yaml --timeout 600 --out tuned/best.yaml
  python -m lightning_mf fit --config configs/base.yaml --config my-data.yaml --config tuned/best.yaml
  python -m lightning_mf tune --print_space > space.yaml      # edit, then: tune ... --space space.yaml
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lightning_mf tune", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="A fit config, as `fit --config` takes it; repeat for several, in order.")
    parser.add_argument("--trials", type=int, default=None,
                        help="Finished trials the study should reach (a resumed study counts those it has).")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="Time budget of this run; a trial still running at its end is stopped (pruned).")
    parser.add_argument("--out", type=Path, default=Path("best.yaml"),
                        help="The best config to write (default best.yaml); beside it go <stem>-trials.csv, "
                        "<stem>-trials.md, <stem>-search.png, <stem>-study.db and <stem>-runs/ (TensorBoard).")
    parser.add_argument("--study", type=Path, default=None, metavar="FILE",
                        help="SQLite file holding the study (default: <stem>-study.db beside --out).")
    parser.add_argument("--study_name", default="tune", help="The study's name in that file (default tune).")
    parser.add_argument("--space", type=Path, default=None, metavar="FILE",
                        help=f"Search space YAML replacing the built-in one ({DEFAULT_SPACE.name}; see --print_space).")
    parser.add_argument("--print_space", action="store_true", help="Print the search space file and exit.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the TPE sampler (default 42).")
    parser.add_argument("--pruner", choices=("overfit", "median", "halving", "none"), default="overfit",
                        help="overfit (default): prune trials worse than 90%% of the others at the same point of "
                        "their fit, and overfitting ones (val/rmse rising and already above the best score); "
                        "median: Optuna's median rule; halving: successive halving; none. Diverging trials are "
                        "pruned with any.")
    parser.add_argument("--objective", choices=("last", "best"), default="last",
                        help="Score a trial by val/rmse after its last epoch (default: what a refit with the "
                        "same epochs scores) or by its best epoch's.")
    parser.add_argument("--startup_trials", type=int, default=10,
                        help="Random trials before TPE starts modelling the results (default 10).")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Processes running trials at once, sharing the study (default 1). A trial runs on "
                        "one thread, so on an N-core CPU --jobs N searches N times as many trials in a --timeout.")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # a --jobs helper's number
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs `tune`; returns the exit status (1: no trial completed, 130: interrupted)."""
    args, extra = split_fit_args(argv)
    options = build_parser().parse_args(args)
    if options.print_space:
        load_space(options.space)  # a broken file is reported, not printed
        print((options.space or DEFAULT_SPACE).read_text(), end="")
        return 0
    from lightning_mf.tuning.study import TuneOptions, run_tune  # imports Optuna and Lightning

    tune = TuneOptions(
        configs=options.config, extra_args=extra, out=options.out, trials=options.trials, timeout=options.timeout,
        study=options.study, study_name=options.study_name, space=options.space, seed=options.seed,
        pruner=options.pruner, objective=options.objective, startup_trials=options.startup_trials,
        jobs=options.jobs, worker=options.worker,
    )  # fmt: skip
    try:
        result = run_tune(tune, echo=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the study is kept in {tune.study_path}; run the same command again to resume it",
              file=sys.stderr)
        return 130
    if tune.worker:
        return 0  # the process that started this helper reports the study
    csv_table, markdown_table = result.tables
    written = f"tables {csv_table} and {markdown_table}, plot {result.plot}, study {tune.study_path}"
    if result.best_config is None:
        print(f"no trial completed, so no best config was written; {written}", file=sys.stderr)
        return 1
    best = result.study.best_trial
    print(f"best: trial {best.number}, val/rmse {best.value:.4f}; wrote {result.best_config}, {written}")
    return 0
