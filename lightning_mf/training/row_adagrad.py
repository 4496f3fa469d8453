"""The row-wise Adagrad step, written once for every optimizer that applies it.

`RowAdagrad` (autograd's sparse gradients), `FusedRowAdagrad`'s eager step and its compiled kernels
(`fused_kernels`, which compile this very function into their loops) all update a table through
`row_adagrad_step`, so the three cannot drift apart. The rule is FBGEMM's row-wise Adagrad, the
embedding-table optimizer of large recommender systems: one accumulator per row; each occurrence
of a row in a batch adds the mean square (over the row's entries) of its gradient to it, and
after all of them every occurrence moves its row by `-lr * g / (sqrt(accumulator) + eps)`.
Occurrences are not summed first (that would need a sort).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def row_adagrad_step(
    table: Tensor,
    accumulator: Tensor,
    rows: Tensor,
    mean_square: Tensor,
    scaled_update: Callable[[Tensor], Tensor],
    lr: float | Tensor,
    eps: float,
    add_rows: Callable[[Tensor, Tensor, Tensor], None] | None = None,
) -> None:
    """One row-wise Adagrad step on the `rows` of `table` (rows may repeat).

    Args:
        table: The parameter, `(num_rows, ...)`; 1-D for a bias table.
        accumulator: Its accumulators, `(num_rows,)`, grown in place.
        rows: The row of every gradient occurrence, `(occurrences,)`.
        mean_square: Each occurrence's gradient, squared and averaged over the row's entries.
        scaled_update: Given each occurrence's step factor `-lr / (sqrt(acc) + eps)`, returns the
            occurrences' gradients times their factors: the rows to add, `(occurrences, ...)`.
            The caller builds the gradient however suits it (autograd's values, or in closed form).
        lr: Learning rate (a tensor keeps a compiled kernel valid when the schedule changes it).
        eps: Added to the denominator for numerical stability.
        add_rows: How the scaled rows are added into the table (`table, rows, updates`); unset:
            `index_add_` (a bfloat16 table rounds its writes stochastically: `low_precision`).
    """
    accumulator.index_add_(0, rows, mean_square)
    factor = -lr / (accumulator.index_select(0, rows).sqrt() + eps)
    if add_rows is None:
        table.index_add_(0, rows, scaled_update(factor))
    else:
        add_rows(table, rows, scaled_update(factor))
