"""What a trained model is once loaded, whatever it was loaded from (a checkpoint or an export)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from lightning_mf.inference.id_maps import IdMap
from lightning_mf.inference.ridge import RidgePenalty
from lightning_mf.training.dense_tables import DenseTables


@dataclass(frozen=True)
class ModelState:
    """A trained model's tables, id maps and what fold-in needs.

    Attributes:
        tables: Scoring tables (`DenseTables`), on the device the model runs on.
        users: Raw user ids by index.
        items: Raw item ids by index.
        penalty: The penalty the model was trained with.
        implicit: SVD++ item factors y_j `(num_items, copies, dim)` (rows of items unseen in
            training zeroed), for folding in users of an SVD++ model; None without SVD++.
        global_mean: The mean training rating.
        rating_step: Step of the rating scale, if it has one.
        fingerprint: The fingerprint of the dataset folder it was trained on.
        data_dir: That folder, where known and present (for training pairs and splits).
        train_pairs_file: A Parquet file of the training (user, item) indices, in an export.
        source: The checkpoint or export folder it was loaded from.
        hyper_parameters: The checkpoint's hyperparameters (provenance for an export).
    """

    tables: DenseTables
    users: IdMap
    items: IdMap
    penalty: RidgePenalty
    implicit: Tensor | None
    global_mean: float
    rating_step: float | None = None
    fingerprint: str = ""
    data_dir: Path | None = None
    train_pairs_file: Path | None = None
    source: Path | None = None
    hyper_parameters: dict = field(default_factory=dict)
