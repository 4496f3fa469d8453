"""`python -m lightning_mf recommend | predict --pairs | export`: command lines over `TrainedModel`.

`predict` without `--pairs` is the LightningCLI subcommand (`lightning_mf.cli:predict`), which
streams a split of the dataset folder; with `--pairs FILE` it is this module's, which scores any
pairs by raw id. None of these import Lightning.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import polars as pl
from jsonargparse import ArgumentParser

from lightning_mf.errors import DataError

_COMMON = "  --ckpt_path takes a checkpoint written by `fit` or a folder written by `export`."


def _parser(name: str, description: str) -> ArgumentParser:
    parser = ArgumentParser(prog=f"python -m lightning_mf {name}", description=description + "\n" + _COMMON)
    parser.add_argument("--ckpt_path", type=str, required=True, help="Checkpoint (.ckpt) or export folder.")
    parser.add_argument("--data_dir", type=str | None, default=None,
                        help="The dataset folder the model was trained on; unset: the one the checkpoint names. "
                             "Its meta.json fingerprint must be the checkpoint's.")
    parser.add_argument("--device", type=str, default="auto", help="auto (CUDA when available), cpu or cuda.")
    return parser


def _with_ratings(parser: ArgumentParser) -> None:
    parser.add_argument("--ratings", type=str | None, default=None,
                        help="Ratings (CSV with user,item,rating columns, a MovieLens ratings.csv, or Parquet) of users "
                             "and items the model has not trained: they are folded in (closed-form ridge solve with "
                             "the model's penalty) before scoring.")


def _load(config: dict):
    from lightning_mf.inference.loading import load

    model = load(config["ckpt_path"], data_dir=config["data_dir"], device=config["device"])
    if config.get("ratings"):
        report = model.fold_in(config["ratings"])
        print(f"{config['ratings']}: {report.describe()}", file=sys.stderr)
    return model


def _write(frame: pl.DataFrame, out: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    print(f"wrote {frame.height:,} rows to {path}", file=sys.stderr)


def _csv_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def recommend(argv: list[str] | None = None) -> int:
    """`python -m lightning_mf recommend --ckpt_path CKPT --k 10 --out recs.parquet [--users 1,2,3 | --users_file F]`."""
    parser = _parser("recommend", "Top-K recommendations per user, by raw id: columns user, item, rank, score "
                                  "(the predicted rating). Items the user rated in training are left out.")
    parser.add_argument("--out", type=str, required=True, help="Output file: Parquet, or CSV if it ends in .csv.")
    parser.add_argument("--k", type=int, default=10, help="Items per user.")
    parser.add_argument("--users", type=str | None, default=None, help="Comma-separated raw user ids; unset: all users.")
    parser.add_argument("--users_file", type=str | None, default=None,
                        help="CSV or Parquet file with a `user` column of raw ids (instead of --users).")
    parser.add_argument("--exclude", type=str, default="", help="Also leave out the user's items of these splits: val,test.")
    parser.add_argument("--include_seen", type=bool, default=False, help="Do not leave out the items rated in training.")
    parser.add_argument("--block_mb", type=int, default=256, help="Memory of one block of scores (users x items), MB.")
    _with_ratings(parser)
    config = parser.parse_args(argv).as_dict()
    if config["users"] and config["users_file"]:
        raise DataError("give --users or --users_file, not both")
    if config["k"] < 1 or config["block_mb"] < 1:
        raise DataError(f"--k and --block_mb must be >= 1, got {config['k']} and {config['block_mb']}")
    users = None
    if config["users"]:
        users = pl.Series("user", _csv_list(config["users"]))
    elif config["users_file"]:
        from lightning_mf.inference.id_files import read_id_columns

        users = read_id_columns(config["users_file"], ["user"])["user"]
    model = _load(config)
    start = time.perf_counter()
    frame = model.recommend(users, k=config["k"], exclude_seen=not config["include_seen"],
                            exclude=_csv_list(config["exclude"]), block_bytes=config["block_mb"] << 20)
    seconds = time.perf_counter() - start
    count = len(model.users) if users is None else len(users)
    print(f"recommended {config['k']} items for {count:,} users in {seconds:.2f} s "
          f"({count / max(seconds, 1e-9):,.0f} users/s on {model.device})", file=sys.stderr)
    _write(frame, config["out"])
    return 0


def predict(argv: list[str] | None = None) -> int:
    """`predict --pairs FILE ...` scores pairs by raw id; any other `predict` is the LightningCLI's."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(arg == "--pairs" or arg.startswith("--pairs=") for arg in args):
        from lightning_mf.cli import predict as predict_split

        return predict_split(argv)
    parser = _parser("predict", "Predict the ratings of (user, item) pairs given by raw id: columns user, item, "
                                "prediction, fallback (model, user unseen, item unseen or global mean). "
                                "Without --pairs, `predict --config ... --ckpt_path ...` predicts a split.")
    parser.add_argument("--pairs", type=str, required=True, help="CSV or Parquet with user and item columns (raw ids).")
    parser.add_argument("--out", type=str, required=True, help="Output file: Parquet, or CSV if it ends in .csv.")
    _with_ratings(parser)
    config = parser.parse_args(args).as_dict()
    from lightning_mf.inference.id_files import read_id_columns

    pairs = read_id_columns(config["pairs"], ["user", "item"])
    model = _load(config)
    frame = model.predict(pairs["user"], pairs["item"])
    counts = frame["fallback"].value_counts(sort=True)
    summary = ", ".join(f"{row['fallback']}: {row['count']:,}" for row in counts.iter_rows(named=True))
    print(f"predicted {frame.height:,} pairs ({summary})", file=sys.stderr)
    _write(frame, config["out"])
    return 0


def export(argv: list[str] | None = None) -> int:
    """`python -m lightning_mf export --ckpt_path CKPT --out DIR`."""
    parser = _parser("export", "Write a trained model as Parquet and .npy files usable without lightning_mf "
                               "(schema in README.md, example in examples/score_export.py).")
    parser.add_argument("--out", type=str, required=True, help="The export folder to create (must not exist, or be empty).")
    _with_ratings(parser)
    config = parser.parse_args(argv).as_dict()
    from lightning_mf.inference.export import write_export

    model = _load({**config, "device": "cpu" if config["device"] == "auto" else config["device"]})
    out = write_export(model.state, *model.rated_pairs(), config["out"])
    print(f"exported {len(model.users):,} users and {len(model.items):,} items to {out}", file=sys.stderr)
    return 0
