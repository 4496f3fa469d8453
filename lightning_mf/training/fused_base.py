"""`FusedRowOptimizer`: what the fast path's optimizers share (see `lightning_mf.training.fused`).

It holds the tables' state (row accumulators, the SVD++ gradient), runs a step's two stages (the
forward, split over the batch; the table updates, split over the tables: `fused_tables`) in one
or two threads, with compiled kernels or eager ones, and under DDP combines the ranks
(`fused_exchange`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_mf.training import fused_exchange
from lightning_mf.training.allocator import keep_freed_memory as _keep_freed_memory
from lightning_mf.training.cpu_step import KeptBuffers, SecondThread
from lightning_mf.training.fused_implicit import GRADIENT_KEY, LaggedImplicitTerm
from lightning_mf.training.fused_kernels import CompiledStages
from lightning_mf.training.fused_step import (
    VECTORS,
    Penalties,
    Rule,
    StepInputs,
    forward_part,
)
from lightning_mf.training.fused_tables import TableUpdates, apply_dense
from lightning_mf.training.huge_pages import empty_on_huge_pages, move_to_huge_pages
from lightning_mf.training.model import MatrixFactorization
from lightning_mf.training.native_kernels import NativeStages
from lightning_mf.training.penalties import PenaltyRowWeights


class FusedRowOptimizer(Optimizer):
    """What both fused optimizers share (see the module); `rule` says how a row moves."""

    rule: Rule = "adagrad"

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        if defaults["threads"] not in (1, 2):
            raise ValueError(f"{type(self).__name__}: threads must be 1 or 2, got {defaults['threads']}")
        if defaults.get("kernels", "native") not in ("native", "inductor"):
            raise ValueError(f"{type(self).__name__}: kernels must be native or inductor, got {defaults['kernels']!r}")
        if defaults["distributed_update"] not in ("auto", "ratings", "dense"):
            raise ValueError(f"{type(self).__name__}: distributed_update must be auto, ratings or dense, got "
                             f"{defaults['distributed_update']!r}")
        super().__init__(params, defaults)
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        """What steps keep that is not optimizer state (a thread, buffers, kernels, Z): made afresh
        after unpickling, since `Optimizer.__getstate__` keeps only the state and the groups."""
        self._thread = SecondThread()
        self._buffers = KeptBuffers()
        self._compiled: CompiledStages | NativeStages | None = None
        self._compiled_size: int | None = None
        self.compiled_warm = False  # a step has run the compiled kernels
        self.compile_failed = False
        self._first_step_done = False
        self.implicit = LaggedImplicitTerm()
        self.last_exchange: str | None = None  # how the last distributed step combined the ranks
        self._rounding: torch.Generator | None = None
        self._rounding_state: Tensor | None = None  # a loaded generator state, set on first use

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._reset_runtime()

    def state_dict(self) -> dict[str, Any]:
        # The batch size the kernels compile for (a run resumed on an epoch's short last batch
        # must still compile for the full size) and the stochastic rounding's generator.
        rounding = self._rounding.get_state() if self._rounding is not None else self._rounding_state
        return {**super().state_dict(), "compiled_batch_size": self._compiled_size, "rounding_generator": rounding}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        compiled_size = state_dict.pop("compiled_batch_size", None)
        rounding = state_dict.pop("rounding_generator", None)
        super().load_state_dict(state_dict)
        # torch casts loaded state to its parameter's dtype, but ours is float32 whatever the
        # tables are (bfloat16 tables keep float32 accumulators and G): put the saved values back.
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [param for group in self.param_groups for param in group["params"]]
        for saved_id, param in zip(saved_ids, params):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if isinstance(value, Tensor) and value.is_floating_point():
                    self.state[param][key] = value.to(device=param.device)
        self._compiled_size, self._rounding_state = compiled_size, rounding

    def rounding_generator(self, device: torch.device) -> torch.Generator:
        """The generator of bfloat16 tables' stochastic rounding: seeded alike on every rank, checkpointed."""
        if self._rounding is None or self._rounding.device != device:
            self._rounding = torch.Generator(device).manual_seed(self.defaults.get("rounding_seed", 0))
            if self._rounding_state is not None:
                self._rounding.set_state(self._rounding_state)
                self._rounding_state = None
        return self._rounding

    @classmethod
    def check(cls, model: MatrixFactorization) -> None:
        """Raises if `model` uses something the closed-form update does not cover."""
        problems = []
        if isinstance(model.dropout, torch.nn.Dropout):
            problems.append(f"dropout={model.dropout.p}")
        if model.ensemble_size != 1:
            problems.append(f"ensemble_size={model.ensemble_size}")
        if problems:
            raise ValueError(
                f"{cls.__name__} computes biased-MF updates in closed form and does not support "
                f"{', '.join(problems)}; use lightning_mf.training.optimizers.RowAdagrad with sparse=True instead."
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Runs `closure`, which does the update (`RatingPredictor` passes one calling `update`)."""
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__}.step needs the closure RatingPredictor passes it; the update itself is "
                f"{type(self).__name__}.update(model, batch, ...). Use lightning_mf.training.optimizers.RowAdagrad "
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
        l2_implicit: float = 0.0,
        row_weights: PenaltyRowWeights | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        """One step on a batch (this rank's share of the global batch); returns its data MSE
        (before the update), on the batch's device.

        Args:
            model: The biased MF model whose tables this optimizer holds.
            user: User indices `(batch,)`.
            item: Item indices `(batch,)`.
            rating: Ratings `(batch,)`.
            l2: Per-rating L2 penalty on the looked-up factor rows.
            l2_bias: Per-rating L2 penalty on the looked-up biases.
            l2_implicit: Per-rating L2 penalty on the SVD++ user term.
            row_weights: The penalties' row weights n^(power - 1); unset: 1.
            reduction: `mean` or `sum` of the per-rating losses (over the global batch).
        """
        device = model.user_factors.weight.device
        user, item = user.long(), item.long()
        self._before_first_step(device)
        world = fused_exchange.world_size()
        sizes = fused_exchange.all_sizes(user.shape[0], device) if world > 1 else [user.shape[0]]
        global_size = sum(sizes)
        loss_weight = 2.0 / global_size if reduction == "mean" else 2.0
        penalties = (l2, l2_bias, l2_implicit, row_weights)
        compiled = self._compiled_stages(device, user.shape[0])
        threaded = self.defaults["threads"] == 2 and device.type == "cpu" and (compiled is None or self.compiled_warm)
        # Closed-form arithmetic in the tables' precision, whatever autocast is active (a worker
        # thread's autocast state is its own, and off).
        with torch.autocast(device.type, enabled=False):
            exchange = "single" if world == 1 else fused_exchange.choose(
                self.defaults["distributed_update"], global_size, model.num_users, model.num_items,
                model.user_factors.weight.shape[1], model.implicit_factors is not None)
            # Under the ratings exchange, the local forward only finds each rating's g (n = 1).
            native = compiled if isinstance(compiled, NativeStages) else None
            local = self._inputs(model, user, item, rating, 1.0 if exchange == "ratings" else loss_weight,
                                 *penalties, native)
            self._thread.split_batch(threaded, user.shape[0], partial(forward_part, local))
            error = local.vector("error")
            mse = torch.dot(error, error) / user.shape[0]
            if exchange == "ratings":
                user, item, g = fused_exchange.gather_ratings(user, item, local.vector("g"), sizes)
                step = self._inputs(model, user, item, None, loss_weight, *penalties, native)
                step.vector("d").copy_(g).mul_(loss_weight)
                self._thread.split_batch(threaded, global_size, partial(forward_part, step))
            else:
                step = local
            updates = TableUpdates(self, step, compiled, dense=exchange == "dense")
            self._thread.in_parallel(threaded, updates.user_side, updates.item_side)
            if exchange == "dense":
                updates.reduce_and_apply()
        if compiled is not None:
            self.compiled_warm = True
        self.last_exchange = None if world == 1 else exchange
        return mse

    def _inputs(self, model: MatrixFactorization, user: Tensor, item: Tensor, rating: Tensor | None,
                loss_weight: float, l2: float, l2_bias: float, l2_implicit: float,
                row_weights: PenaltyRowWeights | None, native: NativeStages | None = None) -> StepInputs:
        """A step's inputs, penalty coefficients and kept buffers, before the forward stage fills them."""
        users, items = model.user_factors.weight, model.item_factors.weight
        size, width = user.shape[0], users.shape[1]
        implicit = self.implicit.table(model) if model.implicit_factors is not None else None
        like = torch.empty(0, dtype=torch.float32, device=users.device)  # float32 even for bfloat16 tables
        weights = row_weights.for_batch(user, item) if row_weights is not None else {}
        penalties = Penalties(
            self._penalty(users, loss_weight * l2, weights.get("user_weight")),
            self._penalty(items, loss_weight * l2, weights.get("item_weight")),
            self._bias_penalty(model.user_bias, loss_weight * l2_bias, weights.get("user_bias_weight")),
            self._bias_penalty(model.item_bias, loss_weight * l2_bias, weights.get("item_bias_weight")),
            loss_weight * l2_implicit,
        )
        tag, rows = ("local" if rating is not None else "global"), 2 if implicit is None else 3
        return StepInputs(
            model, user, item, rating, loss_weight, penalties,
            self._buffers.get(f"{tag}-rows", (rows, size, width), like),
            self._buffers.get(f"{tag}-gram", (size, rows, rows), like),
            self._buffers.get(f"{tag}-vectors", (len(VECTORS), size), like), implicit, native,
        )

    def _penalty(self, table: Tensor, per_rating: float, weight: Tensor | None = None) -> Tensor | float:
        """The coefficient c of a table's rows in their gradient: per-rating L2 (row-weighted) plus weight decay."""
        decay = self.group_of(table)["weight_decay"]
        c = per_rating if weight is None else per_rating * weight
        return c + decay if decay else c

    def _bias_penalty(self, bias: torch.nn.Embedding | None, per_rating: float, weight: Tensor | None) -> Tensor | float:
        return 0.0 if bias is None else self._penalty(bias.weight, per_rating, weight)

    def group_of(self, param: Tensor) -> dict[str, Any]:
        for group in self.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise ValueError(f"{type(self).__name__}.update: a model table is not among this optimizer's parameters")

    def accumulator(self, param: Tensor) -> Tensor | None:
        """A table's row accumulators (created on first use); None for SGD, which has none."""
        if self.rule == "sgd":
            return None
        state = self.state[param]
        if "sum" not in state:
            state["sum"] = torch.full(param.shape[:1], self.group_of(param)["initial_accumulator_value"],
                                      dtype=torch.float32, device=param.device)
        return state["sum"]

    def implicit_gradient(self, model: MatrixFactorization) -> Tensor:
        """G, the SVD++ user terms' gradient since the last refresh (optimizer state: it is checkpointed)."""
        state = self.state[model.implicit_factors.weight]
        if GRADIENT_KEY not in state:
            shape, device = (model.num_users, model.implicit_factors.weight.shape[1]), model.implicit_factors.weight.device
            gradient = (empty_on_huge_pages(shape, torch.float32) if device.type == "cpu"
                        else torch.empty(shape, dtype=torch.float32, device=device))
            state[GRADIENT_KEY] = gradient.zero_()
        return state[GRADIENT_KEY]

    @torch.no_grad()
    def refresh_implicit(self, model: MatrixFactorization) -> None:
        """Steps the SVD++ item factors y with the gradient accumulated since the last refresh."""
        if model.implicit_factors is None:
            return
        y = model.implicit_factors.weight
        group = self.group_of(y)

        def step_y(gradient: Tensor) -> None:
            if group["weight_decay"]:
                gradient.add_(y, alpha=group["weight_decay"])
            apply_dense(self.rule, y, self.accumulator(y), gradient, gradient.square().mean(1), group["lr"],
                        group.get("eps", 0.0), self.rounding_generator(y.device))

        self.implicit.refresh(model, self.implicit_gradient(model), step_y)

    def _before_first_step(self, device: torch.device) -> None:
        if not self._first_step_done:
            self._first_step_done = True
            if device.type == "cpu" and self.defaults["keep_freed_memory"]:
                _keep_freed_memory()
            if device.type == "cpu" and self.defaults.get("huge_pages", True):
                for group in self.param_groups:
                    for param in group["params"]:
                        move_to_huge_pages(param)

    def _compiled_stages(self, device: torch.device, size: int) -> CompiledStages | NativeStages | None:
        """The compiled loops for a step of `size` ratings, or None where the step runs eagerly."""
        if not self.defaults["compile"] or device.type != "cpu" or self.compile_failed:
            return None
        if self.defaults.get("kernels", "native") == "native":  # any batch size: nothing to recompile
            if self._compiled is None and not self.run_compiled(self._load_native):
                return None
            return self._compiled
        # Compiled for the first batch's size only: an epoch's shorter last batch is not worth a recompile.
        if self._compiled_size is None:
            self._compiled_size = size
        if self._compiled_size != size:
            return None
        if self._compiled is None:
            self._compiled = CompiledStages()
        return self._compiled

    def _load_native(self) -> None:
        self._compiled = NativeStages()

    def run_compiled(self, call: Callable[[], None]) -> bool:
        """Runs a compiled update; False (after one warning) where compiling failed, so the caller
        runs it eagerly. An update fails before it writes anything: compiling comes first."""
        if self.compile_failed:
            return False
        try:
            call()
        except Exception as error:  # noqa: BLE001 - compilers fail in many ways; eager always works
            self.compile_failed = True
            warnings.warn(f"{type(self).__name__}(compile=True): compiling failed, training on with the eager "
                          f"kernels ({type(error).__name__}: {str(error)[:500]})", RuntimeWarning, stacklevel=2)
            return False
        return True

    def buffer(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        return self._buffers.get(name, shape, like)
