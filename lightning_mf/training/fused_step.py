"""The arithmetic of one fused step: biased MF's gradients in closed form, optionally with SVD++.

For a rating b of user u and item i, with `n` the loss's weight of a squared error (2/B for a
mean over the batch, 2 for a sum), c a row's penalty coefficient (`n * l2 * w + weight_decay`) and
z_u the user's SVD++ term (zero without it),

    d_b = n * e_b [* dprediction/draw]
    g(p_u) = d_b q_i + c_u p_u,          g(q_i) = d_b (p_u + z_u) + c_i q_i,
    g(b_u) = d_b + c'_u b_u,             g(z_u) = d_b q_i + c_z z_u,
    |g(p_u)|^2 = d_b^2 |q_i|^2 + 2 d_b c_u (p_u . q_i) + c_u^2 |p_u|^2   (and alike for q_i),

so the row-wise Adagrad accumulators grow by numbers the forward pass computes anyway (the Gram
products of p, q [and z]: one batched matrix product on CPU) and each table's update is built from
the looked-up rows in two passes, never as an autograd gradient. `forward_part` fills a step's
buffers for a slice of the batch; `factor_table_update` and `bias_table_update` apply one table's
update, eagerly or compiled (`fused_kernels`), with the optimizer's rule: row-wise Adagrad
(`row_adagrad.row_adagrad_step`) or plain SGD.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from lightning_mf.training.low_precision import gather_rows
from lightning_mf.training.model import MatrixFactorization
from lightning_mf.training.native_kernels import NativeStages
from lightning_mf.training.row_adagrad import row_adagrad_step

AddRows = Callable[[Tensor, Tensor, Tensor], None]

Rule = Literal["adagrad", "sgd", "collect"]  # collect: sum into dense buffers (DDP, `fused_tables`)
# Per-rating vectors of a step, in the rows of `StepInputs.vectors`. `g` is the derivative of the
# rating's squared error by its raw score, without the loss weight n: `d = n * g`.
VECTORS = ("user_bias", "item_bias", "error", "g", "d", "d_square", "d_dot_user", "d_dot_item")
# Rows of `StepInputs.rows`: the batch's user factors, item factors and (with SVD++) user terms.
P, Q, Z = 0, 1, 2


class Penalties(NamedTuple):
    """Each table's penalty coefficient c of a step, per rating or one for all (0: none)."""

    user_factor: Tensor | float
    item_factor: Tensor | float
    user_bias: Tensor | float
    item_bias: Tensor | float
    implicit: float


class StepInputs(NamedTuple):
    """A step's batch, its loss weight and penalties, and the kept buffers `forward_part` fills."""

    model: MatrixFactorization
    user: Tensor
    item: Tensor
    rating: Tensor | None  # None where the derivatives come from elsewhere (another rank's forward)
    loss_weight: float  # n: d loss / d (squared error) of one rating
    penalties: Penalties
    rows: Tensor  # (2 or 3, B, D): p, q [, z]
    gram: Tensor  # (B, 2 or 3, 2 or 3): their dot products per rating
    vectors: Tensor  # (len(VECTORS), B)
    implicit_table: Tensor | None  # the lagged SVD++ user terms z, (num_users, D), or None
    native: NativeStages | None = None  # the C loops, where the step runs them (CPU, float32 tables)

    @property
    def penalized(self) -> bool:
        p = self.penalties
        return is_nonzero(p.user_factor) or is_nonzero(p.item_factor)

    def vector(self, name: str) -> Tensor:
        return self.vectors[VECTORS.index(name)]


