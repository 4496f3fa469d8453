"""Ranking metrics: hand-computed values, chunked accumulation equal to one whole torchmetrics pass."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_normalized_dcg, retrieval_recall
from torchmetrics.retrieval import RetrievalNormalizedDCG, RetrievalRecall

from lightning_mf.training.metrics import RankingMetrics


def test_hand_computed_example() -> None:
    # User 7: relevant items ranked 1st and 3rd of 3, two relevant in all.
    # User 3: one relevant item ranked 2nd of 2. User 5: nothing relevant, so skipped.
    user = torch.tensor([7, 3, 7, 5, 3, 7])
    score = torch.tensor([0.9, 0.1, 0.2, 0.5, 0.8, 0.5])
    rating = torch.tensor([5.0, 4.0, 4.5, 2.0, 1.0, 3.0])
    metric = RankingMetrics(relevance_threshold=4.0, top_k=10)
    metric.update(user, score, rating)
    values = metric.compute()
    ndcg_7 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_3 = (1 / math.log2(3)) / 1.0
    assert values["ndcg"].item() == pytest.approx((ndcg_7 + ndcg_3) / 2, abs=1e-6)
    assert values["recall"].item() == pytest.approx(1.0)
    assert metric.users.item() == 2


def _one_user(score: torch.Tensor, rating: torch.Tensor, k: int) -> dict[str, float]:
    metric = RankingMetrics(4.0, top_k=k)
    metric.update(torch.zeros(len(score), dtype=torch.int64), score, rating)
    return {key: value.item() for key, value in metric.compute().items()}


def test_top_k_cuts_the_ranking() -> None:
    # One user, 12 items, the only relevant one ranked 11th: outside the top 10.
    score = torch.arange(12, 0, -1, dtype=torch.float32)
    rating = torch.zeros(12)
    rating[10] = 5.0
    assert _one_user(score, rating, 10) == {"ndcg": 0.0, "recall": 0.0}
    values = _one_user(score, rating, 11)
    assert values["ndcg"] == pytest.approx(1 / math.log2(12), abs=1e-6) and values["recall"] == 1.0


def random_users(num_users: int, seed: int, ties: bool = False) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 30, (num_users,), generator=generator)
    user = torch.repeat_interleave(torch.arange(num_users), sizes)
    user = user[torch.randperm(user.numel(), generator=generator)]
    score = torch.rand(user.numel(), generator=generator) + 0.5
    if ties:
        score = (score * 4).round() / 4  # few distinct values: many ties
    rating = torch.randint(1, 11, (user.numel(),), generator=generator).float() / 2
    return user, score, rating


def per_user_reference(user: torch.Tensor, score: torch.Tensor, relevant: torch.Tensor,
                       functional, k: int) -> float:
    values = [functional(score[user == u], relevant[user == u], top_k=k)
              for u in user.unique() if relevant[user == u].any()]
    return torch.stack(values).mean().item()


@pytest.mark.parametrize("k", [1, 5, 10])
def test_matches_torchmetrics_functional_per_user(k: int) -> None:
    user, score, rating = random_users(40, seed=k)
    relevant = rating >= 4.0
    metric = RankingMetrics(4.0, top_k=k)
    metric.update(user, score, rating)
    values = metric.compute()
    assert values["ndcg"].item() == pytest.approx(
        per_user_reference(user, score, relevant, retrieval_normalized_dcg, k), abs=1e-5)
    assert values["recall"].item() == pytest.approx(
        per_user_reference(user, score, relevant, retrieval_recall, k), abs=1e-5)


def test_matches_torchmetrics_retrieval_classes() -> None:
    user, score, rating = random_users(60, seed=1)
    ndcg = RetrievalNormalizedDCG(top_k=10, empty_target_action="skip")
    recall = RetrievalRecall(top_k=10, empty_target_action="skip")
    ndcg.update(score, rating >= 4.0, indexes=user)
    recall.update(score, rating >= 4.0, indexes=user)
    metric = RankingMetrics(4.0)
    metric.update(user, score, rating)
    values = metric.compute()
    assert values["ndcg"].item() == pytest.approx(ndcg.compute().item(), abs=1e-5)
    assert values["recall"].item() == pytest.approx(recall.compute().item(), abs=1e-5)


def test_ties_are_averaged_like_torchmetrics_ndcg() -> None:
    user, score, rating = random_users(40, seed=3, ties=True)
    relevant = rating >= 4.0
    metric = RankingMetrics(4.0, top_k=5)
    metric.update(user, score, rating)
    assert metric.compute()["ndcg"].item() == pytest.approx(
        per_user_reference(user, score, relevant, retrieval_normalized_dcg, 5), abs=1e-5)


def test_sum_states_accumulated_over_whole_user_batches_equal_one_shot() -> None:
    user, score, rating = random_users(50, seed=7)
    order = torch.argsort(user, stable=True)  # files are sorted by user
    user, score, rating = user[order], score[order], rating[order]
    whole = RankingMetrics(4.0)
    whole.update(user, score, rating)
    chunked = RankingMetrics(4.0)
    boundaries = torch.searchsorted(user, torch.tensor([0, 13, 14, 31, 50]))
    for start, end in zip(boundaries[:-1].tolist(), boundaries[1:].tolist()):
        chunked.update(user[start:end], score[start:end], rating[start:end])
    assert chunked.users.item() == whole.users.item()
    for key in ("ndcg", "recall"):
        assert chunked.compute()[key].item() == pytest.approx(whole.compute()[key].item(), abs=1e-6)


def test_no_relevant_items_gives_zero_not_nan() -> None:
    metric = RankingMetrics(4.0)
    metric.update(torch.tensor([0, 1]), torch.tensor([0.3, 0.2]), torch.tensor([1.0, 2.0]))
    assert metric.compute() == {"ndcg": torch.tensor(0.0), "recall": torch.tensor(0.0)}


def test_top_k_must_be_positive() -> None:
    with pytest.raises(ValueError, match="top_k must be a positive integer, got 0"):
        RankingMetrics(4.0, top_k=0)
