"""`python -m lightning_mf experiments run|list DIR [-- fit args]`: the command line of `series`."""

from __future__ import annotations

import sys

from jsonargparse import ActionYesNo, ArgumentParser

from lightning_mf.experiments.series import ExperimentFailed, describe_series, run_series
from lightning_mf.passthrough import split_fit_args


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m lightning_mf experiments",
        description="Run a folder of experiment configs in order, one TensorBoard run each. "
        "Arguments after `--` are appended to every fit command.",
    )
    commands = parser.add_subcommands(dest="command")
    for name, summary in (("run", "run the series, skipping finished experiments"),
                          ("list", "print each experiment, its status and its fit command")):
        sub = ArgumentParser(description=f"{summary}. Arguments after `--` are appended to every fit command, "
                             "so they override the configs: -- --data.prepare.source PATH --trainer.max_epochs 3")
        sub.add_argument("folder", type=str, help="The series folder, e.g. configs/experiments/bookcrossing.")
        sub.add_argument("--runs_dir", type=str | None, default=None,
                         help="Where the run folders go; unset: runs/<series folder name>.")
        if name == "run":
            sub.add_argument("--rerun", action=ActionYesNo, default=False, help="Run finished experiments again.")
            sub.add_argument("--only", type=str | None, default=None,
                             help="Run just these experiments, comma-separated: "
                             "--only 01-baseline,05-no-implicit-zeros.")
        commands.add_subcommand(name, sub, help=summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`experiments run|list DIR [options] [-- fit args]`; returns the exit status."""
    args, extra = split_fit_args(argv)
    config = build_parser().parse_args(args)
    command = config.command
    options = config[command]
    try:
        if command == "list":
            print(describe_series(options.folder, options.runs_dir, extra))
            return 0
        only = [name.strip() for name in options.only.split(",") if name.strip()] if options.only else None
        run_series(options.folder, options.runs_dir, options.rerun, only, extra)
    except ExperimentFailed as error:
        sys.stdout.flush()  # progress lines first, then the error
        print(f"error: {error}", file=sys.stderr)
        print("The series stopped here; finished experiments keep their results. Fix the cause and run "
              "the same command again: finished ones are skipped.", file=sys.stderr)
        return 1
    return 0
