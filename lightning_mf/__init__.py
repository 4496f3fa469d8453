"""lightning_mf: matrix-factorization rating prediction on PyTorch Lightning.

The package follows the data: `prepare/` turns raw ratings into a dataset folder, `data/` is
that folder's contract and the DataModule that streams it, `training/` holds the model, the
LightningModule and its optimizers, `cli` drives them, `inference/` uses a trained model
(`lightning_mf.load`), and `experiments/` runs series of fits and reports on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lightning_mf import _aliases

if TYPE_CHECKING:
    from lightning_mf.inference.trained_model import TrainedModel

__version__ = "0.1.0"

_aliases.install()


def load(path: str | Path, data_dir: str | Path | None = None, device: str = "auto") -> TrainedModel:
    """A trained model from a `fit` checkpoint or an `export` folder: `predict(users, items)`,
    `recommend(users, k, exclude_seen=True)` and `fold_in(ratings)`, raw ids in and out.

    Imported on first call, so `import lightning_mf` stays cheap.

    Args:
        path: A `.ckpt` written by `fit`, or a folder written by `python -m lightning_mf export`.
        data_dir: The dataset folder it was trained on; unset: the one it names.
        device: `auto` (CUDA when available), `cpu` or `cuda`.
    """
    from lightning_mf.inference.loading import load as load_model

    return load_model(path, data_dir=data_dir, device=device)
