"""`python -m lightning_mf prepare`: its own jsonargparse command line over PrepareOptions."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from jsonargparse import ArgumentParser, DefaultHelpFormatter

from lightning_mf.errors import DataError
from lightning_mf.prepare.options import PrepareOptions

DESCRIPTION = """\
Turn a ratings source into a dataset folder for training: validated, ids mapped to contiguous
indices, split into train / val / test, train shuffled, written as Parquet with meta.json.

examples:
  python -m lightning_mf prepare --source ../shared/data/ml-latest-small --out data/ml-latest-small
  python -m lightning_mf prepare --source ml-25m --out data/ml-25m
  python -m lightning_mf prepare --source ../shared/data/ml-100k --split predefined --fold u1 --out data/ml-100k-u1
  python -m lightning_mf prepare --source BX-Book-Ratings.csv --out data/bookcrossing
  python -m lightning_mf prepare --source synthetic --rows 1000000 --users 20000 --items 5000 --out data/synthetic
  python -m lightning_mf prepare --source synthetic --rows 25000000 --users 162541 --items 59047 --export_csv ratings.csv
"""


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks."""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m lightning_mf prepare", description=DESCRIPTION, formatter_class=_HelpFormatter
    )
    parser.add_argument("--out", type=str | None, default=None, help="The dataset folder to write.")
    parser.add_argument("--force", type=bool, default=False, help="Rebuild even if --out is a finished dataset.")
    parser.add_argument(
        "--export_csv",
        type=str | None,
        default=None,
        help="With --source synthetic: also (or only) write the ratings as an ML-25M style ratings.csv.",
    )
    parser.add_class_arguments(PrepareOptions, fail_untyped=True, sub_configs=False)
    return parser


def options_from(config: dict) -> PrepareOptions:
    return PrepareOptions(**{f.name: config[f.name] for f in fields(PrepareOptions)})


def main(argv: list[str] | None = None) -> int:
    """Run `prepare`; returns the process exit status (2 for bad input or options)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    config = parser.parse_args(argv).as_dict()
    options = options_from(config)
    try:
        if config["export_csv"] is None and config["out"] is None:
            raise DataError("say where to write: --out DIR (a dataset folder) and/or --export_csv FILE (synthetic)")
        if config["export_csv"] is not None:
            _export_csv(options, Path(config["export_csv"]))
        if config["out"] is not None:
            from lightning_mf.data.schema import DatasetMeta
            from lightning_mf.prepare.pipeline import describe, prepare_dataset

            out = prepare_dataset(options, config["out"], force=config["force"])
            print(f"dataset ready: {out}")
            print(describe(DatasetMeta.load(out)))
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _export_csv(options: PrepareOptions, path: Path) -> None:
    if options.source != "synthetic":
        raise DataError("--export_csv writes generated ratings: it needs --source synthetic")
    from lightning_mf.prepare.synthetic import export_movielens_csv
    from lightning_mf.prepare.synthetic_build import spec_from_options

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = export_movielens_csv(spec_from_options(options), path)
    print(f"wrote {rows:,} ratings to {path}")


if __name__ == "__main__":
    sys.exit(main())
