"""A checkpoint written by `fit` -> a `ModelState`, with its dataset folder checked, without Lightning.

The checkpoint is read with `torch.load(weights_only=True)` (no code runs from it), the model is
rebuilt from its saved hyperparameters (those `MatrixFactorization` takes) and state dict, and its
dataset folder supplies the id maps: `checkpoint["RatingsDataModule"]["data_dir"]` (or the
DataModule's saved `data_dir`), or `data_dir` given here, which must hold the very dataset it was
trained on (same `meta.json` fingerprint). Lightning is never imported, so `recommend`, `export`
and the server's workers start in the time it takes to import torch.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from lightning_mf.data.schema import ITEMS_FILE, META_FILE, USERS_FILE, DatasetMeta
from lightning_mf.errors import DataError
from lightning_mf.inference.id_maps import IdMap
from lightning_mf.inference.ridge import RidgePenalty
from lightning_mf.inference.state import ModelState
from lightning_mf.training.dense_tables import DenseTables
from lightning_mf.training.model import MatrixFactorization

_PREFIX = "model."


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's dictionary, or a DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint file (give --ckpt_path a .ckpt written by `fit`, or an export folder)")
    try:
        # Memory-mapped: the weights are copied into the model once, never held twice.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise DataError(f"{path}: not a readable checkpoint ({_brief(error)})") from None
        checkpoint = _load_unmapped(path)  # a checkpoint of torch's legacy format
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged or foreign file
        raise DataError(f"{path}: not a readable checkpoint ({_brief(error)})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise DataError(f"{path}: not a lightning_mf checkpoint (it lacks state_dict or hyper_parameters)")
    return checkpoint


def _brief(error: Exception) -> str:
    """The first line of torch's (long) message."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:200]}"


def _load_unmapped(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise DataError(f"{path}: not a readable checkpoint ({_brief(error)})") from None


def dataset_folder(checkpoint: dict[str, Any], path: Path, data_dir: str | Path | None) -> tuple[Path, DatasetMeta]:
    """The checkpoint's dataset folder (or `data_dir`), checked to be the one it was trained on."""
    record = checkpoint.get("RatingsDataModule") or {}
    saved_dir = record.get("data_dir") or (checkpoint.get("datamodule_hyper_parameters") or {}).get("data_dir")
    folder = Path(data_dir) if data_dir is not None else (Path(saved_dir) if saved_dir else None)
    if folder is None:
        raise DataError(f"{path} does not say which dataset folder it was trained on; give it with --data_dir")
    if not (folder / META_FILE).is_file():
        given = "--data_dir" if data_dir is not None else f"the checkpoint's dataset folder (trained on {saved_dir})"
        raise DataError(f"{folder / META_FILE} not found: {given} is not a prepared dataset folder here. "
                        "Give the folder the model was trained on with --data_dir.")
    try:
        meta = DatasetMeta.load(folder)
    except (FileNotFoundError, ValueError) as error:
        raise DataError(str(error)) from error
    saved = record.get("fingerprint")
    if saved is not None and saved != meta.fingerprint:
        raise DataError(
            f"{path} was trained on the dataset {saved_dir} (fingerprint {saved[:12]}), but {folder} has fingerprint "
            f"{meta.fingerprint[:12]}: its user and item indices would name other users and items. Give the folder "
            "it was trained on with --data_dir."
        )
    return folder, meta


def rebuild_model(checkpoint: dict[str, Any], path: Path) -> MatrixFactorization:
    """The checkpoint's `MatrixFactorization`, in eval mode, with its trained weights."""
    hparams = checkpoint["hyper_parameters"]
    accepted = inspect.signature(MatrixFactorization).parameters
    arguments = {name: hparams[name] for name in accepted if name in hparams}
    missing = [name for name, p in accepted.items() if p.default is inspect.Parameter.empty and name not in arguments]
    if missing:
        raise DataError(f"{path}: hyper_parameters lack {missing}; is it a lightning_mf checkpoint?")
    model = MatrixFactorization(**arguments)
    weights = {key[len(_PREFIX):]: value for key, value in checkpoint["state_dict"].items() if key.startswith(_PREFIX)}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise DataError(f"{path}: its weights do not fit the model its hyperparameters describe: {error}") from None
    return model.eval()


def penalty_of(hparams: dict[str, Any]) -> RidgePenalty:
    """The per-rating penalty a RatingPredictor was trained with (l2_bias unset means l2)."""
    l2 = float(hparams.get("l2", 0.0))
    l2_bias = hparams.get("l2_bias")
    return RidgePenalty(l2=l2, l2_bias=l2 if l2_bias is None else float(l2_bias),
                        factor_power=float(hparams.get("l2_count_power", 1.0)),
                        bias_power=float(hparams.get("l2_bias_count_power", 1.0)),
                        use_bias=bool(hparams.get("use_bias", True)))


def state_from_model(model: MatrixFactorization, hparams: dict[str, Any], folder: Path, meta: DatasetMeta,
                     device: torch.device | str = "cpu", source: Path | None = None) -> ModelState:
    """A `ModelState` of a model trained on the dataset folder `folder`."""
    users, items = IdMap.read(folder / USERS_FILE), IdMap.read(folder / ITEMS_FILE)
    if (len(users), len(items)) != (model.num_users, model.num_items):
        raise DataError(f"{folder}: {len(users)} users and {len(items)} items, but the model has {model.num_users} "
                        f"and {model.num_items}; give the folder it was trained on with --data_dir")
    model = model.to(device)
    tables = DenseTables.from_model(model)
    implicit = None
    if model.implicit_factors is not None:
        shape = (-1, model.ensemble_size, model.embedding_dim)
        implicit = model.implicit_factors.weight.detach().float().clone().view(shape)
        implicit[~model.item_seen] = 0.0
    return ModelState(tables=tables, users=users, items=items, penalty=penalty_of(hparams), implicit=implicit,
                      global_mean=float(hparams.get("global_mean", meta.rating["mean"])),
                      rating_step=meta.rating_scale.step, fingerprint=meta.fingerprint, data_dir=folder,
                      source=source, hyper_parameters=dict(hparams))


def load_checkpoint(path: str | Path, data_dir: str | Path | None = None,
                    device: torch.device | str = "cpu") -> ModelState:
    """Load a `fit` checkpoint and its dataset's id maps.

    Args:
        path: The `.ckpt` file.
        data_dir: The dataset folder it was trained on; unset: the folder the checkpoint names.
        device: Where the tables live (`cpu`, `cuda`, ...).
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    folder, meta = dataset_folder(checkpoint, path, data_dir)
    model = rebuild_model(checkpoint, path)
    hparams = {key: value for key, value in checkpoint["hyper_parameters"].items() if not key.startswith("_")}
    return state_from_model(model, hparams, folder, meta, device, source=path)
