"""DDP on CPU (2 processes, gloo): every training rating once per epoch, equal batch counts, no hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from helpers import make_dataset, read_split

REPO_ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2

# Run as its own script: Lightning's DDP launcher re-runs it for rank 1.
SCRIPT = """
import json, sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_mf.data.datamodule import RatingsDataModule
from lightning_mf.training.module import RatingPredictor


class Recorder(pl.Callback):
    def __init__(self, out):
        self.out, self.seen = Path(out), {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        rows = torch.stack([batch.user.double(), batch.item.double(), batch.rating.double()])
        self.seen.setdefault(trainer.current_epoch, []).append(rows.cpu())

    def on_train_end(self, trainer, pl_module):
        rank = trainer.global_rank
        for epoch, parts in self.seen.items():
            torch.save(torch.cat(parts, 1), self.out / f"rank{rank}-epoch{epoch}.pt")
        counts = {epoch: len(parts) for epoch, parts in self.seen.items()}
        summary = {"batches": counts, "num_training_batches": trainer.num_training_batches}
        (self.out / f"rank{rank}.json").write_text(json.dumps(summary))


data_dir, out, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
# batch_size is the global batch: 32 ratings per rank per step.
dm = RatingsDataModule(data_dir, batch_size=64, eval_batch_size=50, shuffle_window=100, seed=3)
model = RatingPredictor(dm.num_users, dm.num_items, dm.rating_min, dm.rating_max, dm.global_mean, embedding_dim=4)
trainer = pl.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_epochs=epochs, logger=False,
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    callbacks=[Recorder(out)],
)
trainer.fit(model, datamodule=dm)
"""


@pytest.mark.slow
def test_ddp_sees_every_rating_once_per_epoch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset(data, train_rows=1001, val_rows=300, test_rows=100, num_users=40, num_items=30, row_group_size=64)
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, str(script), str(data), str(out), str(EPOCHS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    table = read_split(data, "train")
    expected = Counter(zip(*(table.column(name).to_pylist() for name in ("user", "item", "rating"))))
    summaries = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
    # 1001 ratings over 2 ranks: 500 and 501, 32 per rank -> 16 batches each, the last of 20 or 21.
    assert [s["num_training_batches"] for s in summaries] == [16, 16]
    for epoch in range(EPOCHS):
        assert [s["batches"][str(epoch)] for s in summaries] == [16, 16]
        rows = torch.cat([torch.load(out / f"rank{rank}-epoch{epoch}.pt") for rank in range(2)], 1)
        seen = Counter(zip(rows[0].int().tolist(), rows[1].int().tolist(), rows[2].float().tolist()))
        assert seen == expected, f"epoch {epoch}: ratings missing or repeated across ranks"
    first = torch.load(out / "rank0-epoch0.pt")
    assert not torch.equal(first, torch.load(out / "rank0-epoch1.pt"))
