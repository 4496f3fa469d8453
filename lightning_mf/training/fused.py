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
ratings per second on one CPU core, fewer kernels and no sparse tensors on a GPU. The update is
the same as `RowAdagrad`'s on the same loss, up to float rounding: accumulators grow by each
occurrence's mean squared gradient, then every occurrence moves by `lr * g / (sqrt(acc) + eps)`.

On CPU a step runs in two threads (`threads=2`), split the way each stage allows: gathering
the rows, their Gram products and building both updates are row by row, so each thread takes
half of the batch; the step factors and the scatters are per table (a row can repeat in a batch,
so two threads must not add into one table), so one thread takes the users and the other the
items and both bias tables. Batch-sized buffers are kept between steps (see `_scratch`). At
MovieLens-25M sizes, dim 128, this is 1.7x one thread's ratings per second on 2 cores.

With `compile=True` (CPU), each table's update runs as one C++ loop that `torch.compile`
generates (`lightning_mf.training.fused_kernels`) instead of a dozen eager kernels: 1.3x the ratings per
second of a whole 25M-rating fit, for a compile of about 16 s on the first step (3 s once cached).

`RatingPredictor` recognises this optimizer, switches to manual optimization and calls `update`
from its training step. Supported: linear or sigmoid output, biases on or off, per-rating L2 with
row weights, mean or sum reduction, a single process. Not supported (rejected up front): dropout,
SVD++, ensembles and DDP, which need autograd.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_mf.training.fused_kernels import CompiledStages
from lightning_mf.training.model import MatrixFactorization
from lightning_mf.training.optimizers import check_hyperparameters

_A = TypeVar("_A")
_B = TypeVar("_B")


