"""`predict`'s output: every batch's predictions appended to a Parquet file as they come."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import pyarrow as pa
import pyarrow.parquet as pq
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_mf.data.batch import RatingBatch


class ParquetPredictionWriter(BasePredictionWriter):
    """Writes `predict` output batch by batch to Parquet: user, item, rating (of the split), prediction.

    Args:
        path: Output file. Unset: `predictions.parquet` in the run's log folder. Under DDP each
            rank writes its own shard, `<name>.rank<r>.parquet`.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self._writer: pq.ParquetWriter | None = None
        self._target: Path | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        target = Path(self.path) if self.path else folder / "predictions.parquet"
        if trainer.world_size > 1:
            target = target.with_name(f"{target.stem}.rank{trainer.global_rank}{target.suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        self._target = target

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
        table = pa.table(
            {
                "user": batch.user.cpu().numpy(),
                "item": batch.item.cpu().numpy(),
                "rating": batch.rating.cpu().numpy(),
                "prediction": prediction.float().cpu().numpy(),
            }
        )
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._target, table.schema)  # type: ignore[arg-type]
        self._writer.write_table(table)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            rank_zero_info(f"predictions written to {self._target}")
