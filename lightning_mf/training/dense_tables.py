"""A trained `MatrixFactorization` as plain dense tables, so whole blocks of users score every item at once.

The model scores one (user, item) pair at a time and applies its unseen fallback per pair. Here the
same prediction is rearranged for bulk use: the SVD++ term is added into each user's factors once,
and the rows of users and items never seen in training are zeroed, so the plain formula

    mean over copies c of out(offset + b_u[c] + b_i[c] + P_u[c] . Q_i[c])

gives the model's fallback by itself (an unseen user keeps `offset + b_i`, an unseen item
`offset + b_u`, both the global mean). `out` is the identity, or the scaled sigmoid of
`output="sigmoid"`. The full-catalog ranking metrics, recommendations, export and fold-in all read
these tables.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from functools import cached_property

import torch
from torch import Tensor

from lightning_mf.training.model import MatrixFactorization

_USER_CHUNK = 65_536  # users whose SVD++ term is built at once: chunk x width floats


@dataclass(frozen=True)
class DenseTables:
    """Per-copy factor and bias tables of a trained model, unseen rows zeroed.

    Attributes:
        user_factors: `(num_users, copies, dim)`; the SVD++ term is included.
        item_factors: `(num_items, copies, dim)`.
        user_bias: `(num_users, copies)`; zeros for a model without biases.
        item_bias: `(num_items, copies)`.
        user_seen: `(num_users,)` bool: the user has factors (trained, or folded in).
        item_seen: `(num_items,)` bool.
        offset: The global mean (its logit under a sigmoid output).
        output: `linear` or `sigmoid`.
        rating_min: Lowest rating of the scale; predictions are clipped to it.
        rating_max: Highest rating of the scale.
    """

    user_factors: Tensor
    item_factors: Tensor
    user_bias: Tensor
    item_bias: Tensor
    user_seen: Tensor
    item_seen: Tensor
    offset: float
    output: str
    rating_min: float
    rating_max: float

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: MatrixFactorization) -> DenseTables:
        """The tables of `model` as it predicts in eval mode (on the model's device)."""
        shape = (-1, model.ensemble_size, model.embedding_dim)
        users = model.user_factors.weight.detach().float().clone().view(shape)
        if model.implicit_factors is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
                for start in range(0, model.num_users, _USER_CHUNK):
                    chunk = torch.arange(start, min(start + _USER_CHUNK, model.num_users), device=users.device)
                    users[chunk] += model._implicit_term(chunk).float().view(shape)
        items = model.item_factors.weight.detach().float().clone().view(shape)
        if model.user_bias is not None and model.item_bias is not None:
            user_bias = model.user_bias.weight.detach().float().clone()
            item_bias = model.item_bias.weight.detach().float().clone()
        else:
            user_bias = users.new_zeros(model.num_users, model.ensemble_size)
            item_bias = users.new_zeros(model.num_items, model.ensemble_size)
        tables = cls(users, items, user_bias, item_bias, model.user_seen.clone(), model.item_seen.clone(),
                     float(model.offset), model.output, model.rating_min, model.rating_max)
        return tables.zero_unseen()

    def zero_unseen(self) -> DenseTables:
        """The same tables with the rows of unseen users and items set to zero (in place)."""
        for seen, table in ((self.user_seen, self.user_factors), (self.user_seen, self.user_bias),
                            (self.item_seen, self.item_factors), (self.item_seen, self.item_bias)):
            table[~seen] = 0.0
        return self

    @property
    def num_users(self) -> int:
        return self.user_factors.shape[0]

    @property
    def num_items(self) -> int:
        return self.item_factors.shape[0]

    @property
    def copies(self) -> int:
        return self.user_factors.shape[1]

    @property
    def dim(self) -> int:
        return self.user_factors.shape[2]

    @property
    def device(self) -> torch.device:
        return self.user_factors.device

    def to(self, device: torch.device | str) -> DenseTables:
        """The tables on `device`."""
        names = ("user_factors", "item_factors", "user_bias", "item_bias", "user_seen", "item_seen")
        return replace(self, **{name: getattr(self, name).to(device) for name in names})

    def user_rows(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """Factors `(B, copies, dim)` and biases `(B, copies)` of user indices; a negative index
        (an id the model does not know) gets zeros, the fallback of an unseen user."""
        return _rows(self.user_factors, self.user_bias, users)

    def item_rows(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """As `user_rows`, for items."""
        return _rows(self.item_factors, self.item_bias, items)

    def _out(self, raw: Tensor) -> Tensor:
        if self.output == "sigmoid":
            return self.rating_min + (self.rating_max - self.rating_min) * torch.sigmoid(raw)
        return raw

    def score_pairs(self, users: Tensor, items: Tensor) -> Tensor:
        """Unclipped predictions `(N,)` of (user, item) index pairs; negative indices are unknown ids."""
        p, b_u = self.user_rows(users.to(self.device))
        q, b_i = self.item_rows(items.to(self.device))
        return self._out(self.offset + b_u + b_i + (p * q).sum(-1)).mean(1)

    def score_all_items(self, factors: Tensor, bias: Tensor, out: Tensor | None = None) -> Tensor:
        """Unclipped predictions `(B, num_items)` of B users given by their factors `(B, copies, dim)`
        and biases `(B, copies)` (from `user_rows`, or folded in), against every item.

        `out`, a float32 `(B, num_items)` buffer on the tables' device, is written instead of
        a new block (reusing one spares the page faults of a fresh 256 MB block per call)."""
        copies = self.copies
        if self.output == "linear":
            # One product does it all: the copies side by side (the mean over copies of sums is a
            # sum scaled by 1/copies), the user's bias and offset against a column of ones, and a
            # column of ones against the item bias, so no pass over the (B, items) block follows.
            users = torch.cat([factors.reshape(factors.shape[0], -1) / copies,
                               (bias.mean(1, keepdim=True) + self.offset), torch.ones_like(bias[:, :1])], dim=1)
            return torch.matmul(users, self._item_side.T, out=out)
        total = factors.new_zeros(factors.shape[0], self.num_items) if out is None else out.zero_()
        for c in range(copies):
            raw = factors[:, c] @ self.item_factors[:, c].T
            total += self._out(raw.add_(bias[:, c : c + 1]).add_(self.item_bias[:, c]).add_(self.offset))
        return total / copies if copies > 1 else total

    @cached_property
    def _item_side(self) -> Tensor:
        """`[Q, 1, mean item bias]` `(num_items, copies * dim + 2)` for the linear product above."""
        return torch.cat([self.item_factors.reshape(self.num_items, -1), torch.ones_like(self.item_bias[:, :1]),
                          self.item_bias.mean(1, keepdim=True)], dim=1)

    def clip(self, scores: Tensor) -> Tensor:
        """Predictions clipped to the rating scale, as the model gives them in eval mode."""
        return scores.clamp(self.rating_min, self.rating_max)


def _rows(factors: Tensor, bias: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    index = index.to(factors.device, torch.int64)
    known = index >= 0
    safe = index.clamp(min=0)
    return factors[safe] * known[:, None, None], bias[safe] * known[:, None]
