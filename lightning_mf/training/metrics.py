"""Ranking quality of rating predictions: NDCG@k and Recall@k over each user's held-out items.

The scoring itself is torchmetrics' (`RetrievalNormalizedDCG`, `RetrievalRecall`, users without
a relevant item skipped). What this module adds is bounded memory: torchmetrics' retrieval
classes keep every prediction until `compute`, which at 25M scale means millions of rows. Each
eval batch holds whole users (the split files are sorted by user and the DataModule cuts batches
on user boundaries), so every batch is scored on its own as a chunk and only three sums are kept;
they reduce by sum under DDP.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.retrieval import RetrievalNormalizedDCG, RetrievalRecall


def _total(values: Tensor, dim: int | None = None) -> Tensor:
    """torchmetrics aggregation that sums per-user values instead of averaging them."""
    return values.sum() if dim is None else values.sum(dim)


class RankingMetrics(Metric):
    """NDCG@k and Recall@k averaged over users with at least one relevant held-out item.

    Relevant means `rating >= relevance_threshold` (see `RatingScale.relevance_threshold`).
    `compute` returns `{"ndcg": ..., "recall": ...}`, both 0 when no user had a relevant item.

    Args:
        relevance_threshold: Rating from which a held-out item counts as relevant.
        top_k: Cut-off of the ranking.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, relevance_threshold: float, top_k: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        if not (isinstance(top_k, int) and top_k > 0):
            raise ValueError(f"RankingMetrics: top_k must be a positive integer, got {top_k!r}")
        self.relevance_threshold = float(relevance_threshold)
        self.top_k = top_k
        # Per-chunk scorers: never synced across ranks (a chunk is one rank's), reset after each use.
        chunk_options = {"top_k": top_k, "empty_target_action": "skip", "aggregation": _total, "sync_on_compute": False}
        self._chunk_ndcg = RetrievalNormalizedDCG(**chunk_options)
        self._chunk_recall = RetrievalRecall(**chunk_options)
        self.add_state("ndcg_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("recall_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("users", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, user: Tensor, score: Tensor, rating: Tensor) -> None:
        """Add a chunk holding whole users: their predicted scores and true ratings."""
        relevant = rating >= self.relevance_threshold
        for scorer, total in ((self._chunk_ndcg, "ndcg_sum"), (self._chunk_recall, "recall_sum")):
            scorer.update(score, relevant, indexes=user.long())
            setattr(self, total, getattr(self, total) + scorer.compute().double())
            scorer.reset()
        self.users += torch.unique(user[relevant]).numel()

    def compute(self) -> dict[str, Tensor]:
        users = self.users.clamp(min=1).double()
        return {"ndcg": (self.ndcg_sum / users).float(), "recall": (self.recall_sum / users).float()}
