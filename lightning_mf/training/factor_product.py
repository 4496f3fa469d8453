"""`FactorProduct`: the dot product of factor rows and, if asked, their weighted squared norms, with
a fused backward (the model's hot path when there is no dropout or SVD++ term)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class FactorProduct(torch.autograd.Function):
    """`sum(p * q)` and, if asked, `w_p |p|^2 + w_q |q|^2` over the last dim, with a fused backward.

    Autograd would build the penalty's gradient and the product's separately and add them: three
    extra passes over batch-sized tensors. Here each factor's gradient is one multiply plus one
    in-place multiply-add, which matters on the memory-bound sparse path.
    """

    @staticmethod
    def forward(
        ctx: Any, p: Tensor, q: Tensor, with_sq: bool, p_weight: Tensor | None, q_weight: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(p, q)
        ctx.weights = (p_weight, q_weight)
        if p.device.type == "cpu":
            # On CPU a batched 1 x d by d x 1 product reads p and q once, with no temporary (a
            # third faster); autocast off keeps it in the factors' precision like the sum below.
            with torch.autocast("cpu", enabled=False):
                dot = torch.bmm(p.reshape(-1, 1, p.shape[-1]), q.reshape(-1, q.shape[-1], 1)).view(p.shape[:-1])
        else:
            dot = (p * q).sum(-1)
        if not with_sq:
            return dot, None
        p_sq = torch.linalg.vector_norm(p, dim=-1).square_()
        q_sq = torch.linalg.vector_norm(q, dim=-1).square_()
        return dot, weighted(p_sq, p_weight) + weighted(q_sq, q_weight)

    @staticmethod
    def backward(
        ctx: Any, grad_dot: Tensor | None, grad_sq: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        p, q = ctx.saved_tensors
        grad_p = grad_q = None
        if grad_dot is not None:
            grad_p, grad_q = q * grad_dot.unsqueeze(-1), p * grad_dot.unsqueeze(-1)
        if grad_sq is not None:
            p_weight, q_weight = ctx.weights
            twice_p = 2.0 * weighted(grad_sq, p_weight).unsqueeze(-1)
            twice_q = 2.0 * weighted(grad_sq, q_weight).unsqueeze(-1)
            grad_p = p * twice_p if grad_p is None else grad_p.addcmul_(p, twice_p)
            grad_q = q * twice_q if grad_q is None else grad_q.addcmul_(q, twice_q)
        return grad_p, grad_q, None, None, None


def weighted(values: Tensor, weight: Tensor | None) -> Tensor:
    """`values` `(batch, copies)` times a per-rating weight `(batch,)`, if there is one."""
    return values if weight is None else values * weight.unsqueeze(1)
