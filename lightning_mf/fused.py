"""`FusedRowAdagrad`: row-wise Adagrad on the MF tables with gradients in closed form, no autograd.

On the sparse path, autograd materializes each table's `(batch, dim)` gradient, the optimizer
reads it once for the row norms, once more to scale it and a third time to scatter it: with the
penalty's own passes that is about 30 batch-sized passes per step, and the step is bound by them.
For biased MF the gradient of a rating's squared error and penalty with respect to its rows is
known in closed form,

    d raw_b = n * e_b [* dpred/draw]                (n = 2/B for a mean loss, 2 for a sum)
    g(p_u) = d raw_b * q_i + c_u * p_u               (c_u = n * l2 * w_u + weight_decay)
    |g(p_u)|^2 = d^2 |q_i|^2 + 2 d c_u (p_u . q_i) + c_u^2 |p_u|^2,

so the row norms come from the per-rating dot product and squared norms the forward pass needs
anyway (one batched 2x2 Gram product on CPU), and each table's scaled update is built in two
passes and scattered in one: about a third of the memory traffic of the autograd path, 1.3x its
ratings per second on one CPU core, fewer kernels and no sparse tensors on a GPU. On CPU the user
and item sides then run in two threads (`threads`): another 1.3x on two cores. The update is the
same as `RowAdagrad`'s on the same loss, up to float rounding: accumulators grow by each
occurrence's mean squared gradient, then every occurrence moves by `lr * g / (sqrt(acc) + eps)`.

`RatingPredictor` recognises this optimizer, switches to manual optimization and calls `update`
from its training step. Supported: linear or sigmoid output, biases on or off, per-rating L2 with
row weights, mean or sum reduction, a single process. Not supported (rejected up front): dropout,
SVD++, ensembles and DDP, which need autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_mf.model import MatrixFactorization


class FusedRowAdagrad(Optimizer):
    """Row-wise Adagrad whose updates `RatingPredictor` computes in closed form (see the module).

    Args:
        params: The model's parameters or parameter groups (as for any optimizer).
        lr: Learning rate. Invariant to the loss scale, like `RowAdagrad`'s.
        eps: Added to the denominator for numerical stability.
        initial_accumulator_value: Starting value of every row's accumulator.
        weight_decay: L2 coefficient added to the gradient of every looked-up row, once per
            occurrence (as `RowAdagrad` does for sparse gradients).
        threads: On CPU, 2 gathers and updates the item side (table and bias) in a second Python
            thread while the first does the user side: the tables are disjoint, and each thread
            runs torch's kernels on its own core (1.3x the ratings per second on 2 cores). With
            torch's intra-op threads set to 1 this uses the second core without OpenMP's
            barriers, which a busy machine stalls. 1 runs everything in the calling thread.
            Ignored on GPUs.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.05,
        eps: float = 1e-10,
        initial_accumulator_value: float = 0.0,
        weight_decay: float = 0.0,
        threads: int = 2,
    ) -> None:
        if lr <= 0.0:
            raise ValueError(f"FusedRowAdagrad: lr must be > 0, got {lr}")
        if eps <= 0.0:
            raise ValueError(f"FusedRowAdagrad: eps must be > 0, got {eps}")
        if initial_accumulator_value < 0.0:
            raise ValueError(
                f"FusedRowAdagrad: initial_accumulator_value must be >= 0, got {initial_accumulator_value}"
            )
        if weight_decay < 0.0:
            raise ValueError(f"FusedRowAdagrad: weight_decay must be >= 0, got {weight_decay}")
        if threads not in (1, 2):
            raise ValueError(f"FusedRowAdagrad: threads must be 1 or 2, got {threads}")
        defaults = dict(lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value,
                        weight_decay=weight_decay, threads=threads)
        super().__init__(params, defaults)

    @staticmethod
    def check(model: MatrixFactorization, world_size: int = 1) -> None:
        """Raises if `model` (or the run) uses something the closed-form update does not cover."""
        problems = []
        if isinstance(model.dropout, torch.nn.Dropout):
            problems.append(f"dropout={model.dropout.p}")
        if model.implicit_factors is not None:
            problems.append("implicit_feedback=True")
        if model.ensemble_size != 1:
            problems.append(f"ensemble_size={model.ensemble_size}")
        if world_size != 1:
            problems.append(f"{world_size} processes (each would update its own copy of the tables)")
        if problems:
            raise ValueError(
                "FusedRowAdagrad computes biased-MF updates in closed form and does not support "
                f"{', '.join(problems)}; use lightning_mf.optim.RowAdagrad with sparse=True instead."
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Runs `closure`, which does the update (`RatingPredictor` passes one calling `update`)."""
        if closure is None:
            raise RuntimeError(
                "FusedRowAdagrad.step needs the closure RatingPredictor passes it; the update itself is "
                "FusedRowAdagrad.update(model, batch, ...). Use lightning_mf.optim.RowAdagrad to apply gradients."
            )
        return closure()

    def _table(self, param: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """The accumulator of a table (created on first use) and its parameter group."""
        for group in self.param_groups:
            if any(p is param for p in group["params"]):
                break
        else:
            raise ValueError("FusedRowAdagrad.update: a model table is not among this optimizer's parameters")
        state = self.state[param]
        if "sum" not in state:
            state["sum"] = torch.full(param.shape[:1], group["initial_accumulator_value"], dtype=param.dtype,
                                      device=param.device)
        return state["sum"], group

    def _apply(self, param: Tensor, rows: Tensor, square: Tensor, update: Callable[[Tensor], Tensor]) -> None:
        """Row-wise Adagrad on `param`: accumulate mean squares, then scatter `update(scale)`."""
        accumulator, group = self._table(param)
        accumulator.index_add_(0, rows, square)
        scale = accumulator.index_select(0, rows).sqrt_().add_(group["eps"]).reciprocal_().mul_(-group["lr"])
        param.index_add_(0, rows, update(scale).view(-1, *param.shape[1:]))

    @torch.no_grad()  # grad mode is per thread: the worker thread needs its own
    def _side(self, side: _Side, d: Tensor, dot: Tensor, n: float, l2: float, l2_bias: float) -> None:
        """Updates one side's factor table and bias (user or item), from its rows' closed-form gradients."""
        decay = self._table(side.table)[1]["weight_decay"]
        c = n * l2 if side.weight is None else (n * l2) * side.weight
        c = c + decay if decay else c
        square = d.square() * side.other_sq
        if _nonzero(c):
            square = square + 2.0 * d * c * dot + c * c * side.own_sq
        self._apply(side.table, side.rows, square / side.own.shape[1], _scaled_gradient(side.own, side.other, d, c))
        if side.bias is None or side.bias_rows is None:
            return
        decay = self._table(side.bias)[1]["weight_decay"]
        c_bias = n * l2_bias + decay
        grad = d + c_bias * side.bias_rows if c_bias else d
        self._apply(side.bias, side.rows, grad.square(), lambda scale: grad * scale)

    def _pool(self) -> ThreadPoolExecutor:
        # Not part of the optimizer's state (Optimizer.__getstate__ leaves it out): made on first use.
        pool = self.__dict__.get("_executor")
        if pool is None:
            pool = self.__dict__["_executor"] = ThreadPoolExecutor(1, thread_name_prefix="lightning_mf-fused")
        return pool

    @torch.no_grad()
    def update(
        self,
        model: MatrixFactorization,
        user: Tensor,
        item: Tensor,
        rating: Tensor,
        l2: float = 0.0,
        l2_bias: float = 0.0,
        user_weight: Tensor | None = None,
        item_weight: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        """One step on a batch; returns its data MSE (before the update), on the batch's device.

        Args:
            model: The biased MF model whose tables this optimizer holds.
            user: User indices `(batch,)`.
            item: Item indices `(batch,)`.
            rating: Ratings `(batch,)`.
            l2: Per-rating L2 penalty on the looked-up factor rows.
            l2_bias: Per-rating L2 penalty on the looked-up biases.
            user_weight: Per-rating weight `(batch,)` of `|p_u|^2` in the penalty; unset: 1.
            item_weight: Per-rating weight of `|q_i|^2`; unset: 1.
            reduction: `mean` or `sum` of the per-rating losses.
        """
        user, item = user.long(), item.long()
        P, Q = model.user_factors.weight, model.item_factors.weight
        threaded = self.defaults["threads"] == 2 and P.device.type == "cpu"
        # Closed-form arithmetic in the tables' precision, whatever autocast is active.
        with torch.autocast(P.device.type, enabled=False):
            p, q, pp, dot, qq = _gather(P, Q, user, item, self._pool() if threaded else None)
            raw = dot + model.offset
            biases = model.user_bias is not None and model.item_bias is not None
            b_u = b_i = None
            if biases:
                b_u = model.user_bias.weight.view(-1).index_select(0, user)
                b_i = model.item_bias.weight.view(-1).index_select(0, item)
                raw = raw + b_u + b_i
            if model.output == "sigmoid":
                span = model.rating_max - model.rating_min
                prediction = model.rating_min + span * torch.sigmoid(raw)
                slope = (prediction - model.rating_min) * (model.rating_max - prediction) / span
            else:
                prediction, slope = raw, None
            error = prediction - rating
            data_mse = error.square().mean()
            n = 2.0 / error.shape[0] if reduction == "mean" else 2.0
            d = error * n if slope is None else error * slope * n
            users = _Side(P, user, p, q, pp, qq, user_weight, model.user_bias.weight if biases else None, b_u)
            items = _Side(Q, item, q, p, qq, pp, item_weight, model.item_bias.weight if biases else None, b_i)
            if threaded:
                # The two sides touch disjoint tables: the item side runs beside the user side.
                pending = self._pool().submit(self._side, items, d, dot, n, l2, l2_bias)
                self._side(users, d, dot, n, l2, l2_bias)
                pending.result()
            else:
                self._side(users, d, dot, n, l2, l2_bias)
                self._side(items, d, dot, n, l2, l2_bias)
        return data_mse


class _Side(NamedTuple):
    """What one side (users or items) of a batch needs for its update."""

    table: Tensor
    rows: Tensor
    own: Tensor
    other: Tensor
    own_sq: Tensor
    other_sq: Tensor
    weight: Tensor | None
    bias: Tensor | None
    bias_rows: Tensor | None


def _gather(P: Tensor, Q: Tensor, user: Tensor, item: Tensor,
            pool: ThreadPoolExecutor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The batch's rows p and q, and per rating |p|^2, p . q and |q|^2."""
    if P.device.type != "cpu":
        p, q = P.index_select(0, user), Q.index_select(0, item)
        return p, q, p.square().sum(1), (p * q).sum(1), q.square().sum(1)
    # On CPU, rows gathered side by side make all three one batched 2x2 Gram product: a single
    # read of p and q instead of three.
    rows = torch.empty(user.shape[0], 2, P.shape[1], dtype=P.dtype)
    if pool is not None:
        pending = pool.submit(torch.no_grad()(torch.index_select), Q, 0, item, out=rows[:, 1])
        p, q = torch.index_select(P, 0, user, out=rows[:, 0]), pending.result()
    else:
        p, q = torch.index_select(P, 0, user, out=rows[:, 0]), torch.index_select(Q, 0, item, out=rows[:, 1])
    gram = torch.bmm(rows, rows.transpose(1, 2))
    return p, q, gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1]


def _scaled_gradient(own: Tensor, other: Tensor, d: Tensor, c: Tensor | float) -> Callable[[Tensor], Tensor]:
    """`scale -> scale * (d * other + c * own)`, built in two passes (a multiply and a multiply-add)."""

    def build(scale: Tensor) -> Tensor:
        out = torch.mul(other, (scale * d).unsqueeze(1))
        if _nonzero(c):
            out.addcmul_(own, (scale * c).unsqueeze(1))
        return out

    return build


def _nonzero(c: Tensor | float) -> bool:
    # A tensor coefficient comes from row weights with l2 > 0: nonzero without looking (no sync).
    return isinstance(c, Tensor) or c != 0.0
