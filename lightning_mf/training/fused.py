"""`FusedRowAdagrad`: row-wise Adagrad on the MF tables with gradients in closed form, no autograd.

On the sparse path, autograd materializes each table's `(batch, dim)` gradient, the optimizer
reads it once for the row norms, once more to scale it and a third time to scatter it: with the
penalty's own passes that is about 30 batch-sized passes per step, and the step is bound by them.
For biased MF the gradients are known in closed form (`fused_step` gives the formulas), so each
table's update is built from the looked-up rows in two passes and scattered in one: about a third
of the memory traffic of the autograd path, fewer kernels and no sparse tensors on a GPU. The
update is `RowAdagrad`'s on the same loss, up to float rounding: both call
`row_adagrad.row_adagrad_step`.

A step has two stages. The forward stage (gathering the rows, their Gram products, errors and
derivatives) is row by row, so on CPU (`threads=2`) each of two threads takes half of the batch.
The update stage is per table (a row can repeat in a batch, so two threads must not add into one
table): one thread updates the user factors, the other the item factors and both bias tables.
Batch-sized buffers are kept between steps (`cpu_step`). At MovieLens-25M sizes, dim 128, this is
1.7x one thread's ratings per second on 2 cores; `compile=True` runs each table's update as one
C++ loop (`fused_kernels`), 1.3x more.

`RatingPredictor` recognises this optimizer, switches to manual optimization and calls `update`
from its training step. Supported: linear or sigmoid output, biases on or off, per-rating L2 with
row weights, mean or sum reduction, a single process. Not supported (rejected up front): dropout,
SVD++, ensembles and DDP, which need autograd.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_mf.training.allocator import keep_freed_memory as _keep_freed_memory
from lightning_mf.training.cpu_step import KeptBuffers, SecondThread
from lightning_mf.training.fused_kernels import CompiledStages
from lightning_mf.training.fused_step import (
    VECTORS,
    StepInputs,
    bias_table_update,
    factor_table_update,
    forward_part,
    is_nonzero,
)
from lightning_mf.training.model import MatrixFactorization
from lightning_mf.training.optimizers import check_hyperparameters


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
        keep_freed_memory: On CPU, at the first step, ask glibc to keep freed batch-sized
            buffers in the heap instead of returning them to the OS (a process-wide setting, see
            `lightning_mf.training.allocator`): the loader's and the step's temporaries are then
            not page-faulted in afresh every step. Ignored elsewhere.
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
        keep_freed_memory: bool = False,
    ) -> None:
        check_hyperparameters("FusedRowAdagrad", lr, eps, weight_decay, initial_accumulator_value)
        if threads not in (1, 2):
            raise ValueError(f"FusedRowAdagrad: threads must be 1 or 2, got {threads}")
        defaults = dict(lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value,
                        weight_decay=weight_decay, threads=threads, compile=compile,
                        keep_freed_memory=keep_freed_memory)
        super().__init__(params, defaults)
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        """What steps keep that is not optimizer state (a thread, buffers, kernels): made afresh
        after unpickling, since `Optimizer.__getstate__` keeps only the state and the groups."""
        self._thread = SecondThread()
        self._buffers = KeptBuffers()
        self._compiled: CompiledStages | None = None
        self._compiled_size: int | None = None
        self.compiled_warm = False  # a step has run the compiled kernels
        self.compile_failed = False
        self._first_step_done = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._reset_runtime()

    def state_dict(self) -> dict[str, Any]:
        # The batch size the kernels compile for: a run resumed on an epoch's short last batch
        # must still compile for the full size.
        return {**super().state_dict(), "compiled_batch_size": self._compiled_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        compiled_size = state_dict.pop("compiled_batch_size", None)
        super().load_state_dict(state_dict)
        self._compiled_size = compiled_size

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
                "FusedRowAdagrad.update(model, batch, ...). Use lightning_mf.training.optimizers.RowAdagrad "
                "to apply gradients."
            )
        return closure()

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
        device = model.user_factors.weight.device
        size = user.shape[0]
        self._before_first_step(device)
        compiled = self._compiled_stages(device, size)
        # The step that compiles runs in one thread: compiling is not something to race.
        threaded = self.defaults["threads"] == 2 and device.type == "cpu" and (compiled is None or self.compiled_warm)
        # Closed-form arithmetic in the tables' precision, whatever autocast is active (a worker
        # thread's autocast state is its own, and off).
        with torch.autocast(device.type, enabled=False):
            step = self._inputs(model, user.long(), item.long(), rating, l2, user_weight, item_weight, reduction)
            self._thread.split_batch(threaded, size, partial(forward_part, step))
            self._update_tables(step, l2_bias, compiled, threaded)
        if compiled is not None:
            self.compiled_warm = True
        error = step.vectors[VECTORS.index("error")]
        return torch.dot(error, error) / size

    def _inputs(self, model: MatrixFactorization, user: Tensor, item: Tensor, rating: Tensor, l2: float,
                user_weight: Tensor | None, item_weight: Tensor | None, reduction: str) -> StepInputs:
        """The step's inputs, penalty coefficients and kept buffers, before the forward stage fills them."""
        users, items = model.user_factors.weight, model.item_factors.weight
        size, width = user.shape[0], users.shape[1]
        loss_weight = 2.0 / size if reduction == "mean" else 2.0
        return StepInputs(
            model, user, item, rating, loss_weight,
            self._penalty(users, loss_weight * l2, user_weight), self._penalty(items, loss_weight * l2, item_weight),
            self._buffers.get("rows", (2, size, width), users), self._buffers.get("gram", (size, 2, 2), users),
            self._buffers.get("vectors", (len(VECTORS), size), users),
        )

    def _update_tables(self, step: StepInputs, l2_bias: float, compiled: CompiledStages | None,
                       threaded: bool) -> None:
        """Per rating, p_u moves by s_u (d q_i + c_u p_u) and q_i by s_i (d p_u + c_i q_i), with Adagrad's
        step factors s. Each thread builds and scatters whole tables, so the two meet once; the user
        table is the larger (slower to scatter into), so the biases go beside the items."""
        model = step.model
        user_rows, item_rows = step.rows[0], step.rows[1]
        user_sq, item_sq = step.gram[:, 0, 0], step.gram[:, 1, 1]
        user_bias, item_bias, _, d, d_square, d_dot = step.vectors
        d_dot = d_dot if step.penalized else None
        # Eagerly each table's update is built in a kept buffer; compiled kernels need none.
        user_out, item_out = ((None, None) if compiled
                              else self._buffers.get("update", (2, *user_rows.shape), user_rows).unbind(0))
        update_users = partial(self._update_factors, model.user_factors.weight, step.user, user_rows, item_rows, d,
                               step.user_penalty, d_square, d_dot, item_sq, user_sq, user_out, compiled)
        item_side = [partial(self._update_factors, model.item_factors.weight, step.item, item_rows, user_rows, d,
                             step.item_penalty, d_square, d_dot, user_sq, item_sq, item_out, compiled)]
        if model.user_bias is not None and model.item_bias is not None:
            loss_weight = step.loss_weight
            item_side += [
                partial(self._update_bias, model.user_bias.weight, step.user, user_bias, d, loss_weight * l2_bias, compiled),
                partial(self._update_bias, model.item_bias.weight, step.item, item_bias, d, loss_weight * l2_bias, compiled),
            ]
        self._thread.in_parallel(threaded, update_users, lambda: [update() for update in item_side])

    @torch.no_grad()  # grad mode is per thread: the worker thread needs its own
    def _update_factors(self, table: Tensor, rows: Tensor, own: Tensor, other: Tensor, d: Tensor,
                        c: Tensor | float, d_square: Tensor, d_dot: Tensor | None, other_sq: Tensor,
                        own_sq: Tensor, out: Tensor | None, compiled: CompiledStages | None) -> None:
        accumulator, group = self._accumulator(table)
        c_or_none = c if is_nonzero(c) else None
        args = (table.detach(), accumulator, rows, own, other, d, c_or_none, d_square, d_dot, other_sq, own_sq)
        if compiled and self._run_compiled(partial(compiled.factor_table_update, *args,
                                                   torch.as_tensor(group["lr"], dtype=table.dtype), group["eps"])):
            return
        factor_table_update(*args, group["lr"], group["eps"], out=out if out is not None else torch.empty_like(other))

    @torch.no_grad()
    def _update_bias(self, table: Tensor, rows: Tensor, looked_up: Tensor, d: Tensor, per_rating_l2: float,
                     compiled: CompiledStages | None) -> None:
        accumulator, group = self._accumulator(table)
        # 1-D: index_add_ is 2-3x faster than on (N, 1).
        args = (table.detach().view(-1), accumulator, rows, looked_up, d, self._penalty(table, per_rating_l2))
        if compiled and self._run_compiled(partial(compiled.bias_table_update, *args,
                                                   torch.as_tensor(group["lr"], dtype=table.dtype), group["eps"])):
            return
        bias_table_update(*args, group["lr"], group["eps"])

    def _accumulator(self, param: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """The row accumulators of a table (created on first use) and its parameter group."""
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

    def _penalty(self, table: Tensor, per_rating: float, weight: Tensor | None = None) -> Tensor | float:
        """The coefficient c of a table's rows in their gradient: per-rating L2 (row-weighted) plus weight decay."""
        decay = self._accumulator(table)[1]["weight_decay"]
        c = per_rating if weight is None else per_rating * weight
        return c + decay if decay else c

    def _before_first_step(self, device: torch.device) -> None:
        if not self._first_step_done:
            self._first_step_done = True
            if self.defaults["keep_freed_memory"] and device.type == "cpu":
                _keep_freed_memory()

    def _compiled_stages(self, device: torch.device, size: int) -> CompiledStages | None:
        """The compiled table updates for a step of `size` ratings, or None where the step runs eagerly."""
        if not self.defaults["compile"] or device.type != "cpu" or self.compile_failed:
            return None
        # Compiled for the first batch's size only: an epoch's shorter last batch is not worth a recompile.
        if self._compiled_size is None:
            self._compiled_size = size
        if self._compiled_size != size:
            return None
        if self._compiled is None:
            self._compiled = CompiledStages()
        return self._compiled

    def _run_compiled(self, call: Callable[[], None]) -> bool:
        """Runs a compiled update; False (after one warning) where compiling failed, so the caller
        runs it eagerly. An update fails before it writes anything: compiling comes first."""
        if self.compile_failed:
            return False
        try:
            call()
        except Exception as error:  # noqa: BLE001 - compilers fail in many ways; eager always works
            self.compile_failed = True
            warnings.warn(f"FusedRowAdagrad(compile=True): compiling failed, training on with the eager "
                          f"kernels ({type(error).__name__}: {str(error)[:500]})", RuntimeWarning, stacklevel=2)
            return False
        return True
