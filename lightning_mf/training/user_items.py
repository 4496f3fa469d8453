"""Each user's set of items (the items rated in training, say) in CSR form, for masking score blocks.

Ranking every item for a block of users must leave out what each user already rated. With the
pairs grouped by user once (`indptr` into `items`), a block's entries are found with a few bulk
ops (no per-user Python), and `mask` writes -inf over them in one indexed assignment. Items are
kept as int32: 24M training ratings cost 96 MB.
"""

from __future__ import annotations

import torch
from torch import Tensor


class UserItems:
    """Items per user as CSR: `items[indptr[u]:indptr[u + 1]]` are user u's.

    Args:
        indptr: `(num_users + 1,)` int64 row starts.
        items: `(nnz,)` int32 item indices, grouped by user.
    """

    def __init__(self, indptr: Tensor, items: Tensor) -> None:
        if indptr.dim() != 1 or indptr.numel() < 1 or int(indptr[-1]) != items.numel():
            raise ValueError(f"UserItems: indptr must be 1-D and end at len(items)={items.numel()}")
        self.indptr, self.items = indptr.long(), items.int()

    @classmethod
    def from_pairs(cls, user: Tensor, item: Tensor, num_users: int) -> UserItems:
        """Group (user, item) pairs by user; users at or above `num_users` are an error."""
        user = user.long()
        if user.numel() and (int(user.min()) < 0 or int(user.max()) >= num_users):
            raise ValueError(f"UserItems: user indices must lie in [0, {num_users}), got "
                             f"[{int(user.min())}, {int(user.max())}]")
        order = torch.argsort(user, stable=True)
        counts = torch.bincount(user, minlength=num_users)
        indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return cls(indptr, item[order].int())

    @classmethod
    def empty(cls, num_users: int, device: torch.device | str = "cpu") -> UserItems:
        return cls(torch.zeros(num_users + 1, dtype=torch.int64, device=device),
                   torch.zeros(0, dtype=torch.int32, device=device))

    @property
    def num_users(self) -> int:
        return self.indptr.numel() - 1

    def to(self, device: torch.device | str) -> UserItems:
        return UserItems(self.indptr.to(device), self.items.to(device))

    def counts(self, users: Tensor) -> Tensor:
        """Number of items of each user index (0 for indices outside the table, e.g. unknown ids)."""
        users = users.to(self.indptr.device, torch.int64)
        inside = (users >= 0) & (users < self.num_users)
        safe = torch.where(inside, users, 0)
        return torch.where(inside, self.indptr[safe + 1] - self.indptr[safe], 0)

    def entries(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """Every (row in `users`, item) entry of a block of users, as two int64 tensors."""
        users = users.to(self.indptr.device, torch.int64)
        length = self.counts(users)
        start = self.indptr[torch.where(length > 0, users, 0)]
        rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), length)
        row_start = torch.cat([length.new_zeros(1), length.cumsum(0)])
        # Position of each entry inside `items`: its row's start plus its rank within the row.
        position = torch.repeat_interleave(start - row_start[:-1], length)
        position += torch.arange(position.numel(), device=position.device)
        return rows, self.items[position].long()

    def mask(self, scores: Tensor, users: Tensor) -> Tensor:
        """Sets `scores[r, i] = -inf` for every item i of user `users[r]` (in place); returns `scores`."""
        rows, items = self.entries(users)
        scores[rows.to(scores.device), items.to(scores.device)] = float("-inf")
        return scores
