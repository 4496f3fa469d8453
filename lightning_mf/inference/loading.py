"""`lightning_mf.load`: a checkpoint or an export folder -> `TrainedModel`, on the GPU when there is one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from lightning_mf.data.schema import META_FILE, DatasetMeta
from lightning_mf.errors import DataError
from lightning_mf.inference.checkpoint_loading import load_checkpoint
from lightning_mf.inference.export import is_export, read_export
from lightning_mf.inference.state import ModelState
from lightning_mf.inference.trained_model import TrainedModel


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None): CUDA when available, else the CPU; anything else as torch reads it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise DataError(f"device {device!r} is not a torch device ({error}); use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {device!r}: CUDA is not available on this machine; use auto or cpu")
    return resolved


def load_state(path: str | Path, data_dir: str | Path | None = None,
               device: str | torch.device | None = "auto") -> ModelState:
    """The `ModelState` of a `fit` checkpoint or an `export` folder (see `load`)."""
    path, target = Path(path), resolve_device(device)
    if path.is_dir():
        if not is_export(path):
            raise DataError(f"{path} is a folder but not an export folder (no model.parquet); give a .ckpt file "
                            "written by `fit`, or a folder written by `python -m lightning_mf export`")
        state = read_export(path, target)
        return _with_data_dir(state, Path(data_dir) if data_dir is not None else None)
    return load_checkpoint(path, data_dir, target)


def _with_data_dir(state: ModelState, given: Path | None) -> ModelState:
    """An export's dataset folder: the given one (checked) or the recorded one where it still matches."""
    folder = given if given is not None else state.data_dir
    if folder is None or not (folder / META_FILE).is_file():
        if given is not None:
            raise DataError(f"{given / META_FILE} not found: --data_dir is not a prepared dataset folder")
        return replace(state, data_dir=None)
    try:
        fingerprint = DatasetMeta.load(folder).fingerprint
    except (FileNotFoundError, ValueError) as error:
        raise DataError(str(error)) from error
    if fingerprint != state.fingerprint:
        if given is None:
            return replace(state, data_dir=None)
        raise DataError(f"{state.source} was exported from a model trained on a dataset with fingerprint "
                        f"{state.fingerprint[:12]}, but {given} has fingerprint {fingerprint[:12]}")
    return replace(state, data_dir=folder)


def load(path: str | Path, data_dir: str | Path | None = None, device: str | torch.device | None = "auto") -> TrainedModel:
    """A trained model, ready to predict, recommend and fold in by raw id.

    Args:
        path: A checkpoint written by `fit` (`.ckpt`), or a folder written by `export`.
        data_dir: The dataset folder the model was trained on; unset: the one the checkpoint (or
            export) names. Needed for the id maps of a checkpoint and to exclude val/test items.
        device: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`, ...
    """
    return TrainedModel(load_state(path, data_dir, device))
