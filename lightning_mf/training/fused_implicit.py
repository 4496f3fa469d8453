"""The SVD++ term on the fast path, lagged: exact within a refresh interval, O(batch) per step.

SVD++'s user term `z_u = |N(u)|^-1/2 sum_{j in N(u)} y_j` costs O(|N(u)| D) per user per batch to
form and as much to differentiate into y: heavy users make a batch of 32,768 ratings touch millions
of y rows. Here z is a table, `Z = A y` (A the normalised user x item matrix of N), formed for all
users at once, and y moves only at refreshes (the end of every epoch): between them each step
treats z_u like a fixed part of the user vector, updates p, q and the biases as usual, and adds
`g(z_u) = d q_i + c z_u` into an accumulator G. A refresh steps y with `A^T G` by the optimizer's
rule, recomputes Z and clears G. Per step that is one more (B, D) gather and scatter; per refresh
two sparse products over the training set. Between refreshes the model's own (exact) SVD++ term
equals Z, so evaluation needs nothing of this.

On ml-100k u1 and ml-latest-small, with the committed recipes (plain per-rating SGD, batch
2,048, 40 epochs), the lagged term keeps all of SVD++'s gain (docs/accuracy.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_mf.training.huge_pages import empty_on_huge_pages
from lightning_mf.training.model import MatrixFactorization

GRADIENT_KEY = "implicit_grad"  # the optimizer state of y that holds G


class LaggedImplicitTerm:
    """The user-term table Z of a model's current y (rebuilt when y moves), and y's refresh."""

    def __init__(self) -> None:
        self._table: Tensor | None = None
        self._transposed: Tensor | None = None  # A^T as CSR, for the refresh

    def table(self, model: MatrixFactorization) -> Tensor:
        """Z for every user, `(num_users, width)`, formed from y the first time after a change."""
        if self._table is None or self._table.device != model.implicit_factors.weight.device:
            table = torch.sparse.mm(model.implicit_matrix(), model.implicit_factors.weight.detach().float())
            if table.device.type == "cpu":  # gathered at random every step: see `huge_pages`
                table = empty_on_huge_pages(tuple(table.shape), table.dtype).copy_(table)
            self._table = table
        return self._table

    def forget(self) -> None:
        """Drops Z (after y changed outside a refresh, e.g. a checkpoint was loaded)."""
        self._table = self._transposed = None

    @torch.no_grad()
    def refresh(self, model: MatrixFactorization, gradient: Tensor,
                step_y: Callable[[Tensor], None]) -> None:
        """Steps y with the accumulated gradient (`step_y(A^T G)`), clears G and rebuilds Z."""
        if self._transposed is None or self._transposed.device != gradient.device:
            self._transposed = model.implicit_matrix().to_sparse_coo().t().coalesce().to_sparse_csr()
        step_y(torch.sparse.mm(self._transposed, gradient))
        gradient.zero_()
        self._table = None
        self.table(model)


def accumulate(gradient: Tensor, user: Tensor, d: Tensor, item_rows: Tensor, implicit_rows: Tensor,
               c: float) -> None:
    """Adds each rating's `g(z_u) = d q_i + c z_u` into G at its user's row."""
    update = item_rows * d.unsqueeze(1)
    if c:
        update.add_(implicit_rows, alpha=c)
    gradient.index_add_(0, user, update)
