"""The arithmetic of one `FusedRowAdagrad` step: biased MF's gradients in closed form.

For a rating b of user u and item i, with `n` the loss's weight of a squared error (2/B for a
mean over the batch, 2 for a sum) and `c` a row's penalty coefficient (`n * l2 * w + weight_decay`),

    d_b = n * e_b [* dprediction/draw]
    g(p_u) = d_b q_i + c_u p_u,        g(q_i) = d_b p_u + c_i q_i,        g(b_u) = d_b + c b_u
    |g(p_u)|^2 = d_b^2 |q_i|^2 + 2 d_b c_u (p_u . q_i) + c_u^2 |p_u|^2,

so the row-wise Adagrad accumulators grow by numbers the forward pass computes anyway (per rating
|p|^2, p . q and |q|^2: one batched 2x2 Gram product on CPU) and each table's update is built from
the looked-up rows in two passes, never as an autograd gradient. `forward_part` fills a step's
buffers for a slice of the batch; `factor_table_update` and `bias_table_update` apply
`row_adagrad.row_adagrad_step` to one table, eagerly or compiled (`fused_kernels`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lightning_mf.training.model import MatrixFactorization
from lightning_mf.training.row_adagrad import row_adagrad_step

# Per-rating vectors of a step, in the rows of `StepInputs.vectors`.
VECTORS = ("user_bias", "item_bias", "error", "d", "d_square", "d_dot")


class StepInputs(NamedTuple):
    """A step's batch, its loss and penalty coefficients, and the kept buffers `forward_part` fills."""

    model: MatrixFactorization
    user: Tensor
    item: Tensor
    rating: Tensor
    loss_weight: float  # n: d loss / d (squared error) of one rating
    user_penalty: Tensor | float  # c_u, per rating or for all
    item_penalty: Tensor | float  # c_i
    rows: Tensor  # (2, B, D): the batch's user rows, then its item rows
    gram: Tensor  # (B, 2, 2): per rating |p|^2, p . q, |q|^2
    vectors: Tensor  # (len(VECTORS), B)

    @property
    def penalized(self) -> bool:
        return is_nonzero(self.user_penalty) or is_nonzero(self.item_penalty)


@torch.no_grad()  # grad mode is per thread: the worker thread needs it off too (out= requires it)
def forward_part(step: StepInputs, part: slice) -> None:
    """Rows, Gram products, biases, errors and derivatives of the ratings `part`, into `step`'s buffers."""
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
    user_bias, item_bias, error, d, d_square, d_dot = step.vectors[:, part]
    dot = gram[:, 0, 1]
    raw = torch.add(dot, model.offset, out=error)
    if model.user_bias is not None and model.item_bias is not None:
        torch.index_select(model.user_bias.weight.view(-1), 0, user, out=user_bias)
        torch.index_select(model.item_bias.weight.view(-1), 0, item, out=item_bias)
        raw.add_(user_bias).add_(item_bias)
    if model.output == "sigmoid":
        span = model.rating_max - model.rating_min
        prediction = torch.sigmoid(raw).mul_(span).add_(model.rating_min)
        torch.sub(prediction, step.rating[part], out=error)
        slope = (prediction - model.rating_min).mul_(model.rating_max - prediction)
        torch.mul(error, slope, out=d).mul_(step.loss_weight / span)
    else:
        torch.mul(raw.sub_(step.rating[part]), step.loss_weight, out=d)
    torch.square(d, out=d_square)
    if step.penalized:
        torch.mul(d, dot, out=d_dot)


def gradient_mean_square(d_square: Tensor, other_sq: Tensor, d_dot: Tensor | None, c: Tensor | float | None,
                         own_sq: Tensor, width: int) -> Tensor:
    """Per rating, `|d * other + c * own|^2 / width` from the Gram products (the module's formula)."""
    square = d_square * other_sq
    if c is not None and d_dot is not None:
        square = square + 2.0 * c * d_dot + c * c * own_sq
    return square / width


def factor_table_update(
    table: Tensor,
    accumulator: Tensor,
    rows: Tensor,
    own: Tensor,
    other: Tensor,
    d: Tensor,
    c: Tensor | float | None,
    d_square: Tensor,
    d_dot: Tensor | None,
    other_sq: Tensor,
    own_sq: Tensor,
    lr: float | Tensor,
    eps: float,
    out: Tensor | None = None,
) -> None:
    """Row-wise Adagrad on a factor table: each rating's row `own` moves along `d * other + c * own`.

    `c` is None without a penalty (`d_dot` is then unused). `out`, a `(B, D)` buffer, holds the
    update when given (eagerly: no allocation per step); without it the update is an expression,
    which the compiled kernel fuses into its scatter.
    """

    def scaled_update(factor: Tensor) -> Tensor:
        if out is None:
            update = (factor * d).unsqueeze(1) * other
            return update if c is None else update + (factor * c).unsqueeze(1) * own
        torch.mul(other, (factor * d).unsqueeze(1), out=out)
        return out if c is None else out.addcmul_(own, (factor * c).unsqueeze(1))

    mean_square = gradient_mean_square(d_square, other_sq, d_dot, c, own_sq, table.shape[1])
    row_adagrad_step(table, accumulator, rows, mean_square, scaled_update, lr, eps)


def bias_table_update(table: Tensor, accumulator: Tensor, rows: Tensor, looked_up: Tensor, d: Tensor,
                      c: float, lr: float | Tensor, eps: float) -> None:
    """Row-wise Adagrad on a 1-D bias table: gradient `d + c * b` per rating."""
    grad = d + c * looked_up if c else d
    row_adagrad_step(table, accumulator, rows, grad * grad, lambda factor: factor * grad, lr, eps)


def is_nonzero(c: Tensor | float) -> bool:
    """Whether a penalty coefficient is on; a tensor comes from row weights with l2 > 0 (no sync)."""
    return isinstance(c, Tensor) or c != 0.0
