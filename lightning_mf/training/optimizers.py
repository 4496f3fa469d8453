"""Optimizers for the fast path: update only the embedding rows a batch touched.

`torch.optim.SparseAdam` and `Adagrad` accept sparse gradients but neither takes a dense
parameter in the same object, SparseAdam has no weight decay and both keep one step count per
tensor, so a row first seen late gets a badly bias-corrected first step. Both optimizers here are
plain `torch.optim.Optimizer`s (so Lightning drives them like any other) that take sparse and
dense gradients in one object:

- `RowAdam`: lazy Adam with a step count per row; closest to the dense Adam of the seed log.
- `RowAdagrad`: row-wise Adagrad, one float of state per row and no sort; the fastest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_mf.training.row_adagrad import row_adagrad_step


def check_hyperparameters(owner: str, lr: float, eps: float, weight_decay: float,
                          initial_accumulator_value: float = 0.0) -> None:
    """Raises a `ValueError` naming `owner` for a learning rate or eps <= 0, or a negative decay or
    accumulator start: the checks every row-wise optimizer here shares."""
    if lr <= 0.0:
        raise ValueError(f"{owner}: lr must be > 0, got {lr}")
    if eps <= 0.0:
        raise ValueError(f"{owner}: eps must be > 0, got {eps}")
    if initial_accumulator_value < 0.0:
        raise ValueError(f"{owner}: initial_accumulator_value must be >= 0, got {initial_accumulator_value}")
    if weight_decay < 0.0:
        raise ValueError(f"{owner}: weight_decay must be >= 0, got {weight_decay}")


class RowWiseOptimizer(Optimizer):
    """The step both optimizers share: the closure (with grad on), then each parameter that has a
    gradient, sparse or dense, through the subclass's `_update`."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError


