"""How DDP ranks combine a fused step, so that it equals one process's step on the global batch.

The tables are replicated and every rank must apply the same update: that of the whole global
batch (the concatenation of the ranks' batches, rank order), with the loss weight of its size.
The update is per rating occurrence (row-wise Adagrad grows a row's accumulator by each
occurrence's mean square), so summing the ranks' dense gradients is not enough. Two exchanges do
it exactly:

- `ratings`: each rank sends, per rating of its batch, (user, item, g), g the derivative by the raw
  score (12 bytes); every rank then looks the global batch's rows up itself and applies all of its
  update. It moves `12 * B` bytes a step (B the global batch) and repeats the update's work on
  every rank; only the forward is split.
- `dense`: each rank scatters its ratings' gradients and mean squares into dense tables of the
  whole model, the ranks all-reduce them (one buffer), and every rank applies the summed tables
  to every row. It moves about `2 * 4 * (U + I) * (D + 1)` bytes a step (ring all-reduce; plus
  `U * D` for the SVD++ term) and touches every row of every table every step.

`choose` picks the one that moves fewer bytes. At ML-25M shapes (162,541 users, 59,047 items,
dim 128) the dense exchange moves 228 MB a step, the ratings exchange 3.1 MB at B = 262,144:
the crossover is at B of about 19 million ratings a step, so `ratings` wins at any batch that
fits a GPU; `dense` wins for small tables and huge batches. Both work on gloo and NCCL (dense
tensors only: NCCL cannot all-reduce sparse ones, which is why the autograd sparse path cannot
run on NCCL).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

Exchange = Literal["auto", "ratings", "dense"]
RATING_BYTES = 12  # int32 user, int32 item, float32 g


def world_size() -> int:
    """The number of processes a fused step is shared by (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def exchange_bytes(mode: str, global_batch: int, num_users: int, num_items: int, width: int,
                   implicit: bool = False) -> int:
    """Bytes a rank sends (about as many as it receives) per step under one exchange."""
    if mode == "ratings":
        return RATING_BYTES * global_batch
    elements = (num_users + num_items) * (width + 1) + (num_users * width if implicit else 0)
    return 2 * 4 * elements


def choose(mode: Exchange, global_batch: int, num_users: int, num_items: int, width: int,
           implicit: bool = False) -> str:
    """`mode` itself, or for `auto` the exchange that moves fewer bytes."""
    if mode != "auto":
        return mode
    sizes = {name: exchange_bytes(name, global_batch, num_users, num_items, width, implicit)
             for name in ("ratings", "dense")}
    return min(sizes, key=sizes.__getitem__)


def all_sizes(size: int, device: torch.device) -> list[int]:
    """Every rank's batch size, rank order (ranks' batches differ by at most one rating)."""
    local = torch.tensor([size], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [int(part) for part in torch.cat(gathered).tolist()]


def gather_ratings(user: Tensor, item: Tensor, g: Tensor, sizes: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """The global batch's (user, item, g), rank order: one all-gather of a packed, padded buffer."""
    longest = max(sizes)
    packed = torch.zeros(3, longest, dtype=torch.float32, device=g.device)
    # Indices travel as float32 bit patterns, so one collective carries all three columns.
    packed[0, : len(user)] = user.to(torch.int32).view(torch.float32)
    packed[1, : len(item)] = item.to(torch.int32).view(torch.float32)
    packed[2, : len(g)] = g
    gathered = [torch.empty_like(packed) for _ in sizes]
    dist.all_gather(gathered, packed)
    parts = [part[:, :size] for part, size in zip(gathered, sizes)]
    columns = torch.cat(parts, dim=1)
    return (columns[0].contiguous().view(torch.int32).long(), columns[1].contiguous().view(torch.int32).long(),
            columns[2].contiguous())


def all_reduce_sum(flat: Tensor) -> None:
    """Sums `flat` over the ranks, in place."""
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
