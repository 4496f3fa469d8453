"""Full-catalog ranking metrics: each test user's top K among every item not rated in training.

`RankingMetrics` re-ranks a user's own held-out items only, so Recall@10 is trivially 1 for users
with 10 or fewer of them. Here every item the user did not rate in training is a candidate, as for
a real recommendation, and the top K are judged against the held-out items rated at or above the
relevance threshold:

    NDCG@K   = sum over hits at rank r of 1 / log2(r + 1), over the same sum for an ideal ranking
    Recall@K = hits / number of relevant held-out items
    Hit@K    = 1 if any hit

averaged over users with at least one relevant held-out item. The same metrics for a most-popular
baseline (items ranked by their number of training ratings, ties by index) come beside them.

Memory stays bounded at 25M scale: test batches hold whole users, and each batch is scored in
blocks of users against all items (`block_elements` scores at a time). Sums reduce across ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_mf.training.dense_tables import DenseTables
from lightning_mf.training.model import MatrixFactorization
from lightning_mf.training.user_items import UserItems

KINDS = ("full", "popular")  # the model ranking the full catalog; the most-popular baseline
NAMES = ("ndcg", "recall", "hit")


class CatalogRankingMetrics(Metric):
    """Full-catalog NDCG@K, Recall@K and Hit@K of the model and of the most-popular baseline.

    Call `start` with the model and the training pairs before the first `update`; until then (no
    training pairs to exclude, e.g. a test without a DataModule) `active` is False and nothing is
    computed. `compute` returns `{"full_ndcg": ..., "full_recall": ..., "full_hit": ...,
    "popular_ndcg": ...}`.

    Args:
        relevance_threshold: Rating from which a held-out item counts as relevant.
        top_k: Cut-off K.
        block_elements: Scores held at once per block of users (users x items); bounds memory.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, relevance_threshold: float, top_k: int = 10, block_elements: int = 1 << 24, **kwargs) -> None:
        super().__init__(**kwargs)
        if not (isinstance(top_k, int) and top_k > 0):
            raise ValueError(f"CatalogRankingMetrics: top_k must be a positive integer, got {top_k!r}")
        self.relevance_threshold, self.top_k, self.block_elements = float(relevance_threshold), top_k, block_elements
        for kind in KINDS:
            for name in NAMES:
                self.add_state(f"{kind}_{name}", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("users", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self._tables: DenseTables | None = None
        self._train: UserItems | None = None
        self._popular: Tensor | None = None

    @property
    def active(self) -> bool:
        return self._tables is not None

    def start(self, model: MatrixFactorization, train_user: Tensor, train_item: Tensor) -> None:
        """Take the model's tables and each user's training items (all training ratings' indices)."""
        device = model.user_seen.device
        self._tables = DenseTables.from_model(model)
        self._train = UserItems.from_pairs(train_user, train_item, model.num_users).to(device)
        counts = torch.bincount(train_item.long(), minlength=model.num_items).to(device)
        # Unique scores: descending count, then ascending index (a stable sort keeps index order).
        order = torch.argsort(-counts, stable=True)
        self._popular = torch.empty(model.num_items, device=device)
        self._popular[order] = torch.arange(model.num_items, 0, -1, device=device, dtype=torch.float32)

    def stop(self) -> None:
        """Drop the tables (they are rebuilt by the next `start`)."""
        self._tables = self._train = self._popular = None

    def update(self, user: Tensor, item: Tensor, rating: Tensor) -> None:
        """Add a batch of held-out ratings holding whole users."""
        if self._tables is None:
            raise RuntimeError("CatalogRankingMetrics.update before start(model, train_user, train_item)")
        relevant = rating >= self.relevance_threshold
        if not bool(relevant.any()):
            return
        users, row = torch.unique(user[relevant].long(), return_inverse=True)
        items = item[relevant].long()
        num_items = self._tables.num_items
        keys = row * num_items + items  # relevant (user row, item) pairs of this batch
        counts = torch.bincount(row, minlength=users.numel())
        block = max(1, self.block_elements // num_items)
        for start in range(0, users.numel(), block):
            block_users = users[start : start + block]
            factors, bias = self._tables.user_rows(block_users)
            scored = {"full": self._tables.score_all_items(factors, bias),
                      "popular": self._popular.expand(block_users.numel(), -1).clone()}
            for kind, scores in scored.items():
                self._train.mask(scores, block_users)
                values, top = scores.topk(min(self.top_k, num_items), dim=1)
                top_keys = (torch.arange(start, start + block_users.numel(), device=top.device)[:, None] * num_items
                            + top)
                hits = torch.isin(top_keys, keys) & torch.isfinite(values)
                self._add(kind, hits, counts[start : start + block_users.numel()])
        self.users += users.numel()

    def _add(self, kind: str, hits: Tensor, relevant: Tensor) -> None:
        k = hits.shape[1]
        discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=hits.device, dtype=torch.float64))
        dcg = (hits.double() * discount).sum(1)
        ideal = discount.cumsum(0)[relevant.clamp(max=k) - 1]
        found = hits.sum(1).double()
        setattr(self, f"{kind}_ndcg", getattr(self, f"{kind}_ndcg") + (dcg / ideal).sum())
        setattr(self, f"{kind}_recall", getattr(self, f"{kind}_recall") + (found / relevant.double()).sum())
        setattr(self, f"{kind}_hit", getattr(self, f"{kind}_hit") + (found > 0).double().sum())

    def compute(self) -> dict[str, Tensor]:
        users = self.users.clamp(min=1).double()
        return {f"{kind}_{name}": (getattr(self, f"{kind}_{name}") / users).float() for kind in KINDS for name in NAMES}
