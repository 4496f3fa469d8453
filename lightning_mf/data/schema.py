"""The dataset contract shared by `prepare` (which writes it) and training (which reads it).

A prepared dataset is a folder:

    train.parquet  val.parquet  test.parquet   user:int32 item:int32 rating:float32 timestamp:int64?
    users.parquet  items.parquet               index:int32 raw_id:(int64|string) train_ratings:int64
    meta.json                                  sizes, rating statistics, provenance (see DatasetMeta)

Indices are contiguous from 0 over all three splits. Nothing downstream re-reads raw files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

USER = "user"
ITEM = "item"
RATING = "rating"
TIMESTAMP = "timestamp"

RATINGS_SCHEMA: dict[str, pl.DataType] = {
    USER: pl.Int32(),
    ITEM: pl.Int32(),
    RATING: pl.Float32(),
    TIMESTAMP: pl.Int64(),
}

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"
FORMAT_VERSION = 1


def split_file(split: str) -> str:
    """File name of one split inside a dataset folder."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return f"{split}.parquet"


@dataclass
class RatingScale:
    """The scale a dataset's ratings live on; predictions are clipped to it."""

    min: float
    max: float
    step: float | None = None

    @property
    def relevance_threshold(self) -> float:
        """Rating from which an item counts as relevant: 4 on a 5-point scale, scaled otherwise."""
        return 0.8 * self.max

    def explicit_only(self) -> RatingScale:
        """The scale once implicit zeros are dropped: it starts one step above 0."""
        if self.min != 0:
            return self
        return RatingScale(min=self.step or 1.0, max=self.max, step=self.step)


@dataclass
class DatasetMeta:
    """Everything `meta.json` records; training reads sizes and rating statistics from here.

    Attributes:
        num_users: Number of user indices (contiguous from 0).
        num_items: Number of item indices (contiguous from 0).
        splits: Per split `{"rows": N}`.
        rating: Train rating statistics `{"min", "max", "mean"}`.
        rating_scale: The dataset's scale (`min`, `max`, `step`), used to clip predictions.
        format: The detected or forced input format.
        sources: One entry per input file: `path`, `bytes`, `sha256`.
        split_spec: How the splits were made (kind, fractions or cut-offs, seed).
        filters: Each filter in the order applied: `name`, `removed_rows` and its settings.
        rejected_rows: Malformed input lines skipped under `on_bad_rows=skip`.
        unseen: Per eval split, rows whose user / item never occurs in train.
        options: The prepare options, for provenance and reuse checks.
        fingerprint: Hash of sources and options; equal fingerprints mean the folder can be reused.
    """

    num_users: int
    num_items: int
    splits: dict[str, dict[str, int]]
    rating: dict[str, float]
    rating_scale: RatingScale
    format: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    split_spec: dict[str, Any] = field(default_factory=dict)
    filters: list[dict[str, Any]] = field(default_factory=list)
    rejected_rows: int = 0
    unseen: dict[str, dict[str, int]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    format_version: int = FORMAT_VERSION

    def rows(self, split: str) -> int:
        return int(self.splits[split]["rows"])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    def save(self, folder: str | Path) -> None:
        Path(folder, META_FILE).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> DatasetMeta:
        """Read `meta.json`, explaining what to do when the folder is not a prepared dataset."""
        path = Path(folder, META_FILE)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: {folder} is not a prepared dataset folder. "
                "Create one with `python -m lightning_mf prepare --source ... --out DIR`."
            )
        raw = json.loads(path.read_text(encoding="utf-8"))
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format_version {version!r}, this lightning_mf reads {FORMAT_VERSION}; "
                "re-run `prepare` with --force."
            )
        missing = [k for k in ("num_users", "num_items", "splits", "rating", "rating_scale") if k not in raw]
        if missing:
            raise ValueError(f"{path} lacks required keys {missing}; re-run `prepare` with --force.")
        raw["rating_scale"] = RatingScale(**raw["rating_scale"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})
