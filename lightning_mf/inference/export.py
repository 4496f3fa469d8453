"""`export`: a trained model as plain files (Parquet, plus `.npy` for the matrices) usable without this package.

The tables are `DenseTables`' (SVD++ term included in the user factors, rows without trained
factors zeroed), so the whole prediction is, for copies c = 1..C of width d (C = 1 unless the
model is an ensemble):

    prediction = clip(mean_c out(offset + user_bias[u, c] + item_bias[i, c] + P[u, c*d:(c+1)*d] . Q[i, c*d:(c+1)*d]))

with `out` the identity (`output = linear`) or `rating_min + (rating_max - rating_min) * sigmoid`.
`examples/score_export.py` does it with Polars and NumPy only; README.md has the schema. The
folder is written beside its target and renamed into place, so it is never seen half-written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import torch

from lightning_mf.errors import DataError
from lightning_mf.inference.id_maps import IdMap
from lightning_mf.inference.ridge import RidgePenalty
from lightning_mf.inference.state import ModelState
from lightning_mf.training.dense_tables import DenseTables

EXPORT_FORMAT = "lightning_mf-export"
EXPORT_VERSION = 1
MODEL_FILE = "model.parquet"
USERS_FILE, ITEMS_FILE = "users.parquet", "items.parquet"
USER_FACTORS, ITEM_FACTORS, IMPLICIT_FACTORS = "user_factors.npy", "item_factors.npy", "implicit_item_factors.npy"
TRAIN_PAIRS = "train_pairs.parquet"
# Hyperparameters copied into model.parquet for provenance (scalars only).
_PROVENANCE = ("embedding_dim", "ensemble_size", "l2_implicit", "loss_reduction", "implicit_feedback", "dropout")


def write_export(state: ModelState, train_user: np.ndarray, train_item: np.ndarray, out: str | Path) -> Path:
    """Write `state` and its training pairs (user, item indices) as an export folder `out`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not an empty folder; remove it or choose another --out")
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tables = state.tables.to("cpu")
    hparams = state.hyper_parameters
    model = {
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
        "num_users": tables.num_users, "num_items": tables.num_items,
        "copies": tables.copies, "dim": tables.dim,
        "offset": tables.offset, "global_mean": state.global_mean, "output": tables.output,
        "rating_min": tables.rating_min, "rating_max": tables.rating_max, "rating_step": state.rating_step,
        "l2": state.penalty.l2, "l2_bias": state.penalty.l2_bias, "l2_count_power": state.penalty.factor_power,
        "l2_bias_count_power": state.penalty.bias_power, "use_bias": state.penalty.use_bias,
        "fingerprint": state.fingerprint, "data_dir": str(state.data_dir or ""),
        "hyper_parameters": json.dumps({key: hparams[key] for key in _PROVENANCE if key in hparams}),
    }
    pl.DataFrame([model]).write_parquet(staging / MODEL_FILE)
    for side, id_map, name, matrix in (("user", state.users, USERS_FILE, USER_FACTORS),
                                       ("item", state.items, ITEMS_FILE, ITEM_FACTORS)):
        factors = getattr(tables, f"{side}_factors").reshape(len(id_map), -1).numpy()
        bias = getattr(tables, f"{side}_bias").numpy()
        np.save(staging / matrix, factors)
        pl.DataFrame({
            "index": np.arange(len(id_map), dtype=np.int32),
            "raw_id": id_map.raw_ids,
            "seen": getattr(tables, f"{side}_seen").numpy(),
            "bias": bias[:, 0] if tables.copies == 1 else bias,
            "factors": factors,
        }).write_parquet(staging / name)
    if state.implicit is not None:
        np.save(staging / IMPLICIT_FACTORS, state.implicit.cpu().reshape(tables.num_items, -1).numpy())
    order = np.argsort(train_user, kind="stable")
    pl.DataFrame({"user": train_user[order].astype(np.int32), "item": train_item[order].astype(np.int32)}).write_parquet(
        staging / TRAIN_PAIRS)
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return out


def is_export(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file()


def read_export(folder: str | Path, device: torch.device | str = "cpu") -> ModelState:
    """An export folder as a `ModelState` (for `lightning_mf.load`)."""
    folder = Path(folder)
    for name in (MODEL_FILE, USERS_FILE, ITEMS_FILE, USER_FACTORS, ITEM_FACTORS):
        if not (folder / name).is_file():
            raise DataError(f"{folder} is not a complete export folder: {name} is missing")
    model = pl.read_parquet(folder / MODEL_FILE).row(0, named=True)
    if model.get("format") != EXPORT_FORMAT or model.get("format_version") != EXPORT_VERSION:
        raise DataError(f"{folder / MODEL_FILE}: format {model.get('format')!r} version {model.get('format_version')!r}; "
                        f"this lightning_mf reads {EXPORT_FORMAT} version {EXPORT_VERSION}")
    copies, dim = int(model["copies"]), int(model["dim"])
    sides = {}
    for side, name, matrix, count in (("user", USERS_FILE, USER_FACTORS, model["num_users"]),
                                      ("item", ITEMS_FILE, ITEM_FACTORS, model["num_items"])):
        frame = pl.read_parquet(folder / name, columns=["raw_id", "seen", "bias"])
        factors = np.load(folder / matrix)
        if factors.shape != (count, copies * dim) or frame.height != count:
            raise DataError(f"{folder}: {name} has {frame.height} rows and {matrix} shape {factors.shape}; "
                            f"model.parquet says {count} x {copies * dim}")
        bias = np.asarray(frame["bias"].to_numpy(), dtype=np.float32).reshape(count, copies)
        sides[side] = (IdMap(frame["raw_id"]), torch.from_numpy(factors.reshape(count, copies, dim).copy()),
                       torch.from_numpy(bias.copy()), torch.from_numpy(frame["seen"].to_numpy().copy()))
    (users, user_factors, user_bias, user_seen), (items, item_factors, item_bias, item_seen) = sides["user"], sides["item"]
    tables = DenseTables(user_factors, item_factors, user_bias, item_bias, user_seen, item_seen, float(model["offset"]),
                         model["output"], float(model["rating_min"]), float(model["rating_max"])).to(device)
    implicit = None
    if (folder / IMPLICIT_FACTORS).is_file():
        implicit = torch.from_numpy(np.load(folder / IMPLICIT_FACTORS).reshape(-1, copies, dim).copy()).to(device)
    penalty = RidgePenalty(l2=float(model["l2"]), l2_bias=float(model["l2_bias"]),
                           factor_power=float(model["l2_count_power"]), bias_power=float(model["l2_bias_count_power"]),
                           use_bias=bool(model["use_bias"]))
    data_dir = Path(model["data_dir"]) if model.get("data_dir") else None
    return ModelState(tables=tables, users=users, items=items, penalty=penalty, implicit=implicit,
                      global_mean=float(model["global_mean"]), rating_step=model.get("rating_step"),
                      fingerprint=model.get("fingerprint") or "", data_dir=data_dir,
                      train_pairs_file=folder / TRAIN_PAIRS if (folder / TRAIN_PAIRS).is_file() else None,
                      source=folder, hyper_parameters=json.loads(model.get("hyper_parameters") or "{}"))
