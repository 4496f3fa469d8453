"""Checkpoint files that are whole or absent, and an error that names a damaged one.

Lightning's own save writes to a temporary file in the system's temp folder and moves it into
place; where that folder is on another file system than the checkpoints (a node's local /tmp, a
shared run folder), the move is a copy, and a job killed during it leaves a truncated `last.ckpt`.
Here the file is written next to its target, flushed to disk and renamed over it in one step, so a
kill at any moment leaves the previous checkpoint or the new one, never a part.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_mf.errors import DataError

PARTIAL_SUFFIX = ".partial"


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with same-folder atomic writes on local file systems (others: Lightning's)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
        with open(partial, "wb") as out:
            torch.save(checkpoint, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
        _sync_folder(target.parent)

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
            if isinstance(error, RuntimeError) and not _is_damage(error):
                raise
            raise DataError(
                f"{path}: not a readable checkpoint ({type(error).__name__}: {str(error)[:200]}); the file is "
                "damaged or was cut off while being written. Resume from another checkpoint of the run "
                "(its folder keeps the best and the last), or train afresh without --ckpt_path."
            ) from error


def _is_damage(error: RuntimeError) -> bool:
    """Whether torch.load failed on the file's bytes (not on, say, a device that is missing)."""
    text = str(error)
    return any(clue in text for clue in ("PytorchStreamReader", "zip archive", "central directory", "invalid header"))


def _sync_folder(folder: Path) -> None:
    """Makes the rename itself durable (a crash after it keeps the new name)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
