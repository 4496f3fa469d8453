"""Row weights of the per-rating penalties: `n^(power - 1)` for a row with n training ratings.

With power 1 (the default) every rating pays the classic penalty on the rows it looks up; power 0
charges a row about one penalty per epoch, like weight decay; values between damp the penalty of
frequent users and items. The counts come from the dataset (`train_ratings` in its id tables) at
fit start; the weights are not saved in checkpoints (they are derived from the data).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PenaltyRowWeights(nn.Module):
    """Per-row weights of the factor and bias penalties, and their per-rating lookup.

    Args:
        factor_power: Exponent a of the factor penalty's row weight n^(a-1).
        bias_power: Exponent of the bias penalty's row weight.
    """

    def __init__(self, factor_power: float = 1.0, bias_power: float = 1.0) -> None:
        super().__init__()
        self.factor_power, self.bias_power = float(factor_power), float(bias_power)
        for name in ("user_factor", "item_factor", "user_bias", "item_bias"):
            self.register_buffer(name, torch.ones(0), persistent=False)

    @property
    def needed(self) -> bool:
        """Whether any power differs from 1, so the training counts are needed."""
        return self.factor_power != 1.0 or self.bias_power != 1.0

    @property
    def ready(self) -> bool:
        """Whether the counts have been set (always, when none are needed)."""
        return not self.needed or bool(self.user_factor.numel() or self.user_bias.numel())

    def set_counts(self, user_counts: Tensor, item_counts: Tensor) -> None:
        """Per-row training counts n, which weight the penalties by n^(power - 1)."""
        device = self.user_factor.device
        # A row without training ratings is never looked up in training; its weight is moot.
        users = user_counts.to(device, torch.float32).clamp(min=1)
        items = item_counts.to(device, torch.float32).clamp(min=1)
        if self.factor_power != 1.0:
            self.user_factor = users.pow(self.factor_power - 1.0)
            self.item_factor = items.pow(self.factor_power - 1.0)
        if self.bias_power != 1.0:
            self.user_bias = users.pow(self.bias_power - 1.0)
            self.item_bias = items.pow(self.bias_power - 1.0)

    def for_batch(self, user: Tensor, item: Tensor) -> dict[str, Tensor]:
        """The batch's per-rating weights, as `MatrixFactorization.members` and `FusedRowAdagrad.update`
        take them (no entry for a power of 1)."""
        weights = {}
        if self.user_factor.numel():
            weights.update(user_weight=self.user_factor[user], item_weight=self.item_factor[item])
        if self.user_bias.numel():
            weights.update(user_bias_weight=self.user_bias[user], item_bias_weight=self.item_bias[item])
        return weights
