"""The closed-form ridge solve behind fold-in: one row's factors and bias against fixed factors.

For a new user with ratings r_j of items j (or a new item rated by users j), with the other side
fixed, the model's training objective restricted to that row is, per ensemble copy c,

    sum_j (r_j - offset - b_j - t . x_j - (b + p . x_j))^2 + l2 * n^a |p|^2 + l2_bias * n^a' b^2

where x_j are the fixed factors, b_j the fixed biases, t the SVD++ term (users only, fixed given
the items rated), n the row's number of ratings and a, a' the count powers: the per-rating penalty
`l2 * w |p|^2` with `w = n^(a-1)`, paid once per rating, sums to `l2 * n^a |p|^2`. Under
`loss_reduction="mean"` the batch's 1/B multiplies the error and the penalty alike, so the
minimiser is the same as under `sum`. Copies are trained on their own errors, so each copy is its
own solve. The minimiser solves (X^T X + diag(lambda)) theta = X^T y, built here for many rows at
once in float64, in chunks that bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_CHUNK_BYTES = 64 * 1024 * 1024  # per chunk of Gram matrices, and of per-rating outer products


@dataclass(frozen=True)
class RidgePenalty:
    """The model's per-rating penalty, as fold-in needs it.

    Attributes:
        l2: Factor penalty `l2`.
        l2_bias: Bias penalty `l2_bias`.
        factor_power: `l2_count_power` (a): the factor row's penalty weight is n^(a-1).
        bias_power: `l2_bias_count_power`.
        use_bias: The model has biases (else only factors are solved).
    """

    l2: float
    l2_bias: float
    factor_power: float = 1.0
    bias_power: float = 1.0
    use_bias: bool = True


def solve_rows(fixed: Tensor, target: Tensor, group: Tensor, num_groups: int, penalty: RidgePenalty) -> tuple[Tensor, Tensor]:
    """Ridge solutions of `num_groups` rows from their ratings.

    Args:
        fixed: `(m, copies, dim)` fixed factors of the other side, one per rating.
        target: `(m, copies)` the rating less everything fixed (offset, fixed bias, SVD++ term).
        group: `(m,)` which row (0 .. num_groups - 1) each rating belongs to; every row has one.
        num_groups: Number of rows solved.
        penalty: The model's penalty.

    Returns:
        Factors `(num_groups, copies, dim)` and biases `(num_groups, copies)` (zeros without
        biases), as float32 on `fixed`'s device.
    """
    m, copies, dim = fixed.shape
    width = dim + int(penalty.use_bias)
    order = torch.argsort(group, stable=True)
    fixed, target, group = fixed[order], target[order], group[order].long()
    counts = torch.bincount(group, minlength=num_groups)
    if bool((counts == 0).any()):
        raise ValueError("solve_rows: every row needs at least one rating")
    starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).tolist()
    n = counts.double()
    diagonal = torch.cat([(penalty.l2 * n.pow(penalty.factor_power))[:, None].expand(-1, dim),
                          (penalty.l2_bias * n.pow(penalty.bias_power))[:, None].expand(-1, width - dim)], dim=1)
    factors = fixed.new_zeros(num_groups, copies, dim)
    bias = fixed.new_zeros(num_groups, copies)
    block = max(1, _CHUNK_BYTES // (width * width * 8))
    for first in range(0, num_groups, block):
        last = min(first + block, num_groups)
        rows = slice(starts[first], starts[last])
        local = group[rows] - first
        for c in range(copies):
            x = fixed[rows, c].double()
            if penalty.use_bias:
                x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
            gram = x.new_zeros(last - first, width, width)
            for start in range(0, x.shape[0], block):  # per-rating outer products, a chunk at a time
                piece = x[start : start + block]
                gram.index_add_(0, local[start : start + block], piece[:, :, None] * piece[:, None, :])
            rhs = x.new_zeros(last - first, width).index_add_(0, local, x * target[rows, c].double()[:, None])
            system = gram + torch.diag_embed(diagonal[first:last])
            if penalty.l2 > 0:  # positive definite: X^T X + diag(lambda) with lambda_p > 0 and n >= 1
                theta = torch.linalg.solve(system, rhs)
            else:  # no factor penalty: the minimum-norm least-squares solution
                theta = (torch.linalg.pinv(system, hermitian=True) @ rhs[:, :, None]).squeeze(-1)
            factors[first:last, c] = theta[:, :dim].to(factors.dtype)
            if penalty.use_bias:
                bias[first:last, c] = theta[:, dim].to(bias.dtype)
    return factors, bias
