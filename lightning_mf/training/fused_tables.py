"""One fused step's table updates, in the shares of the step's two threads.

The user thread updates the user factors (the larger table, the slower scatter); the other thread
the item factors, both bias tables and the SVD++ gradient, so the two threads meet once per step.
Each update is compiled (`fused_kernels`) when the optimizer has kernels for the batch, else eager.
Under DDP's dense exchange the same calls collect each table's summed gradient and mean squares
into dense buffers instead (views of one flat buffer, so the ranks all-reduce it at once), and
`reduce_and_apply` then moves every row of every table by the summed update.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lightning_mf.training import fused_exchange
from lightning_mf.training.fused_implicit import accumulate
from lightning_mf.training.fused_kernels import CompiledStages
from lightning_mf.training.fused_step import (
    P,
    Q,
    Rule,
    StepInputs,
    Z,
    bias_table_update,
    factor_table_update,
    is_nonzero,
)
from lightning_mf.training.low_precision import add_all, add_rows, is_low_precision
from lightning_mf.training.row_adagrad import row_adagrad_step

if TYPE_CHECKING:
    from lightning_mf.training.fused import FusedRowOptimizer


def apply_dense(rule: Rule, table: Tensor, accumulator: Tensor | None, gradient: Tensor, mean_square: Tensor | None,
                lr: float, eps: float, generator: torch.Generator | None = None) -> None:
    """Moves every row of `table` by its summed gradient (rows without ratings have zeros and stay)."""
    if rule == "sgd":
        add_all(table, -lr * gradient, generator)
        return
    rows = torch.arange(table.shape[0], device=table.device)
    scaled = (lambda factor: factor.unsqueeze(1) * gradient) if gradient.dim() == 2 else (lambda factor: factor * gradient)
    whole = None if not is_low_precision(table) else (lambda target, _, updates: add_all(target, updates, generator))
    row_adagrad_step(table, accumulator, rows, mean_square, scaled, lr, eps, whole)


class TableUpdates:
    """The table updates of one step (see the module).

    Args:
        optimizer: The fused optimizer (its groups, accumulators and buffers).
        step: The step's filled inputs (the global batch's, under the ratings exchange).
        compiled: Compiled kernels to use, or None for the eager ones.
        dense: Collect for DDP's dense exchange instead of applying.
    """

    def __init__(self, optimizer: FusedRowOptimizer, step: StepInputs, compiled: CompiledStages | None,
                 dense: bool = False) -> None:
        self.optimizer, self.step, self.dense = optimizer, step, dense
        self.compiled = None if dense else compiled
        model, gram = step.model, step.gram
        self.p, self.q = step.rows[P], step.rows[Q]
        self.p_sq, self.q_sq = gram[:, P, P], gram[:, Q, Q]
        self.implicit = step.implicit_table is not None
        if self.implicit:
            # The items see the whole user vector p + z.
            self.user_vector = torch.add(self.p, step.rows[Z], out=optimizer.buffer("user-vector", self.p.shape, self.p))
            self.user_vector_sq = self.p_sq + 2.0 * gram[:, P, Z] + gram[:, Z, Z]
        else:
            self.user_vector, self.user_vector_sq = self.p, self.p_sq
        out = None if compiled is not None and not dense else optimizer.buffer("update", (2, *self.p.shape), self.p)
        self.user_out, self.item_out = (None, None) if out is None else out.unbind(0)
        self.collected = self._dense_buffers(model) if dense else {}

    def user_side(self) -> None:
        step = self.step
        self._factors(step.model.user_factors.weight, step.user, self.p, self.q, step.penalties.user_factor,
                      step.vector("d_dot_user"), self.q_sq, self.p_sq, self.user_out)

    def item_side(self) -> None:
        step = self.step
        model, penalties = step.model, step.penalties
        self._factors(model.item_factors.weight, step.item, self.q, self.user_vector, penalties.item_factor,
                      step.vector("d_dot_item"), self.user_vector_sq, self.q_sq, self.item_out)
        if model.user_bias is not None and model.item_bias is not None:
            self._bias(model.user_bias.weight, step.user, step.vector("user_bias"), penalties.user_bias)
            self._bias(model.item_bias.weight, step.item, step.vector("item_bias"), penalties.item_bias)
        if self.implicit:
            gradient = (self.collected["implicit"][0] if self.dense
                        else self.optimizer.implicit_gradient(model))
            if step.native is not None and not self.dense:
                step.native.implicit_accumulate(gradient, step.user, step.vector("d"), self.q, step.rows[Z],
                                                penalties.implicit)
            else:
                accumulate(gradient, step.user, step.vector("d"), self.q, step.rows[Z], penalties.implicit)

    @torch.no_grad()  # grad mode is per thread: the worker thread needs its own
    def _factors(self, table: Tensor, rows: Tensor, own: Tensor, other: Tensor, c: Tensor | float, d_dot: Tensor,
                 other_sq: Tensor, own_sq: Tensor, out: Tensor | None) -> None:
        optimizer, step = self.optimizer, self.step
        group = optimizer.group_of(table)
        c_or_none = c if is_nonzero(c) else None
        d_dot_or_none = d_dot if step.penalized else None
        if self.dense:
            gradient, mean_square = self.collected[id(table)]
            factor_table_update(gradient, mean_square, rows, own, other, step.vector("d"), c_or_none,
                                step.vector("d_square"), d_dot_or_none, other_sq, own_sq, 0.0, 0.0, "collect", out)
            return
        args = (table.detach(), optimizer.accumulator(table), rows, own, other, step.vector("d"), c_or_none,
                step.vector("d_square"), d_dot_or_none, other_sq, own_sq)
        if is_low_precision(table):
            factor_table_update(*args, group["lr"], group.get("eps", 0.0), optimizer.rule,
                                out=out if out is not None else torch.empty_like(other), add_rows=self._rounded(table))
            return
        if self.compiled is not None and optimizer.run_compiled(partial(
                self.compiled.factor_table_update, *args, torch.as_tensor(group["lr"], dtype=table.dtype),
                group.get("eps", 0.0), optimizer.rule)):
            return
        factor_table_update(*args, group["lr"], group.get("eps", 0.0), optimizer.rule,
                            out=out if out is not None else torch.empty_like(other))

    @torch.no_grad()
    def _bias(self, table: Tensor, rows: Tensor, looked_up: Tensor, c: Tensor | float) -> None:
        optimizer = self.optimizer
        group = optimizer.group_of(table)
        c_or_none = c if is_nonzero(c) else None
        if self.dense:
            gradient, mean_square = self.collected[id(table)]
            bias_table_update(gradient, mean_square, rows, looked_up, self.step.vector("d"), c_or_none, 0.0, 0.0,
                              "collect")
            return
        # 1-D: index_add_ is 2-3x faster than on (N, 1).
        args = (table.detach().view(-1), optimizer.accumulator(table), rows, looked_up, self.step.vector("d"),
                c_or_none)
        if is_low_precision(table):
            bias_table_update(*args, group["lr"], group.get("eps", 0.0), optimizer.rule, self._rounded(table))
            return
        if self.compiled is not None and optimizer.run_compiled(partial(
                self.compiled.bias_table_update, *args, torch.as_tensor(group["lr"], dtype=table.dtype),
                group.get("eps", 0.0), optimizer.rule)):
            return
        bias_table_update(*args, group["lr"], group.get("eps", 0.0), optimizer.rule)

    def _rounded(self, table: Tensor):  # noqa: ANN202 - a partial of low_precision.add_rows
        return partial(add_rows, generator=self.optimizer.rounding_generator(table.device))

    def _dense_buffers(self, model) -> dict[object, tuple[Tensor, Tensor | None]]:
        """Zeroed (gradient, mean square) views of one flat buffer, for each table (and G of SVD++)."""
        self._tables = [(model.user_factors.weight, False), (model.item_factors.weight, False)]
        if model.user_bias is not None and model.item_bias is not None:
            self._tables += [(model.user_bias.weight, True), (model.item_bias.weight, True)]
        layout: list[tuple[object, tuple[int, ...], bool]] = [
            (id(table), tuple(table.shape[:1]) if is_bias else tuple(table.shape), True) for table, is_bias in self._tables]
        if self.implicit:
            layout.append(("implicit", (model.num_users, model.user_factors.weight.shape[1]), False))
        total = sum(torch.Size(shape).numel() + (shape[0] if squares else 0) for _, shape, squares in layout)
        self._flat = self.optimizer.buffer("dense-exchange", (total,), self.p)
        self._flat.zero_()
        views, at = {}, 0
        for key, shape, squares in layout:
            numel = torch.Size(shape).numel()
            gradient = self._flat[at: at + numel].view(shape)
            at += numel
            mean_square = self._flat[at: at + shape[0]] if squares else None
            at += shape[0] if squares else 0
            views[key] = (gradient, mean_square)
        return views

    def reduce_and_apply(self) -> None:
        """Sums the collected buffers over the ranks, then applies them to every row."""
        fused_exchange.all_reduce_sum(self._flat)
        optimizer, model = self.optimizer, self.step.model
        for table, is_bias in self._tables:
            gradient, mean_square = self.collected[id(table)]
            group = optimizer.group_of(table)
            view = table.detach().view(-1) if is_bias else table.detach()
            apply_dense(optimizer.rule, view, optimizer.accumulator(table), gradient, mean_square, group["lr"],
                        group.get("eps", 0.0), optimizer.rounding_generator(table.device))
        if self.implicit:
            optimizer.implicit_gradient(model).add_(self.collected["implicit"][0])