class RowAdam(RowWiseOptimizer):
    """Lazy Adam: a sparse gradient updates only its rows, each with its own bias correction.

    A row's moments and step count advance only on the steps that touch it, so an update of a
    row is exactly the Adam update it would get if its gradients were the only ones. Duplicate
    rows in a gradient (an item rated twice in a batch) are summed first. Dense gradients get the
    usual Adam update.

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate.
        betas: Decay rates of the first and second moment estimates.
        eps: Added to the denominator for numerical stability.
        weight_decay: L2 coefficient. For sparse gradients it applies to the touched rows only,
            i.e. a row is decayed once per step in which it appears.
        decoupled_weight_decay: Decay the weights directly (AdamW) instead of adding the L2
            term to the gradient (Adam).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
    ) -> None:
        check_hyperparameters("RowAdam", lr, eps, weight_decay)
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"RowAdam: betas must lie in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _update(self, param: Tensor, group: dict[str, Any]) -> None:
        if param.grad.is_sparse:
            self._sparse_step(param, group)
        else:
            self._dense_step(param, group)

    def _state(self, param: Tensor, per_row: bool) -> dict[str, Tensor]:
        state = self.state[param]
        if not state:
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            shape = (param.shape[0], 1) if per_row else ()
            state["step"] = torch.zeros(shape, dtype=torch.float32, device=param.device)
        return state

    def _sparse_step(self, param: Tensor, group: dict[str, Any]) -> None:
        state = self._state(param, per_row=True)
        beta1, beta2 = group["betas"]
        lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
        grad = param.grad.coalesce()
        rows, grad = grad.indices()[0], grad.values().reshape(-1, *param.shape[1:])
        if decay and not group["decoupled_weight_decay"]:
            grad = grad.add(param.index_select(0, rows), alpha=decay)
        step = state["step"].index_select(0, rows).add_(1.0).view(-1, *([1] * (param.dim() - 1)))
        exp_avg = state["exp_avg"].index_select(0, rows).lerp_(grad, 1.0 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        # Adam's bias corrections with each row's own step count.
        step_size = lr / (1.0 - torch.pow(beta1, step))
        denom = (exp_avg_sq / (1.0 - torch.pow(beta2, step))).sqrt_().add_(eps)
        update = exp_avg.div(denom).mul_(step_size)
        if decay and group["decoupled_weight_decay"]:
            update.add_(param.index_select(0, rows), alpha=lr * decay)
        param.index_add_(0, rows, update, alpha=-1.0)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        state["step"].index_copy_(0, rows, step.view(-1, 1))

    def _dense_step(self, param: Tensor, group: dict[str, Any]) -> None:
        state = self._state(param, per_row=False)
        if state["step"].dim() != 0:
            raise RuntimeError("RowAdam: a parameter switched from sparse to dense gradients")
        beta1, beta2 = group["betas"]
        lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
        grad = param.grad
        if decay:
            if group["decoupled_weight_decay"]:
                param.mul_(1.0 - lr * decay)
            else:
                grad = grad.add(param, alpha=decay)
        state["step"] += 1.0
        step = state["step"]
        state["exp_avg"].lerp_(grad, 1.0 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = (state["exp_avg_sq"] / (1.0 - torch.pow(beta2, step))).sqrt_().add_(eps)
        # Tensor step sizes keep the step count on the device: no host sync.
        param.sub_(state["exp_avg"].div(denom).mul_(lr / (1.0 - torch.pow(beta1, step))))


class RowAdagrad(RowWiseOptimizer):
    """Row-wise Adagrad: one accumulator per embedding row, no sort, a few passes per batch.

    The accumulator of a row grows by the mean square (over the row) of each gradient
    occurrence of the row, and the row moves by `lr * grad / sqrt(accumulator)`. Occurrences
    of a row within a batch are not summed first (which would need a sort): each adds to the
    accumulator, and the update uses the accumulator after all of them. This is the
    embedding-table optimizer of large recommender systems (FBGEMM's row-wise Adagrad); it keeps
    one float per row instead of Adam's two copies of every table. Dense gradients get plain
    elementwise Adagrad.

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate. Invariant to the loss scale, so it does not depend on the batch size
            the way SGD's does.
        eps: Added to the denominator for numerical stability.
        initial_accumulator_value: Starting value of every accumulator; larger values shrink
            the first steps.
        weight_decay: L2 coefficient added to the gradient; for sparse gradients only the rows
            touched (once per occurrence) are decayed.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.05,
        eps: float = 1e-10,
        initial_accumulator_value: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        check_hyperparameters("RowAdagrad", lr, eps, weight_decay, initial_accumulator_value)
        defaults = dict(lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _update(self, param: Tensor, group: dict[str, Any]) -> None:
        state = self.state[param]
        sparse = param.grad.is_sparse
        if not state:
            shape = param.shape[:1] if sparse else param.shape
            state["sum"] = torch.full(shape, group["initial_accumulator_value"], dtype=param.dtype,
                                      device=param.device)
        if sparse:
            self._sparse_step(param, state["sum"], group)
        else:
            self._dense_step(param, state["sum"], group)

    @staticmethod
    def _sparse_step(param: Tensor, accumulator: Tensor, group: dict[str, Any]) -> None:
        if accumulator.shape != param.shape[:1]:
            raise RuntimeError("RowAdagrad: a parameter switched from dense to sparse gradients")
        grad = param.grad
        # _indices/_values read an uncoalesced gradient as is: duplicates are handled by index_add.
        rows, values = grad._indices()[0], grad._values()
        values = values.reshape(values.shape[0], -1)
        if group["weight_decay"]:
            values = values.add(param.index_select(0, rows).view_as(values), alpha=group["weight_decay"])
        # One read pass for the mean square, no temporary of the gradient's size.
        square = torch.linalg.vector_norm(values, dim=1).square_().div_(values.shape[1])
        # Scaled in place: the gradient is consumed by this step.
        row_adagrad_step(param.view(param.shape[0], -1), accumulator, rows, square,
                         lambda factor: values.mul_(factor.unsqueeze(1)), group["lr"], group["eps"])

    @staticmethod
    def _dense_step(param: Tensor, accumulator: Tensor, group: dict[str, Any]) -> None:
        if accumulator.shape != param.shape:
            raise RuntimeError("RowAdagrad: a parameter switched from sparse to dense gradients")
        grad = param.grad
        if group["weight_decay"]:
            grad = grad.add(param, alpha=group["weight_decay"])
        accumulator.addcmul_(grad, grad)
        param.addcdiv_(grad, accumulator.sqrt().add_(group["eps"]), value=-group["lr"])