class FusedRowAdagrad(Optimizer):
    """Row-wise Adagrad whose updates `RatingPredictor` computes in closed form (see the module).

    Args:
        params: The model's parameters or parameter groups (as for any optimizer).
        lr: Learning rate. Invariant to the loss scale, like `RowAdagrad`'s.
        eps: Added to the denominator for numerical stability.
        initial_accumulator_value: Starting value of every row's accumulator.
        weight_decay: L2 coefficient added to the gradient of every looked-up row, once per
            occurrence (as `RowAdagrad` does for sparse gradients).
        threads: On CPU, 2 runs each step in the calling thread and a second Python thread,
            each running torch's kernels on its own core: half of the batch each where the work
            is row by row, one table each where it is not (1.7x the ratings per second on 2
            cores). With torch's intra-op threads set to 1 this uses the second core without
            OpenMP's barriers, which a busy machine stalls. 1 runs everything in the calling
            thread. Ignored on GPUs.
        compile: On CPU, run each table's update as one loop compiled by `torch.compile`
            (inductor, C++): 1.3x the ratings per second of the eager kernels at MovieLens-25M
            sizes, for a compile of about 16 s on the first step of a process (3 s once
            inductor's on-disk cache holds the kernels). Needs a C++ compiler; if compiling fails the
            optimizer warns and stays eager. Batches of another size than the first (an epoch's
            last) run eagerly rather than compiling again. Ignored on GPUs.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.05,
        eps: float = 1e-10,
        initial_accumulator_value: float = 0.0,
        weight_decay: float = 0.0,
        threads: int = 2,
        compile: bool = False,  # noqa: A002 - the name users know from torch.compile
    ) -> None:
        check_hyperparameters("FusedRowAdagrad", lr, eps, weight_decay, initial_accumulator_value)
        if threads not in (1, 2):
            raise ValueError(f"FusedRowAdagrad: threads must be 1 or 2, got {threads}")
        defaults = dict(lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value,
                        weight_decay=weight_decay, threads=threads, compile=compile)
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
                f"{', '.join(problems)}; use lightning_mf.training.optimizers.RowAdagrad with sparse=True instead."
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Runs `closure`, which does the update (`RatingPredictor` passes one calling `update`)."""
        if closure is None:
            raise RuntimeError(
                "FusedRowAdagrad.step needs the closure RatingPredictor passes it; the update itself is "
                "FusedRowAdagrad.update(model, batch, ...). Use lightning_mf.training.optimizers.RowAdagrad to apply gradients."
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

    def _scales(self, tables: list[tuple[Tensor, Tensor, Tensor]]) -> list[Tensor]:
        """Row-wise Adagrad's step factors of a batch, for each `(table, rows, squares)`: the ratings'
        mean squared gradients go into the table's accumulators, then each rating gets
        `-lr / (sqrt(acc) + eps)` of its row. One multi-tensor op per stage for all the tables."""
        factors, groups = [], []
        for table, rows, square in tables:
            accumulator, group = self._table(table)
            accumulator.index_add_(0, rows, square)
            factors.append(accumulator.index_select(0, rows))
            groups.append(group)
        torch._foreach_sqrt_(factors)
        torch._foreach_add_(factors, [group["eps"] for group in groups])
        torch._foreach_reciprocal_(factors)
        torch._foreach_mul_(factors, [-group["lr"] for group in groups])
        return factors

    @torch.no_grad()  # grad mode is per thread: the worker thread needs its own
    def _side(self, table: Tensor, rows: Tensor, own: Tensor, other: Tensor, d: Tensor, c: Tensor | float,
              products: tuple[Tensor, Tensor | None, Tensor, Tensor], out: Tensor | None,
              stages: CompiledStages | None = None) -> None:
        """Updates one factor table: each rating's row `own` moves by `s (d other + c own)`, built in `out`
        (or, with `stages`, by one compiled loop that needs no `out`; None is then allowed).

        `products` are per rating d^2, d (p . q) (None without a penalty), |other|^2 and |own|^2.
        """
        d_square, d_dot, other_sq, own_sq = products
        if stages is not None:
            accumulator, group = self._table(table)
            lr = torch.as_tensor(group["lr"], dtype=table.dtype)
            compiled = partial(stages.update_table, table.detach(), accumulator, rows, own, other, d,
                               c if _nonzero(c) else None, d_square, d_dot, other_sq, own_sq, lr, group["eps"])
            if self._run_compiled(compiled):
                return
        # Accumulators grow by the mean square over the row's entries.
        square = _square(d_square, other_sq, d_dot, c, own_sq).div_(table.shape[1])
        scale = self._scales([(table, rows, square)])[0]
        if out is None:  # only on the step whose compiling failed
            out = torch.empty_like(other)
        torch.mul(other, (scale * d).unsqueeze(1), out=out)
        if _nonzero(c):
            out.addcmul_(own, (scale * c).unsqueeze(1))
        table.index_add_(0, rows, out)

    @torch.no_grad()
    def _biases(self, d: Tensor, biases: list[tuple[Tensor, Tensor, Tensor, float]],
                stages: CompiledStages | None = None) -> None:
        """Updates bias tables (`(N, 1)`) from `(table, rows, looked-up values, per-rating L2)`:
        gradient `d + c b` (c: the L2 plus the table's weight decay), Adagrad like the factors."""
        if stages is not None:
            for done, (table, rows, looked_up, l2) in enumerate(biases):
                accumulator, group = self._table(table)
                call = partial(stages.update_bias, table.detach().view(-1), accumulator, rows, looked_up, d,
                               self._penalty(table, l2), torch.as_tensor(group["lr"], dtype=table.dtype),
                               group["eps"])
                if not self._run_compiled(call):
                    biases = biases[done:]
                    break
            else:
                return
        grads = []
        for table, _, looked_up, l2 in biases:
            c = self._penalty(table, l2)
            grads.append(torch.add(d, looked_up, alpha=c) if c else d)
        scales = self._scales([(table, rows, grad.square()) for (table, rows, _, _), grad in zip(biases, grads)])
        torch._foreach_mul_(scales, grads)
        for (table, rows, _, _), update in zip(biases, scales):
            table.view(-1).index_add_(0, rows, update)  # 1-D: 2-3x faster than on (N, 1)

    def _scratch(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A step-sized buffer kept from step to step (grown when a batch is larger), not state.

        A batch-sized tensor allocated afresh in the worker thread every step costs more than the
        arithmetic on it: glibc hands a thread arena's freed heap back to the OS, so each step
        page-faults it in again (2x the time of a multiply at 16,384 x 128).
        """
        buffers = self.__dict__.setdefault("_buffers", {})
        numel = math.prod(shape)
        buffer = buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = buffers[name] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buffer[:numel].view(shape)

    def _stages(self, device: torch.device, size: int) -> CompiledStages | None:
        """The compiled stages for a step of `size` ratings, or None where the step runs eagerly."""
        if not self.defaults["compile"] or device.type != "cpu" or self.__dict__.get("_compile_failed"):
            return None
        # Compiled for the first batch's size only: an epoch's shorter last batch is not worth a recompile.
        if self.__dict__.setdefault("_compiled_size", size) != size:
            return None
        stages = self.__dict__.get("_compiled_stages")
        if stages is None:
            stages = self.__dict__["_compiled_stages"] = CompiledStages()
        return stages

    def _run_compiled(self, call: Callable[[], None]) -> bool:
        """Runs a compiled stage; False (after one warning) where compiling failed, so the caller
        runs the stage eagerly. A stage fails before it writes anything: compiling comes first."""
        if self.__dict__.get("_compile_failed"):
            return False
        try:
            call()
        except Exception as error:  # noqa: BLE001 - compilers fail in many ways; eager always works
            self.__dict__["_compile_failed"] = True
            warnings.warn(f"FusedRowAdagrad(compile=True): compiling failed, training on with the eager "
                          f"kernels ({type(error).__name__}: {str(error)[:500]})", RuntimeWarning, stacklevel=2)
            return False
        return True

    def _pool(self) -> ThreadPoolExecutor:
        # Not part of the optimizer's state (Optimizer.__getstate__ leaves it out): made on first use.
        pool = self.__dict__.get("_executor")
        if pool is None:
            pool = self.__dict__["_executor"] = ThreadPoolExecutor(1, thread_name_prefix="lightning_mf-fused")
        return pool

    def _halves(self, threaded: bool, size: int, work: Callable[[slice], None]) -> None:
        """`work` on each half of the batch, the second half in the worker thread; or on all of it here."""
        if threaded and size > 1:
            self._both(True, partial(work, slice(0, size // 2)), partial(work, slice(size // 2, size)))
        else:
            work(slice(0, size))

    def _both(self, threaded: bool, first: Callable[[], _A], second: Callable[[], _B]) -> tuple[_A, _B]:
        """Runs `second` in the worker thread beside `first` in this one (or both here); their results."""
        if not threaded:
            return first(), second()
        pending = self._pool().submit(second)
        return first(), pending.result()

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
        beside: Callable[[], None] | None = None,
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
            beside: Other work of the step that touches none of the tables (the model's
                seen-marks): it runs in the second thread after the item side, whose share of
                the step is the smaller, instead of before the step in the calling thread.
        """
        user, item = user.long(), item.long()
        P, Q = model.user_factors.weight, model.item_factors.weight
        size, width = user.shape[0], P.shape[1]
        stages = self._stages(P.device, size)
        # The step that compiles runs in one thread: compiling is not something to race.
        threaded = (self.defaults["threads"] == 2 and P.device.type == "cpu"
                    and (stages is None or self.__dict__.get("_compiled_warm", False)))
        # Closed-form arithmetic in the tables' precision, whatever autocast is active (a worker
        # thread's autocast state is its own, and off).
        with torch.autocast(P.device.type, enabled=False):
            n = 2.0 / size if reduction == "mean" else 2.0
            c_u = self._penalty(P, n * l2, user_weight)
            c_i = self._penalty(Q, n * l2, item_weight)
            step = _Step(model, user, item, rating, n, _nonzero(c_u) or _nonzero(c_i),
                         self._scratch("rows", (2, size, width), P), self._scratch("gram", (size, 2, 2), P),
                         self._scratch("per_rating", (_VECTORS, size), P))
            # Looking up, predicting and differentiating go rating by rating: each thread takes half of the batch.
            self._halves(threaded, size, partial(_forward, step))
            p, q = step.rows[0], step.rows[1]
            pp, qq = step.gram[:, 0, 0], step.gram[:, 1, 1]
            b_u, b_i, error, d, square, d_dot = step.vectors
            data_mse = torch.dot(error, error) / size
            # Compiled stages build no update buffer.
            user_out, item_out = (self._scratch("update", (2, size, width), P).unbind(0) if stages is None
                                  else (None, None))
            # Per rating, p_u moves by s_u (d q_i + c_u p_u), q_i by s_i (d p_u + c_i q_i), with
            # Adagrad's step factors s. A table's update is not elementwise (a row can repeat in
            # a batch): each thread builds and scatters one table's, from start to end, so the
            # two meet once. The user table is the larger (slower to scatter into): the biases
            # go beside the items.
            products = (square, d_dot if step.penalized else None)
            items = [partial(self._side, Q, item, q, p, d, c_i, (*products, pp, qq), item_out, stages)]
            if model.user_bias is not None and model.item_bias is not None:
                items.append(partial(self._biases, d, [(model.user_bias.weight, user, b_u, n * l2_bias),
                                                       (model.item_bias.weight, item, b_i, n * l2_bias)], stages))
            if beside is not None:
                items.append(beside)
            self._both(threaded, partial(self._side, P, user, p, q, d, c_u, (*products, qq, pp), user_out, stages),
                       partial(_run, items))
        if stages is not None:
            self.__dict__["_compiled_warm"] = True
        return data_mse

    def _penalty(self, table: Tensor, per_rating: float, weight: Tensor | None = None) -> Tensor | float:
        """The coefficient c of a table's rows in their gradient: per-rating L2 (row-weighted) plus weight decay."""
        decay = self._table(table)[1]["weight_decay"]
        c = per_rating if weight is None else per_rating * weight
        return c + decay if decay else c


_VECTORS = 6  # per-rating vectors of a step: b_u, b_i, error, d, d^2, d (p . q)


class _Step(NamedTuple):
    """A step's batch and its kept buffers, which `_forward` fills part by part."""

    model: MatrixFactorization
    user: Tensor
    item: Tensor
    rating: Tensor
    n: float  # d loss / d (squared error) of a rating, times 2
    penalized: bool  # whether any factor row has a penalty coefficient
    rows: Tensor  # (2, B, D): the batch's user rows, then its item rows
    gram: Tensor  # (B, 2, 2): per rating |p|^2, p . q, |q|^2
    vectors: Tensor  # (_VECTORS, B)


@torch.no_grad()  # the worker thread's grad mode is its own; out= needs it off
def _forward(step: _Step, part: slice) -> None:
    """The ratings `part` of a batch: their rows, Gram products, biases, errors and derivatives, into `step`."""
    model, user, item = step.model, step.user[part], step.item[part]
    p, q = step.rows[0, part], step.rows[1, part]
    torch.index_select(model.user_factors.weight, 0, user, out=p)
    torch.index_select(model.item_factors.weight, 0, item, out=q)
    gram = step.gram[part]
    if p.device.type == "cpu":
        # p and q side by side ((B, 2, D), a strided view of the two blocks) make |p|^2, p . q and
        # |q|^2 one batched matrix product: a single read of p and q instead of three.
        pair = step.rows[:, part].permute(1, 0, 2)
        torch.bmm(pair, pair.transpose(1, 2), out=gram)
    else:
        gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1] = p.square().sum(1), (p * q).sum(1), q.square().sum(1)
    b_u, b_i, error, d, square, d_dot = step.vectors[:, part]
    dot = gram[:, 0, 1]
    raw = torch.add(dot, model.offset, out=error)
    if model.user_bias is not None and model.item_bias is not None:
        torch.index_select(model.user_bias.weight.view(-1), 0, user, out=b_u)
        torch.index_select(model.item_bias.weight.view(-1), 0, item, out=b_i)
        raw.add_(b_u).add_(b_i)
    if model.output == "sigmoid":
        span = model.rating_max - model.rating_min
        prediction = torch.sigmoid(raw).mul_(span).add_(model.rating_min)
        torch.sub(prediction, step.rating[part], out=error)
        slope = (prediction - model.rating_min).mul_(model.rating_max - prediction)
        torch.mul(error, slope, out=d).mul_(step.n / span)
    else:
        torch.mul(raw.sub_(step.rating[part]), step.n, out=d)
    torch.square(d, out=square)
    if step.penalized:
        torch.mul(d, dot, out=d_dot)


def _square(d_square: Tensor, other_sq: Tensor, d_dot: Tensor | None, c: Tensor | float, own_sq: Tensor) -> Tensor:
    """Per rating, the squared norm of the gradient `d * other + c * own` (see the module)."""
    square = d_square * other_sq
    if d_dot is None or not _nonzero(c):
        return square
    if isinstance(c, Tensor):
        return square.addcmul_(d_dot, c, value=2.0).addcmul_(own_sq, c * c)
    return square.add_(d_dot, alpha=2.0 * c).add_(own_sq, alpha=c * c)


def _run(calls: list[Callable[[], None]]) -> None:
    for call in calls:
        call()


def _nonzero(c: Tensor | float) -> bool:
    # A tensor coefficient comes from row weights with l2 > 0: nonzero without looking (no sync).
    return isinstance(c, Tensor) or c != 0.0