@torch.no_grad()  # grad mode is per thread: the worker thread needs it off too (out= requires it)
def forward_part(step: StepInputs, part: slice) -> None:
    """Rows, Gram products and biases of the ratings `part`, into `step`'s buffers; with ratings,
    also their errors, `g` and `d`; then the derivative products the updates need."""
    model, user, item = step.model, step.user[part], step.item[part]
    rows, gram = step.rows[:, part], step.gram[part]
    tables = [model.user_factors.weight, model.item_factors.weight]
    if step.implicit_table is not None:
        tables.append(step.implicit_table)
    if step.native is not None and all(table.dtype == torch.float32 for table in tables):
        # One loop gathers the rows and takes their dot products while they are in cache.
        step.native.gather_gram([table.detach() for table in tables], [user, item, user][: len(tables)],
                                list(rows.unbind(0)), gram)
    else:
        _gather_and_multiply(tables, user, item, rows, gram)
    vectors = step.vectors[:, part]
    user_bias, item_bias, error, g, d = (vectors[VECTORS.index(name)] for name in VECTORS[:5])
    if model.user_bias is not None and model.item_bias is not None:
        gather_rows(model.user_bias.weight.view(-1), user, user_bias)
        gather_rows(model.item_bias.weight.view(-1), item, item_bias)
    if step.rating is not None:
        _errors(step, gram, user_bias, item_bias, step.rating[part], error, g)
        torch.mul(g, step.loss_weight, out=d)
    _derivative_products(step, gram, vectors)


def _gather_and_multiply(tables: list[Tensor], user: Tensor, item: Tensor, rows: Tensor, gram: Tensor) -> None:
    """The rows of the batch (p, q [, z]) into `rows` and their dot products into `gram`, with torch kernels."""
    for index, (table, looked_up) in enumerate(zip(tables, [user, item, user])):
        gather_rows(table, looked_up, rows[index])
    if rows.device.type == "cpu":
        # The rows side by side ((B, R, D), a strided view of the blocks) make all their dot
        # products one batched matrix product: a single read of the rows instead of several.
        stacked = rows.permute(1, 0, 2)
        torch.bmm(stacked, stacked.transpose(1, 2), out=gram)
    else:
        for a in range(rows.shape[0]):
            for b in range(a, rows.shape[0]):
                gram[:, a, b] = (rows[a] * rows[b]).sum(1)
                gram[:, b, a] = gram[:, a, b]


def _errors(step: StepInputs, gram: Tensor, user_bias: Tensor, item_bias: Tensor, rating: Tensor, error: Tensor,
            g: Tensor) -> None:
    """Each rating's error (prediction - rating) and `g`, its derivative by the raw score."""
    model = step.model
    unit = model.rating_unit if model.output == "linear" else 1.0
    if unit == 1.0:
        raw = torch.add(gram[:, P, Q], model.offset, out=error)
    else:  # the score is in rating units of `unit`: prediction = offset + unit * score
        raw = error.copy_(gram[:, P, Q])
    if step.implicit_table is not None:
        raw.add_(gram[:, Z, Q])
    if model.user_bias is not None and model.item_bias is not None:
        raw.add_(user_bias).add_(item_bias)
    if unit != 1.0:
        raw.mul_(unit).add_(model.offset)
    # The loss takes errors in the model's units: (e / unit)^2, so g = d(e / unit)^2 / 2 d(score).
    if model.output == "sigmoid":
        span = model.rating_max - model.rating_min
        prediction = torch.sigmoid(raw).mul_(span).add_(model.rating_min)
        torch.sub(prediction, rating, out=error)
        slope = (prediction - model.rating_min).mul_(model.rating_max - prediction)
        torch.mul(error, slope, out=g).div_(span * model.rating_unit**2)
    else:
        raw.sub_(rating)
        g.copy_(error) if unit == 1.0 else torch.div(error, unit, out=g)


def _derivative_products(step: StepInputs, gram: Tensor, vectors: Tensor) -> None:
    """d^2 and d times each side's cross product (p . q for the users, (p + z) . q for the items)."""
    d = vectors[VECTORS.index("d")]
    torch.square(d, out=vectors[VECTORS.index("d_square")])
    if not step.penalized:
        return
    torch.mul(d, gram[:, P, Q], out=vectors[VECTORS.index("d_dot_user")])
    item_dot = gram[:, P, Q] + gram[:, Z, Q] if step.implicit_table is not None else gram[:, P, Q]
    torch.mul(d, item_dot, out=vectors[VECTORS.index("d_dot_item")])


