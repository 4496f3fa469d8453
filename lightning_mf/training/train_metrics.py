"""What training accumulates between logs: the epoch's mean loss and the rows each rank has trained.

Both are torchmetrics `Metric`s, so torchmetrics merges them across DDP ranks when they are
computed (an all-gather of their states, at epoch ends only) and no collective is written here.
Updating them is a few in-place adds on the batch's device: no host sync per step.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_max, dim_zero_sum


class WeightedMean(Metric):
    """The weighted mean of per-batch values: `sum(value * weight) / sum(weight)`, in float64.

    Not torchmetrics' `MeanMetric`: its default NaN check reads every value on the host (a sync
    per step) and drops NaN losses, which must show instead; its `nan_strategy="disable"` ignores
    the weights. Here an epoch of 100,000 small batches stays exact to about 1e-12, and `compute`
    returns float32, the dtype logged.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx=dim_zero_sum)
        self.add_state("weight", torch.zeros((), dtype=torch.float64), dist_reduce_fx=dim_zero_sum)

    def update(self, value: Tensor, weight: float) -> None:
        """Adds a value (a 0-d tensor) counted `weight` times, e.g. a batch's mean over its ratings."""
        self.total.add_(value.detach(), alpha=weight)
        self.weight.add_(weight)

    def compute(self) -> Tensor:
        return (self.total / self.weight).float()


class SeenRows(Metric):
    """Which users and items took part in training on this rank, merged over ranks by `compute`.

    The model keeps its own `user_seen` / `item_seen` buffers for the unseen-row fallback, but DDP
    re-broadcasts rank 0's buffers before every forward, so each rank's marks are collected here
    (states are not module buffers) and ORed into the model's at epoch ends and checkpoints.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, num_users: int, num_items: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        # uint8, not bool: every backend all-gathers it (gloo has no bool all_gather).
        self.add_state("users", torch.zeros(num_users, dtype=torch.uint8), dist_reduce_fx=dim_zero_max)
        self.add_state("items", torch.zeros(num_items, dtype=torch.uint8), dist_reduce_fx=dim_zero_max)

    def update(self, user: Tensor, item: Tensor) -> None:
        self.users.index_fill_(0, user.long(), 1)
        self.items.index_fill_(0, item.long(), 1)

    def compute(self) -> tuple[Tensor, Tensor]:
        """The marks of every rank, as bools `(num_users,)` and `(num_items,)`."""
        return self.users.bool(), self.items.bool()
