"""The matrix-factorization model: how a rating is scored from embeddings and biases.

The model knows nothing about losses, optimizers or logging (that is `module.RatingPredictor`).
A prediction is

    raw = offset + b_u + b_i + (p_u [+ |N(u)|^-1/2 * sum_{j in N(u)} y_j]) . q_i

where `offset` is the global mean (its logit under a sigmoid output), the bracketed term is the
optional SVD++ implicit-feedback user term, and `output="sigmoid"` maps `raw` into the rating
range. With `ensemble_size=k` the tables hold k independent copies side by side and the
prediction is the mean over copies; each copy is trained on its own error.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from lightning_mf.training.factor_product import FactorProduct, weighted
from lightning_mf.training.model_checks import check_model_arguments

InitKind = Literal["xavier", "normal"]
OutputKind = Literal["linear", "sigmoid"]

# Keeps the sigmoid offset finite when the global mean sits on a bound of the rating range.
_SIGMOID_EDGE = 1e-3


class MemberScores(NamedTuple):
    """Per-copy training outputs, all of shape `(batch, ensemble_size)`.

    Attributes:
        prediction: Predicted ratings, neither clipped nor replaced by the unseen fallback.
        factor_sq: Squared L2 norms of the user and item factor rows looked up for each rating,
            each times its row weight (`w_u |p_u|^2 + w_i |q_i|^2`); None unless asked.
        bias_sq: Squared user and item biases looked up for each rating, each times its row
            weight (zero without biases); None unless asked.
        implicit_sq: With implicit feedback, the squared norm of the SVD++ user term
            `|N(u)|^-1/2 sum_j y_j`; zero without it; None unless asked.
    """

    prediction: Tensor
    factor_sq: Tensor | None
    bias_sq: Tensor | None
    implicit_sq: Tensor | None = None


class MatrixFactorization(nn.Module):
    """Biased matrix factorization with optional SVD++ user term and an ensemble of copies.

    Users or items never seen in training (`user_seen` / `item_seen`, marked by `mark_seen`)
    fall back in eval mode to the terms that exist, the global mean at worst, and eval
    predictions are clipped to `[rating_min, rating_max]`.

    Args:
        num_users: Number of user indices (contiguous from 0).
        num_items: Number of item indices (contiguous from 0).
        rating_min: Lowest rating of the scale; eval predictions are clipped to it.
        rating_max: Highest rating of the scale.
        global_mean: Mean training rating, the fixed offset of every prediction.
        embedding_dim: Number of latent factors per user and item.
        dropout: Dropout probability applied to the user and item factor vectors in training.
        init: Factor initialisation: `xavier` (uniform, Glorot bound of each table) or `normal`
            (zero mean, `init_std`).
        init_std: Standard deviation of the `normal` initialisation.
        output: `linear` (raw score) or `sigmoid` (scaled to `[rating_min, rating_max]`).
        use_bias: Learn a bias per user and per item.
        sparse: Embeddings produce sparse gradients, so a sparse-capable optimizer touches only
            the rows of a batch (the fast path).
        implicit_feedback: Add the SVD++ implicit user term; call `set_implicit_feedback` with
            the training interactions before training. Costs a pass over every batch user's
            whole item set per batch, and the implicit table's gradient is dense even with
            `sparse` (it is a sparse x dense product).
        ensemble_size: Number of independently initialised copies whose predictions are averaged.
        rating_unit: With a linear output, the rating distance one unit of the score stands for:
            prediction = offset + rating_unit * (b_u + b_i + p_u . q_i). With 1 the factors learn
            ratings as they are; with the scale's width / 4 they learn ratings normalised by the
            scale, so settings chosen on one scale mean the same on another.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        rating_min: float,
        rating_max: float,
        global_mean: float,
        embedding_dim: int = 64,
        dropout: float = 0.0,
        init: InitKind = "normal",
        init_std: float = 0.1,
        output: OutputKind = "linear",
        use_bias: bool = True,
        sparse: bool = False,
        implicit_feedback: bool = False,
        ensemble_size: int = 1,
        rating_unit: float = 1.0,
    ) -> None:
        super().__init__()
        check_model_arguments(num_users, num_items, rating_min, rating_max, global_mean, embedding_dim, dropout,
                    init, init_std, output, ensemble_size)
        self.num_users, self.num_items = num_users, num_items
        self.rating_min, self.rating_max = float(rating_min), float(rating_max)
        self.embedding_dim, self.ensemble_size = embedding_dim, ensemble_size
        self.output, self.sparse = output, sparse
        if rating_unit <= 0:
            raise ValueError(f"MatrixFactorization: rating_unit must be > 0, got {rating_unit}")
        self.rating_unit = float(rating_unit)
        width = embedding_dim * ensemble_size
        self.user_factors = nn.Embedding(num_users, width, sparse=sparse)
        self.item_factors = nn.Embedding(num_items, width, sparse=sparse)
        self.user_bias = nn.Embedding(num_users, ensemble_size, sparse=sparse) if use_bias else None
        self.item_bias = nn.Embedding(num_items, ensemble_size, sparse=sparse) if use_bias else None
        self.implicit_factors = nn.Embedding(num_items, width, sparse=sparse) if implicit_feedback else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.register_buffer("offset", torch.tensor(self._offset(global_mean), dtype=torch.float32))
        self.register_buffer("user_seen", torch.zeros(num_users, dtype=torch.bool))
        self.register_buffer("item_seen", torch.zeros(num_items, dtype=torch.bool))
        if implicit_feedback:
            # CSR of each user's training items; sized by `set_implicit_feedback` or a checkpoint.
            self.register_buffer("implicit_indptr", torch.zeros(num_users + 1, dtype=torch.int64))
            self.register_buffer("implicit_items", torch.zeros(0, dtype=torch.int64))
        self.reset_parameters(init, init_std)

    def _offset(self, global_mean: float) -> float:
        if self.output == "linear":
            return float(global_mean)
        share = (global_mean - self.rating_min) / (self.rating_max - self.rating_min)
        share = min(max(share, _SIGMOID_EDGE), 1.0 - _SIGMOID_EDGE)
        return math.log(share / (1.0 - share))

    @torch.no_grad()
    def reset_parameters(self, init: InitKind, init_std: float) -> None:
        """Draw the factor tables (per copy, as if each copy were its own table); zero the biases."""
        tables = [self.user_factors, self.item_factors]
        if self.implicit_factors is not None:
            tables.append(self.implicit_factors)
        for table in tables:
            if init == "xavier":
                bound = math.sqrt(6.0 / (table.num_embeddings + self.embedding_dim))
                table.weight.uniform_(-bound, bound)
            else:
                table.weight.normal_(0.0, init_std)
        for bias in (self.user_bias, self.item_bias):
            if bias is not None:
                bias.weight.zero_()

    @torch.no_grad()
    def mark_seen(self, user: Tensor, item: Tensor) -> None:
        """Record that these users and items took part in training (no host sync)."""
        self.user_seen.index_fill_(0, user.long(), True)  # 1.3x `seen[user] = True`
        self.item_seen.index_fill_(0, item.long(), True)

    @torch.no_grad()
    def set_implicit_feedback(self, user: Tensor, item: Tensor) -> None:
        """Store each user's set of training items N(u) for the SVD++ term (duplicates dropped).

        Args:
            user: User indices of all training ratings.
            item: Item indices of the same ratings.
        """
        if self.implicit_factors is None:
            raise ValueError("set_implicit_feedback needs a model built with implicit_feedback=True")
        if user.shape != item.shape or user.dim() != 1:
            raise ValueError(f"user and item must be 1-D of equal length, got {tuple(user.shape)} "
                             f"and {tuple(item.shape)}")
        device = self.implicit_indptr.device
        key = torch.unique(user.to(device, torch.int64) * self.num_items + item.to(device, torch.int64))
        users = torch.div(key, self.num_items, rounding_mode="floor")
        counts = torch.bincount(users, minlength=self.num_users)
        if counts.numel() > self.num_users:
            raise ValueError(f"user index {int(users.max())} out of range for num_users={self.num_users}")
        self.implicit_indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.implicit_items = key - users * self.num_items

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # The implicit item list's length depends on the data; take the checkpoint's size.
        key = prefix + "implicit_items"
        if self.implicit_factors is not None and key in state_dict:
            self.implicit_items = torch.empty_like(state_dict[key], device=self.implicit_items.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _implicit_term(self, user: Tensor) -> Tensor:
        """SVD++ user term `|N(u)|^-1/2 sum_{j in N(u)} y_j`, shape `(batch, width)`.

        The batch's distinct users' rows of N, normalised, form a sparse CSR matrix; one sparse
        x dense product gives every user's term, and its backward scatters into y without ever
        materialising the (pairs x width) rows (five times faster on CPU than gather + index_add).
        """
        uniq, inverse = torch.unique(user.long(), return_inverse=True)
        return torch.sparse.mm(self.implicit_matrix(uniq), _float32(self.implicit_factors.weight))[inverse]

    def implicit_matrix(self, users: Tensor | None = None) -> Tensor:
        """The normalised sparse CSR matrix of N: row u holds `|N(u)|^-1/2` at each of u's items.

        Args:
            users: Distinct user indices whose rows to take, in order; unset: every user.
        """
        if users is None:
            row_start, columns = self.implicit_indptr, self.implicit_items
            length = row_start[1:] - row_start[:-1]
        else:
            start = self.implicit_indptr[users]
            length = self.implicit_indptr[users + 1] - start
            row_start = torch.cat([length.new_zeros(1), length.cumsum(0)])
            # Position of every (user, j) pair inside implicit_items, built without a Python loop.
            position = torch.repeat_interleave(start - row_start[:-1], length)
            position += torch.arange(position.numel(), device=position.device)
            columns = self.implicit_items[position]
        norm = torch.repeat_interleave(length.clamp(min=1).to(torch.float32).rsqrt(), length)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(row_start, columns, norm, size=(length.numel(), self.num_items),
                                           check_invariants=False)

    def members(
        self,
        user: Tensor,
        item: Tensor,
        penalty: bool = False,
        user_weight: Tensor | None = None,
        item_weight: Tensor | None = None,
        user_bias_weight: Tensor | None = None,
        item_bias_weight: Tensor | None = None,
    ) -> MemberScores:
        """Per-copy predictions and, with `penalty`, the squared norms of the rows they used.

        In eval mode unseen users or items lose their terms (fallback); no clipping here.
        Without `penalty` the squared norms are None (they cost two passes over the rows).
        `user_weight` / `item_weight` `(batch,)` scale each rating's `|p_u|^2` / `|q_i|^2`, and
        `user_bias_weight` / `item_bias_weight` its `b_u^2` / `b_i^2`.
        """
        shape = (-1, self.ensemble_size, self.embedding_dim)
        # Tables stored in bfloat16 (`bf16-true`) are scored in float32: a dot product of 128
        # bfloat16 terms would keep 8 bits of its sum.
        p = _float32(self.user_factors(user)).view(shape)
        q = _float32(self.item_factors(item)).view(shape)
        implicit_sq = None
        if self.implicit_factors is not None:
            term = self._implicit_term(user).view(shape)
            if penalty:
                # p_u and the implicit term are penalised separately (SVD++'s two regularisers).
                factor_sq = weighted(p.pow(2).sum(-1), user_weight) + weighted(q.pow(2).sum(-1), item_weight)
                implicit_sq = term.pow(2).sum(-1)
            else:
                factor_sq = None
            raw = (self.dropout(p + term) * self.dropout(q)).sum(-1)
        elif isinstance(self.dropout, nn.Dropout):
            if penalty:
                factor_sq = weighted(p.pow(2).sum(-1), user_weight) + weighted(q.pow(2).sum(-1), item_weight)
            else:
                factor_sq = None
            raw = (self.dropout(p) * self.dropout(q)).sum(-1)
        else:
            raw, factor_sq = FactorProduct.apply(p, q, penalty, user_weight, item_weight)
        bias_sq = None
        if self.user_bias is not None and self.item_bias is not None:
            b_u, b_i = self.user_bias(user), self.item_bias(item)
            if penalty:
                bias_sq = weighted(b_u.pow(2), user_bias_weight) + weighted(b_i.pow(2), item_bias_weight)
        if not self.training:
            user_seen = self.user_seen[user].unsqueeze(1)
            item_seen = self.item_seen[item].unsqueeze(1)
            raw = torch.where(user_seen & item_seen, raw, 0.0)
            if self.user_bias is not None:
                b_u, b_i = torch.where(user_seen, b_u, 0.0), torch.where(item_seen, b_i, 0.0)
        if self.user_bias is not None:
            raw = raw + b_u + b_i
        if self.rating_unit != 1.0 and self.output == "linear":
            raw = raw * self.rating_unit
        raw = raw + self.offset
        if self.output == "sigmoid":
            raw = self.rating_min + (self.rating_max - self.rating_min) * torch.sigmoid(raw)
        if penalty and bias_sq is None:
            bias_sq = torch.zeros_like(raw)
        if penalty and implicit_sq is None:
            implicit_sq = torch.zeros_like(raw)
        return MemberScores(raw, factor_sq, bias_sq, implicit_sq)

    def forward(self, user: Tensor, item: Tensor, clip: bool | None = None) -> Tensor:
        """Predicted ratings `(batch,)`: the mean over copies.

        Args:
            user: User indices (int32 or int64), shape `(batch,)`.
            item: Item indices, same shape.
            clip: Clip to the rating range; unset: clip in eval mode only (clipping in training
                would zero the gradient of out-of-range predictions).
        """
        prediction = self.members(user, item).prediction.mean(1)
        if clip if clip is not None else not self.training:
            prediction = prediction.clamp(self.rating_min, self.rating_max)
        return prediction


def _float32(values: Tensor) -> Tensor:
    """Low-precision values as float32 (differentiably); float32 and float64 as they are."""
    return values.float() if values.dtype in (torch.bfloat16, torch.float16) else values
