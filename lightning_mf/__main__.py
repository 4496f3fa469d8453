"""`python -m lightning_mf <command>` (also the `lightning-mf` script): routes to each command's parser.

Commands are imported only when run, so `--help` is quick and DataLoader workers that re-import
this module (spawn) load nothing heavy. A new command is one line in `COMMANDS`.
"""

from __future__ import annotations

import importlib
import sys

from lightning_mf.errors import DataError, TrainingDiverged

PROG = "python -m lightning_mf"

# name -> ("module:function taking the remaining argv and returning an exit status", summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("lightning_mf.prepare.command:main", "turn a ratings file or archive, or synthetic data, into a dataset"),
    "fit": ("lightning_mf.cli:fit", "train a model: fit --config configs/quickstart.yaml"),
    "validate": ("lightning_mf.cli:validate", "report val RMSE / MAE of a checkpoint (--ckpt_path)"),
    "test": ("lightning_mf.cli:test", "report test RMSE / MAE of a checkpoint (--ckpt_path)"),
    "predict": ("lightning_mf.inference.commands:predict", "predict a split (--config, --ckpt_path), or pairs by raw id (--pairs FILE)"),
    "recommend": ("lightning_mf.inference.commands:recommend", "top-K items per user by raw id, rated items left out"),
    "export": ("lightning_mf.inference.commands:export", "a model's factors, biases and id maps as Parquet and .npy"),
    "serve": ("lightning_mf.inference.serve_command:main", "HTTP JSON API (LitServe): POST /predict, POST /recommend, GET /health"),
    "experiments": ("lightning_mf.experiments.command:main", "run a folder of experiment configs in order: experiments run DIR"),
    "report": ("lightning_mf.experiments.report:main", "table and learning-curve PNGs of a runs folder, from TensorBoard events"),
    "tune": ("lightning_mf.tuning.command:main", "search a fit's settings with Optuna, on validation: tune --config ... --timeout 600"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} <command> [options]",
        "",
        "Matrix-factorization rating prediction on PyTorch Lightning.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        f"`{PROG} <command> --help` lists a command's options.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the command named by the first argument; returns the exit status (2: bad input)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"{PROG}: unknown command {name!r}; expected one of: {', '.join(COMMANDS)}\n", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    module_name, function_name = COMMANDS[name][0].split(":")
    command = getattr(importlib.import_module(module_name), function_name)
    try:
        return int(command(rest) or 0)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
