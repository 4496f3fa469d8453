"""`predict`'s output: every batch's predictions appended to a Parquet file as they come, with raw ids.

Beside the split's contiguous indices each row carries the dataset's own ids (`user_raw_id`,
`item_raw_id`, from the folder's `users.parquet` / `items.parquet`) and which fallback served the
prediction, as `predict --pairs` reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_mf.data.batch import RatingBatch
from lightning_mf.data.schema import ITEMS_FILE, USERS_FILE
from lightning_mf.inference.id_maps import IdMap
from lightning_mf.inference.trained_model import FALLBACKS


class ParquetPredictionWriter(BasePredictionWriter):
    """Writes `predict` output batch by batch to Parquet: user, item (indices), rating (of the split),
    prediction, user_raw_id, item_raw_id (where the dataset folder has its id tables) and fallback.

    Args:
        path: Output file. Unset: `predictions.parquet` in the run's log folder. Under DDP each
            rank writes its own shard, `<name>.rank<r>.parquet`.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self._writer: pq.ParquetWriter | None = None
        self._target: Path | None = None
        self._ids: tuple[IdMap, IdMap] | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        target = Path(self.path) if self.path else folder / "predictions.parquet"
        if trainer.world_size > 1:
            target = target.with_name(f"{target.stem}.rank{trainer.global_rank}{target.suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        self._target = target
        folder = getattr(trainer.datamodule, "data_dir", None)
        if folder is not None and (Path(folder) / USERS_FILE).is_file() and (Path(folder) / ITEMS_FILE).is_file():
            self._ids = IdMap.read(Path(folder) / USERS_FILE), IdMap.read(Path(folder) / ITEMS_FILE)

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Tensor,
        batch_indices: Sequence[int] | None,
        batch: RatingBatch,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        user, item = batch.user.cpu().numpy(), batch.item.cpu().numpy()
        columns = {
            "user": user,
            "item": item,
            "rating": batch.rating.cpu().numpy(),
            "prediction": prediction.float().cpu().numpy(),
        }
        if self._ids is not None:
            columns["user_raw_id"] = self._ids[0].raw(user).to_arrow()
            columns["item_raw_id"] = self._ids[1].raw(item).to_arrow()
        model = getattr(pl_module, "model", None)
        if model is not None and hasattr(model, "user_seen"):
            user_ok = model.user_seen[batch.user].cpu().numpy()
            item_ok = model.item_seen[batch.item].cpu().numpy()
            code = np.select([user_ok & item_ok, item_ok, user_ok], [0, 1, 2], default=3)
            columns["fallback"] = np.asarray(FALLBACKS)[code]
        table = pa.table(columns)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._target, table.schema)  # type: ignore[arg-type]
        self._writer.write_table(table)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            rank_zero_info(f"predictions written to {self._target}")
