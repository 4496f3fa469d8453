"""Tiny trained-looking models for the inference tests: checkpoints in `fit`'s format, built without Lightning.

`make_model_checkpoint` draws a `MatrixFactorization` with clearly varied weights, marks the rows
the dataset's training split uses as seen (two of each left unseen, as users and items that only
occur in val/test would be), and saves it with the keys a `fit` checkpoint has
(`hyper_parameters`, `state_dict` under `model.`, the `RatingsDataModule` record).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from helpers import make_dataset
from lightning_mf.data.schema import DatasetMeta
from lightning_mf.training.model import MatrixFactorization

UNSEEN_USER, UNSEEN_ITEM = 0, 0  # indices left unseen by `make_model_checkpoint`


def make_string_id_dataset(folder: Path, **kwargs: Any) -> DatasetMeta:
    """`helpers.make_dataset` with string raw ids: users `u000`.., items ISBN-like `000000001X`.."""
    meta = make_dataset(folder, **kwargs)
    for name, ids in (("users.parquet", [f"u{i:03d}" for i in range(meta.num_users)]),
                      ("items.parquet", [f"{i:09d}X" for i in range(meta.num_items)])):
        table = pq.read_table(folder / name)
        table = table.set_column(table.column_names.index("raw_id"), "raw_id", pa.array(ids, pa.string()))
        pq.write_table(table, folder / name)
    return meta


def make_model_checkpoint(folder: Path, path: Path, *, embedding_dim: int = 4, implicit_feedback: bool = False,
                          ensemble_size: int = 1, output: str = "linear", seed: int = 0,
                          unseen: bool = True, **hparams: Any) -> MatrixFactorization:
    """Save a checkpoint of a random model over the dataset folder `folder`; returns the model (eval mode)."""
    meta = DatasetMeta.load(folder)
    torch.manual_seed(seed)
    model = MatrixFactorization(meta.num_users, meta.num_items, meta.rating_scale.min, meta.rating_scale.max,
                                meta.rating["mean"], embedding_dim=embedding_dim, init_std=0.6, output=output,
                                implicit_feedback=implicit_feedback, ensemble_size=ensemble_size)
    with torch.no_grad():
        model.user_bias.weight.normal_(0.0, 0.3)
        model.item_bias.weight.normal_(0.0, 0.3)
    train = pl.read_parquet(folder / "train.parquet")
    user, item = (torch.from_numpy(train[name].to_numpy().astype(np.int64)) for name in ("user", "item"))
    model.mark_seen(user, item)
    if unseen:
        model.user_seen[UNSEEN_USER] = False
        model.item_seen[UNSEEN_ITEM] = False
    if implicit_feedback:
        model.set_implicit_feedback(user, item)
    defaults = {"l2": 0.05, "l2_bias": None, "l2_count_power": 1.0, "l2_bias_count_power": 1.0,
                "loss_reduction": "mean", "use_bias": True, "dropout": 0.0, "init": "normal", "init_std": 0.6}
    saved = {**defaults, **hparams, "embedding_dim": embedding_dim, "implicit_feedback": implicit_feedback,
             "ensemble_size": ensemble_size, "output": output, "num_users": meta.num_users,
             "num_items": meta.num_items, "rating_min": meta.rating_scale.min, "rating_max": meta.rating_scale.max,
             "global_mean": meta.rating["mean"], "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    checkpoint = {
        "hyper_parameters": saved,
        "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
        "datamodule_hyper_parameters": {"data_dir": str(folder)},
        "RatingsDataModule": {"data_dir": str(folder), "fingerprint": meta.fingerprint},
    }
    torch.save(checkpoint, path)
    return model.eval()


def model_scores(model: MatrixFactorization, num_users: int, num_items: int) -> np.ndarray:
    """Every user's unclipped score of every item, pair by pair through the model's own forward."""
    users = torch.arange(num_users).repeat_interleave(num_items)
    items = torch.arange(num_items).repeat(num_users)
    with torch.no_grad():
        return model(users, items, clip=False).view(num_users, num_items).numpy()
