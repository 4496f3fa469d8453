"""Score (user, item) pairs and recommend with a `python -m lightning_mf export` folder: Polars and NumPy only.

    python examples/score_export.py EXPORT_DIR pairs.csv predictions.csv     # pairs.csv: user,item
    python examples/score_export.py EXPORT_DIR --recommend USER_ID --k 10

Needs neither torch nor lightning_mf: the export holds the whole model (README.md, "Using a
trained model", has the schema). Ids are matched by value in the export's id type; an unknown id
gets zero factors and bias, the model's own fallback.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl


class Export:
    """The tables of an export folder, with a zero row appended on each side for unknown ids."""

    def __init__(self, folder: Path) -> None:
        self.meta = pl.read_parquet(folder / "model.parquet").row(0, named=True)
        copies, dim = self.meta["copies"], self.meta["dim"]
        self.ids, self.factors, self.bias, self.seen = {}, {}, {}, {}
        for side in ("user", "item"):
            table = pl.read_parquet(folder / f"{side}s.parquet", columns=["raw_id", "seen", "bias"])
            factors = np.load(folder / f"{side}_factors.npy").reshape(-1, copies, dim)
            bias = np.asarray(table["bias"].to_list(), dtype=np.float32).reshape(-1, copies)
            self.ids[side], self.seen[side] = table["raw_id"], table["seen"].to_numpy()
            self.factors[side] = np.concatenate([factors, np.zeros((1, copies, dim), np.float32)])
            self.bias[side] = np.concatenate([bias, np.zeros((1, copies), np.float32)])
        self.train = pl.read_parquet(folder / "train_pairs.parquet")

    def index(self, side: str, ids: pl.Series) -> np.ndarray:
        known = self.ids[side]
        keys = ids.cast(pl.String).str.strip_chars().cast(known.dtype, strict=False) if known.dtype != pl.String \
            else ids.cast(pl.String)
        lookup = pl.DataFrame({"key": known, "index": np.arange(len(known))})
        found = pl.DataFrame({"key": keys}).join(lookup, on="key", how="left", maintain_order="left")["index"]
        return found.fill_null(len(known)).to_numpy()  # unknown: the appended zero row

    def _out(self, raw: np.ndarray) -> np.ndarray:
        low, high = self.meta["rating_min"], self.meta["rating_max"]
        if self.meta["output"] == "sigmoid":
            raw = low + (high - low) / (1.0 + np.exp(-raw))
        return raw

    def predict(self, users: pl.Series, items: pl.Series) -> np.ndarray:
        u, i = self.index("user", users), self.index("item", items)
        raw = (self.meta["offset"] + self.bias["user"][u] + self.bias["item"][i]
               + np.einsum("ncd,ncd->nc", self.factors["user"][u], self.factors["item"][i]))
        return np.clip(self._out(raw).mean(1), self.meta["rating_min"], self.meta["rating_max"])

    def recommend(self, user: str, k: int) -> pl.DataFrame:
        u = int(self.index("user", pl.Series([user]))[0])
        raw = self.meta["offset"] + self.bias["user"][u] + self.bias["item"][:-1] + np.einsum(
            "cd,icd->ic", self.factors["user"][u], self.factors["item"][:-1])
        scores = self._out(raw).mean(1)
        scores[~self.seen["item"]] = -np.inf  # items without trained factors are not recommended
        scores[self.train.filter(pl.col("user") == u)["item"].to_numpy()] = -np.inf  # nor rated ones
        top = np.argsort(-scores, kind="stable")[:k]
        return pl.DataFrame({"item": self.ids["item"].gather(top), "score": np.clip(
            scores[top], self.meta["rating_min"], self.meta["rating_max"])})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", type=Path)
    parser.add_argument("pairs", type=Path, nargs="?")
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--recommend", default=None, help="A user id to recommend for.")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    export = Export(args.export)
    if args.recommend is not None:
        print(export.recommend(args.recommend, args.k))
        return
    pairs = pl.read_csv(args.pairs, schema_overrides={"user": pl.String, "item": pl.String})
    pairs.with_columns(prediction=export.predict(pairs["user"], pairs["item"])).write_csv(args.out)


if __name__ == "__main__":
    main()
