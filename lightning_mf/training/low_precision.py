"""Tables stored in bfloat16 on the fast path: float32 arithmetic, stochastically rounded writes.

With `--trainer.precision bf16-true` Lightning stores the model's tables in bfloat16, which halves
the bytes every gather and scatter of a step moves. A bfloat16 row keeps 8 bits of mantissa, so an
update smaller than half a unit in the last place would round away every time and a row would
stop learning. Here the step reads rows into float32, computes in float32 (the row accumulators
stay float32 too), and writes each changed row back once, rounded up or down at random with the
probabilities that make the stored value right on average (stochastic rounding). A row repeated in
a batch is summed first, so it is rounded once per step. The rounding draws from the optimizer's own
generator: the same on every rank (DDP ranks must write the same bits) and saved in checkpoints.
"""

from __future__ import annotations

import torch
from torch import Tensor

_LOW_BITS = 16  # bfloat16 is float32's upper 16 bits


def is_low_precision(table: Tensor) -> bool:
    return table.dtype == torch.bfloat16


def stochastic_round(values: Tensor, generator: torch.Generator) -> Tensor:
    """float32 `values` as bfloat16, each rounded to one of its two neighbours with probability
    proportional to closeness: add a uniform 16-bit integer below the kept bits, then truncate."""
    bits = values.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << _LOW_BITS, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    rounded = (bits + noise) & -(1 << _LOW_BITS)
    return rounded.view(torch.float32).to(torch.bfloat16)


def gather_rows(table: Tensor, rows: Tensor, out: Tensor) -> None:
    """`table[rows]` into the float32 buffer `out`."""
    if table.dtype == out.dtype:
        torch.index_select(table, 0, rows, out=out)
    else:
        out.copy_(table.index_select(0, rows))


def add_rows(table: Tensor, rows: Tensor, updates: Tensor, generator: torch.Generator | None) -> None:
    """`table[rows] += updates` (rows may repeat): in place for float32, else summed per row in
    float32 and each row written back once, stochastically rounded."""
    if not is_low_precision(table):
        table.index_add_(0, rows, updates)
        return
    unique, inverse = torch.unique(rows, return_inverse=True)
    summed = torch.zeros((unique.numel(), *updates.shape[1:]), dtype=torch.float32, device=updates.device)
    summed.index_add_(0, inverse, updates.float())
    summed += table.index_select(0, unique).float()
    table.index_copy_(0, unique, stochastic_round(summed, generator))


def add_all(table: Tensor, updates: Tensor, generator: torch.Generator | None) -> None:
    """`table += updates` for a whole table (the dense DDP exchange, SVD++ refreshes)."""
    if not is_low_precision(table):
        table.add_(updates)
        return
    table.copy_(stochastic_round(table.float() + updates, generator))
