"""Top-K items per user: a blocked matrix product against every item, masked, then `torch.topk`.

Memory is bounded by the block: `block_bytes` of scores (users x items) at a time, so ML-25M's
162,541 users x 59,047 items never hold more than one block of 256 MB (about 1,100 users) beside
the tables. Items a user already rated (any number of `UserItems` sets: training, val, test,
fold-in) and items that are not candidates (never trained) get -inf before the top K are taken.
Ranking is by the unclipped score; the score reported is the clipped prediction, the number
`predict` gives for the pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_mf.training.dense_tables import DenseTables
from lightning_mf.training.user_items import UserItems

DEFAULT_BLOCK_BYTES = 256 * 1024 * 1024


def block_users(num_items: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Users per block so one block of float32 scores takes at most `block_bytes` (at least 1)."""
    return max(1, block_bytes // (4 * max(num_items, 1)))


def top_items(
    tables: DenseTables,
    factors: Tensor,
    bias: Tensor,
    k: int,
    exclude: Sequence[tuple[UserItems, Tensor]] = (),
    candidates: Tensor | None = None,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The top `k` items of one block of users given by their factors and biases.

    Args:
        tables: The model's tables.
        factors: `(B, copies, dim)` user factors (`tables.user_rows`, or folded in).
        bias: `(B, copies)` user biases.
        k: Items per user (at most the number of items).
        exclude: `(items per user, each block row's index into that table)` pairs; those items are
            left out. A negative index has no items there.
        candidates: `(num_items,)` bool: items that may be recommended; None: all.
        out: A `(B, num_items)` float32 buffer for the scores (see `DenseTables.score_all_items`).

    Returns:
        Item indices `(B, k)` and clipped predictions `(B, k)`, on the CPU; where a user has fewer
        than k candidates the rest is item -1 with a NaN score.
    """
    scores = tables.score_all_items(factors, bias, out=out)
    if candidates is not None:
        scores.masked_fill_(~candidates.to(scores.device)[None, :], float("-inf"))
    for items, rows in exclude:
        items.mask(scores, rows)
    values, index = scores.topk(min(k, tables.num_items), dim=1)
    valid = torch.isfinite(values)
    index = torch.where(valid, index, -1)
    values = torch.where(valid, tables.clip(values), float("nan"))
    return index.cpu(), values.cpu()


def top_items_of_users(
    tables: DenseTables,
    users: Tensor,
    k: int,
    exclude: Sequence[UserItems] = (),
    candidates: Tensor | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[Tensor, Tensor]:
    """`top_items` for user indices (negative: unknown, the fallback ranking), block by block."""
    block = block_users(tables.num_items, block_bytes)
    if candidates is not None and bool(candidates.all()):
        candidates = None  # every item may be recommended: skip a pass over each block
    found, scores = [], []
    buffer = torch.empty(min(block, users.numel()), tables.num_items, device=tables.device)
    for start in range(0, users.numel(), block):
        rows = users[start : start + block].to(tables.device)
        factors, bias = tables.user_rows(rows)
        index, value = top_items(tables, factors, bias, k, [(items, rows) for items in exclude], candidates,
                                 out=buffer[: rows.numel()])
        found.append(index)
        scores.append(value)
    if not found:
        width = min(k, tables.num_items)
        return torch.zeros(0, width, dtype=torch.int64), torch.zeros(0, width)
    return torch.cat(found), torch.cat(scores)