def gradient_mean_square(d_square: Tensor, other_sq: Tensor, d_dot: Tensor | None, c: Tensor | float | None,
                         own_sq: Tensor, width: int) -> Tensor:
    """Per rating, `|d * other + c * own|^2 / width` from the Gram products (the module's formula)."""
    square = d_square * other_sq
    if c is not None and d_dot is not None:
        square = square + 2.0 * c * d_dot + c * c * own_sq
    return square / width


def _apply(rule: Rule, table: Tensor, accumulator: Tensor | None, rows: Tensor, mean_square: Callable[[], Tensor],
           scaled_update: Callable[[Tensor | float], Tensor], lr: float | Tensor, eps: float,
           add_rows: AddRows | None = None) -> None:
    """One table's step by the optimizer's rule; SGD needs no mean squares and no accumulator. With
    `collect`, `table` and `accumulator` are dense buffers the ratings' gradients and mean squares
    are summed into instead."""
    if rule == "sgd":
        if add_rows is None:
            table.index_add_(0, rows, scaled_update(-lr))
        else:
            add_rows(table, rows, scaled_update(-lr))
    elif rule == "collect":
        table.index_add_(0, rows, scaled_update(1.0))
        if accumulator is not None:
            accumulator.index_add_(0, rows, mean_square())
    else:
        row_adagrad_step(table, accumulator, rows, mean_square(), scaled_update, lr, eps, add_rows)


def factor_table_update(
    table: Tensor,
    accumulator: Tensor | None,
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
    rule: Rule = "adagrad",
    out: Tensor | None = None,
    add_rows: AddRows | None = None,
) -> None:
    """A factor table's step: each rating's row `own` moves along `d * other + c * own`.

    `c` is None without a penalty (`d_dot` is then unused). `out`, a `(B, D)` buffer, holds the
    update when given (eagerly: no allocation per step); without it the update is an expression,
    which the compiled kernel fuses into its scatter. `add_rows` writes a low-precision table
    (`low_precision.add_rows`).
    """

    def scaled_update(factor: Tensor | float) -> Tensor:
        if out is None:
            update = _per_rating(factor * d) * other
            return update if c is None else update + _per_rating(factor * c) * own
        torch.mul(other, _per_rating(factor * d), out=out)
        if c is None:
            return out
        scale = _per_rating(factor * c)
        return out.addcmul_(own, scale) if isinstance(scale, Tensor) else out.add_(own, alpha=scale)

    def mean_square() -> Tensor:
        return gradient_mean_square(d_square, other_sq, d_dot, c, own_sq, table.shape[1])

    _apply(rule, table, accumulator, rows, mean_square, scaled_update, lr, eps, add_rows)


def bias_table_update(table: Tensor, accumulator: Tensor | None, rows: Tensor, looked_up: Tensor, d: Tensor,
                      c: Tensor | float | None, lr: float | Tensor, eps: float, rule: Rule = "adagrad",
                      add_rows: AddRows | None = None) -> None:
    """A 1-D bias table's step: gradient `d + c * b` per rating."""
    grad = d if c is None else d + c * looked_up
    _apply(rule, table, accumulator, rows, lambda: grad * grad, lambda factor: factor * grad, lr, eps, add_rows)


def _per_rating(value: Tensor | float) -> Tensor | float:
    """A per-rating vector as a column, to scale its rating's row; a scalar as it is."""
    return value.unsqueeze(1) if isinstance(value, Tensor) and value.dim() == 1 else value


def is_nonzero(c: Tensor | float) -> bool:
    """Whether a penalty coefficient is on; a tensor comes from row weights with l2 > 0 (no sync)."""
    return isinstance(c, Tensor) or c != 0.0
