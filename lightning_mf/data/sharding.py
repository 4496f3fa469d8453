"""Who reads which part of an epoch: the contiguous slices of DDP ranks and of DataLoader workers.

The arithmetic is `stream`'s module docstring's; these functions are all of it, so the stream,
the DataModule and the tests agree on one definition.
"""

from __future__ import annotations

import math

from torch.utils.data import get_worker_info


def shard_bounds(num_rows: int, world_size: int, rank: int) -> tuple[int, int]:
    """The contiguous range of epoch positions owned by `rank`; sizes differ by at most one."""
    return rank * num_rows // world_size, (rank + 1) * num_rows // world_size


def batches_per_rank(num_rows: int, world_size: int, batch_size: int, drop_remainder: bool) -> int:
    """Number of training batches every rank yields per epoch (see the module docstring)."""
    smallest = num_rows // world_size
    return smallest // batch_size if drop_remainder else math.ceil(smallest / batch_size)


def worker_block(num_batches: int, num_workers: int, worker_id: int) -> tuple[int, int]:
    """The contiguous block of a rank's batch indices that one DataLoader worker yields."""
    return worker_id * num_batches // num_workers, (worker_id + 1) * num_batches // num_workers


def current_worker() -> tuple[int, int]:
    """This process's DataLoader worker id and the number of workers: (0, 1) outside a worker."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
