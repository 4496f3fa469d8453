"""Full-catalog ranking metrics: a hand-computed case, chunking that changes nothing, and their keys in `test`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from helpers import make_dataset
from lightning_mf.training.catalog_metrics import CatalogRankingMetrics
from lightning_mf.training.model import MatrixFactorization

IDEAL_2 = 1 + 1 / math.log2(3)  # ideal DCG@2 with two relevant items


def _hand_model() -> MatrixFactorization:
    """Scores 3 + p_u q_i with q = [5, 4, 3, 2, 1]: user 0 (p = 1) ranks items 0..4, user 1 (p = -1) 4..0."""
    model = MatrixFactorization(2, 5, 1.0, 5.0, 3.0, embedding_dim=1, use_bias=False)
    with torch.no_grad():
        model.user_factors.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model.item_factors.weight.copy_(torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]]))
    model.mark_seen(torch.arange(2), torch.arange(5))
    return model.eval()


# Training: user 0 rated item 0, user 1 items 4 and 3. So the most popular order is 0, 3, 4, 1, 2.
TRAIN = (torch.tensor([0, 1, 1]), torch.tensor([0, 4, 3]))
# Held out: user 0 rated items 1 and 3 highly (relevant at >= 4), item 4 low; user 1 item 0 highly, item 2 low.
USER, ITEM, RATING = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([1, 3, 4, 0, 2]), torch.tensor([5.0, 4.0, 2.0, 5.0, 2.0])
EXPECTED = {
    # Model, top 2 without training items: user 0 [1, 2] (one of two relevant, at rank 1); user 1 [2, 1] (none).
    "full_ndcg": (1 / IDEAL_2 + 0) / 2, "full_recall": (1 / 2 + 0) / 2, "full_hit": (1 + 0) / 2,
    # Most popular: user 0 [3, 4] (one of two, rank 1); user 1 [0, 1] (its only relevant item, rank 1).
    "popular_ndcg": (1 / IDEAL_2 + 1) / 2, "popular_recall": (1 / 2 + 1) / 2, "popular_hit": 1.0,
}


@pytest.mark.parametrize("block_elements", [1 << 20, 5])  # all users in one block, one user per block
def test_hand_computed_case(block_elements: int) -> None:
    metric = CatalogRankingMetrics(relevance_threshold=4.0, top_k=2, block_elements=block_elements)
    metric.start(_hand_model(), *TRAIN)
    metric.update(USER, ITEM, RATING)
    values = {key: value.item() for key, value in metric.compute().items()}
    assert values == pytest.approx(EXPECTED, abs=1e-6)
    assert metric.users.item() == 2


def test_batches_of_whole_users_add_up_and_users_without_relevant_items_are_skipped() -> None:
    metric = CatalogRankingMetrics(relevance_threshold=4.0, top_k=2)
    metric.start(_hand_model(), *TRAIN)
    first, second = USER == 0, USER == 1
    metric.update(USER[first], ITEM[first], RATING[first])
    metric.update(USER[second], ITEM[second], RATING[second])
    metric.update(torch.tensor([1]), torch.tensor([2]), torch.tensor([1.0]))  # nothing relevant: not a user
    assert {key: value.item() for key, value in metric.compute().items()} == pytest.approx(EXPECTED, abs=1e-6)
    # With k past the candidates, the slots left over are no hits (user 0 has 4 candidates).
    wide = CatalogRankingMetrics(relevance_threshold=4.0, top_k=5)
    wide.start(_hand_model(), *TRAIN)
    wide.update(USER[first], ITEM[first], RATING[first])
    assert wide.compute()["full_recall"].item() == 1.0


@pytest.mark.slow
def test_test_logs_full_catalog_and_popular_metrics_beside_the_old_ones(tmp_path: Path) -> None:
    from lightning.pytorch import Trainer

    from lightning_mf.data.datamodule import RatingsDataModule
    from lightning_mf.training.module import RatingPredictor

    make_dataset(tmp_path / "data", train_rows=2000, val_rows=300, test_rows=300, num_users=40, num_items=30)
    datamodule = RatingsDataModule(data_dir=str(tmp_path / "data"), batch_size=256)
    module = RatingPredictor(40, 30, 0.5, 5.0, datamodule.global_mean, embedding_dim=4, l2=0.01,
                             optimizer=lambda params: torch.optim.Adam(params, lr=0.05))
    trainer = Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    kinds = [f"test/{kind}_{name}@10" for kind in ("full", "popular") for name in ("ndcg", "recall", "hit")]
    assert set(results) == {"test/rmse", "test/mae", "test/ndcg@10", "test/recall@10", *kinds}
    assert all(0.0 <= results[key] <= 1.0 for key in kinds)
    assert results["test/full_hit@10"] >= results["test/full_recall@10"] > 0.0
