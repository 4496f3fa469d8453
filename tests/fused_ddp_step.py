"""Two gloo ranks take fused steps on their halves of batches; rank 0 then repeats them alone on the
union batches. Used by `test_fused_ddp.py`:

    python tests/fused_ddp_step.py OUT_DIR

For each (optimizer, exchange) it writes OUT_DIR/<optimizer>-<exchange>-rank<r>.pt (the weights after
the distributed steps) and OUT_DIR/<optimizer>-single.pt (rank 0's single-process steps).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_mf.data.batch import RatingBatch
from lightning_mf.training.fused import FusedRowAdagrad, FusedSGD
from lightning_mf.training.module import RatingPredictor

NUM_USERS, NUM_ITEMS, STEPS = 30, 20, 3
# Unequal halves (an epoch's last batches differ by a rating): the exchange pads.
SPLITS = (33, 31)
OPTIMIZERS = {"adagrad": (FusedRowAdagrad, dict(lr=0.1, initial_accumulator_value=0.01, weight_decay=0.01)),
              "sgd": (FusedSGD, dict(lr=0.02))}


def batches() -> list[RatingBatch]:
    generator = torch.Generator().manual_seed(5)
    out = []
    for _ in range(STEPS):
        size = sum(SPLITS)
        user = torch.randint(0, NUM_USERS, (size,), generator=generator, dtype=torch.int32)
        item = torch.randint(0, NUM_ITEMS, (size,), generator=generator, dtype=torch.int32)
        out.append(RatingBatch(user, item, torch.randint(1, 11, (size,), generator=generator).float() / 2))
    return out


def model() -> RatingPredictor:
    torch.manual_seed(0)
    module = RatingPredictor(NUM_USERS, NUM_ITEMS, 0.5, 5.0, 3.0, embedding_dim=8, init_std=0.3, sparse=True, l2=0.05,
                             l2_bias=0.2, l2_implicit=0.05, l2_count_power=0.75, l2_bias_count_power=0.5,
                             implicit_feedback=True, loss_reduction="mean")
    history = batches()[0]
    module.model.set_implicit_feedback(history.user, history.item)
    module.set_train_counts(torch.arange(NUM_USERS) % 7 + 1, torch.arange(NUM_ITEMS) % 5 + 1)
    with torch.no_grad():
        module.model.implicit_factors.weight.normal_(0.0, 0.2)
    return module


def train(rank: int | None, name: str, exchange: str) -> RatingPredictor:
    """STEPS steps (a refresh of the SVD++ term after the second); `rank` None: the whole batches."""
    module = model()
    cls, options = OPTIMIZERS[name]
    optimizer = cls(module.parameters(), distributed_update=exchange, **options)
    for step, batch in enumerate(batches()):
        part = slice(0, sum(SPLITS)) if rank is None else slice(sum(SPLITS[:rank]), sum(SPLITS[: rank + 1]))
        optimizer.update(module.model, *(column[part] for column in batch), l2=module.l2, l2_bias=module.l2_bias,
                         l2_implicit=module.l2_implicit, row_weights=module.penalty_weights, reduction="mean")
        if rank is not None:
            assert optimizer.last_exchange == exchange, (optimizer.last_exchange, exchange)
        if step == 1:
            optimizer.refresh_implicit(module.model)
    return module


def weights(module: RatingPredictor) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.model.state_dict().items()}


def worker(rank: int, out: str, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    for name in OPTIMIZERS:
        for exchange in ("ratings", "dense"):
            torch.save(weights(train(rank, name, exchange)), Path(out) / f"{name}-{exchange}-rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        torch.save(weights(model()), Path(out) / "untrained.pt")
        for name in OPTIMIZERS:
            torch.save(weights(train(None, name, "auto")), Path(out) / f"{name}-single.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    init = out_dir / "init"
    init.unlink(missing_ok=True)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(worker, args=(str(out_dir), str(init)), nprocs=2, join=True)
