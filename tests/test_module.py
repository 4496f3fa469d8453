"""RatingPredictor: learning on low-rank data (dense and sparse paths), logging, checkpoints."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_mf.data.batch import RatingBatch
from lightning_mf.training.module import RatingPredictor
from lightning_mf.training.optimizers import RowAdagrad, RowAdam

NUM_USERS, NUM_ITEMS = 120, 80


def low_rank_ratings(n: int = 8000, rank: int = 3, noise: float = 0.25, seed: int = 0) -> RatingBatch:
    """Ratings on a 1..5 scale from a rank-`rank` model plus biases and noise, shuffled."""
    generator = torch.Generator().manual_seed(seed)
    user_factors = torch.randn(NUM_USERS, rank, generator=generator) * 0.6
    item_factors = torch.randn(NUM_ITEMS, rank, generator=generator) * 0.6
    user_bias = torch.randn(NUM_USERS, generator=generator) * 0.3
    item_bias = torch.randn(NUM_ITEMS, generator=generator) * 0.3
    user = torch.randint(0, NUM_USERS, (n,), generator=generator)
    item = torch.randint(0, NUM_ITEMS, (n,), generator=generator)
    rating = (3.2 + user_bias[user] + item_bias[item] + (user_factors[user] * item_factors[item]).sum(1)
              + noise * torch.randn(n, generator=generator)).clamp(1.0, 5.0)
    return RatingBatch(user.int(), item.int(), rating.float())


def batches(data: RatingBatch, start: int, end: int, batch_size: int) -> list[RatingBatch]:
    return [RatingBatch(*(column[s:min(s + batch_size, end)] for column in data))
            for s in range(start, end, batch_size)]


def loader(data: RatingBatch, start: int, end: int, batch_size: int, shuffle: bool = False) -> DataLoader:
    return DataLoader(batches(data, start, end, batch_size), batch_size=None, shuffle=shuffle)


def trainer(tmp_path: Path, max_epochs: int, **kwargs) -> L.Trainer:
    options = dict(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    options.update(kwargs)
    return L.Trainer(**options)


def make_module(data: RatingBatch, train_end: int, **kwargs) -> RatingPredictor:
    torch.manual_seed(0)
    options = dict(embedding_dim=8, init_std=0.1)
    options.update(kwargs)
    return RatingPredictor(NUM_USERS, NUM_ITEMS, 1.0, 5.0, data.rating[:train_end].mean().item(), **options)


def test_dense_and_sparse_paths_learn_the_same_low_rank_model(tmp_path: Path) -> None:
    data = low_rank_ratings()
    train_end, val_end = 6400, 8000
    baseline = (data.rating[train_end:] - data.rating[:train_end].mean()).pow(2).mean().sqrt().item()
    paths = {
        "dense Adam, batch 256": (dict(optimizer=partial(torch.optim.Adam, lr=0.01), l2=0.01), 256, 12),
        "sparse RowAdagrad, batch 1024": (dict(sparse=True, optimizer=partial(RowAdagrad, lr=0.1), l2=0.01),
                                          1024, 12),
        "sparse RowAdam, batch 1024": (dict(sparse=True, optimizer=partial(RowAdam, lr=0.02), l2=0.01), 1024, 12),
    }
    rmse = {}
    for name, (kwargs, batch_size, epochs) in paths.items():
        module = make_module(data, train_end, **kwargs)
        fit = trainer(tmp_path, epochs, num_sanity_val_steps=0)
        fit.fit(module, loader(data, 0, train_end, batch_size, shuffle=True),
                loader(data, train_end, val_end, 800))
        losses = fit.callback_metrics
        rmse[name] = losses["val/rmse"].item()
        assert losses["train/loss"].item() < 0.5 * baseline**2, name
    assert all(value < 0.6 * baseline for value in rmse.values()), (rmse, baseline)
    assert max(rmse.values()) - min(rmse.values()) < 0.02, rmse


def test_training_loss_falls(tmp_path: Path) -> None:
    data = low_rank_ratings(n=4000)
    module = make_module(data, 4000, sparse=True, optimizer=partial(RowAdagrad, lr=0.1))
    before = module.loss(data)[0].item()
    trainer(tmp_path, 3).fit(module, loader(data, 0, 4000, 500, shuffle=True))
    module.train()
    assert module.loss(data)[1].item() < 0.7 * before


def test_l2_penalty_is_the_per_rating_mean_of_looked_up_squared_norms() -> None:
    data = low_rank_ratings(n=50)
    module = make_module(data, 50, l2=0.1, l2_bias=0.05, ensemble_size=2)
    model = module.model.train()
    with torch.no_grad():
        model.user_bias.weight.normal_()
        model.item_bias.weight.normal_()
    loss, data_loss = module.loss(data)
    user, item = data.user.long(), data.item.long()
    factors = (model.user_factors.weight[user].pow(2).sum(1) + model.item_factors.weight[item].pow(2).sum(1)) / 2
    biases = (model.user_bias.weight[user].pow(2) + model.item_bias.weight[item].pow(2)).mean(1)
    # Each copy's prediction from its own slice of the tables, by hand: mean + b_u + b_i + p_u . q_i.
    p = model.user_factors.weight[user].view(-1, 2, 8)
    q = model.item_factors.weight[item].view(-1, 2, 8)
    members = data.rating[:50].mean() + model.user_bias.weight[user] + model.item_bias.weight[item] + (p * q).sum(2)
    torch.testing.assert_close(data_loss, (members - data.rating.unsqueeze(1)).pow(2).mean())
    torch.testing.assert_close(loss, data_loss + (0.1 * factors + 0.05 * biases).mean())


def test_logs_learning_curves_hparams_and_test_metrics(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = low_rank_ratings(n=3000)
    module = make_module(data, 2000)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="run")
    fit = trainer(tmp_path, 2, logger=logger, log_every_n_steps=1)
    fit.fit(module, loader(data, 0, 2000, 250), loader(data, 2000, 2500, 250))
    order = torch.argsort(data.user[2500:], stable=True) + 2500  # test files are sorted by user
    test_data = RatingBatch(*(column[order] for column in data))
    results = fit.test(module, loader(test_data, 0, 500, 500), verbose=False)[0]
    assert set(results) == {"test/rmse", "test/mae", "test/ndcg@10", "test/recall@10"}
    assert 0.0 < results["test/ndcg@10"] <= 1.0
    events = EventAccumulator(str(Path(logger.log_dir))).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_step", "val/loss", "val/rmse", "val/mae", "hp_metric"} <= scalars
    assert len(events.Scalars("train/loss")) == 2 and len(events.Scalars("val/rmse")) == 2
    # TensorBoard reads hp_metric at its latest step; the logger's placeholder -1 sits at step 0.
    hp_metric = max(events.Scalars("hp_metric"), key=lambda event: event.step).value
    val_rmse = events.Scalars("val/rmse")[-1].value
    assert hp_metric == pytest.approx(val_rmse)
    assert events.Scalars("val/loss")[-1].value == pytest.approx(val_rmse**2, rel=1e-5)
    hparams = (Path(logger.log_dir) / "hparams.yaml").read_text()
    assert "embedding_dim: 8" in hparams


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(sparse=True, optimizer=partial(RowAdam, lr=0.01), implicit_feedback=True, ensemble_size=2,
         output="sigmoid", dropout=0.1, l2=0.01),
])
def test_checkpoint_round_trip_predicts_bitwise_the_same(tmp_path: Path, kwargs: dict) -> None:
    data = low_rank_ratings(n=3000)
    # Train only on users < 100 and items < 60, so the checkpoint must carry the seen-masks.
    keep = (data.user < 100) & (data.item < 60)
    train = RatingBatch(*(column[keep] for column in data))
    module = make_module(train, len(train.user), **kwargs)
    if module.model.implicit_factors is not None:
        module.model.set_implicit_feedback(train.user, train.item)
    fit = trainer(tmp_path, 2)
    fit.fit(module, loader(train, 0, len(train.user), 256, shuffle=True))
    path = tmp_path / "model.ckpt"
    fit.save_checkpoint(path)
    restored = RatingPredictor.load_from_checkpoint(path)
    user, item = torch.meshgrid(torch.arange(NUM_USERS), torch.arange(NUM_ITEMS), indexing="ij")
    user, item = user.flatten().int(), item.flatten().int()
    module.eval()
    restored.eval()
    with torch.no_grad():
        before, after = module(user, item), restored(user, item)
    assert torch.equal(before, after)
    assert torch.equal(restored.model.user_seen, module.model.user_seen)
    assert torch.equal(restored.model.item_seen, module.model.item_seen)
    assert restored.model.user_seen[:100].all() and not restored.model.user_seen[100:].any()
    # A user never seen in training gets the item-bias fallback (linear output, one copy).
    if not kwargs:
        fallback = restored.model.offset + restored.model.item_bias.weight[0, 0]
        assert after.view(NUM_USERS, NUM_ITEMS)[110, 0].item() == pytest.approx(fallback.item())


def test_predict_step_returns_clipped_predictions(tmp_path: Path) -> None:
    data = low_rank_ratings(n=1000)
    module = make_module(data, 1000)
    fit = trainer(tmp_path, 1)
    fit.fit(module, loader(data, 0, 1000, 250))
    predictions = fit.predict(module, loader(data, 0, 1000, 400))
    assert [p.shape[0] for p in predictions] == [400, 400, 200]
    flat = torch.cat(predictions)
    assert flat.min().item() >= 1.0 and flat.max().item() <= 5.0


def test_sparse_path_rejects_a_dense_only_optimizer(tmp_path: Path) -> None:
    data = low_rank_ratings(n=500)
    module = make_module(data, 500, sparse=True)  # default optimizer: torch.optim.Adam
    with pytest.raises(ValueError, match="sparse=True needs an optimizer that accepts sparse gradients, got Adam"):
        trainer(tmp_path, 1).fit(module, loader(data, 0, 500, 250))


def test_torch_sparse_adam_drives_the_sparse_path(tmp_path: Path) -> None:
    data = low_rank_ratings(n=2000)
    module = make_module(data, 2000, sparse=True, optimizer=lambda p: torch.optim.SparseAdam(list(p), lr=0.02))
    before = module.loss(data)[1].item()
    trainer(tmp_path, 3).fit(module, loader(data, 0, 2000, 250, shuffle=True))
    module.train()
    assert module.loss(data)[1].item() < before


def test_learning_rate_schedulers_are_stepped(tmp_path: Path) -> None:
    data = low_rank_ratings(n=1000)
    module = make_module(data, 800, optimizer=partial(torch.optim.SGD, lr=0.1),
                         lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
                         lr_scheduler_interval="step")
    fit = trainer(tmp_path, 1)
    fit.fit(module, loader(data, 0, 800, 200), loader(data, 800, 1000, 200))
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)
    # A plateau scheduler watching val/rmse in "max" mode sees no gain while val RMSE falls: after the
    # first epoch sets its best, each later epoch cuts the rate by its factor.
    plateau = make_module(data, 800, optimizer=partial(torch.optim.Adam, lr=0.01), lr_scheduler=partial(
        torch.optim.lr_scheduler.ReduceLROnPlateau, mode="max", patience=0, factor=0.5))
    fit = trainer(tmp_path, 3, num_sanity_val_steps=0)
    fit.fit(plateau, loader(data, 0, 800, 200), loader(data, 800, 1000, 200))
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**2)


def test_implicit_feedback_without_interactions_explains_what_to_do(tmp_path: Path) -> None:
    data = low_rank_ratings(n=500)
    module = make_module(data, 500, implicit_feedback=True)
    with pytest.raises(ValueError, match="train_interactions"):
        trainer(tmp_path, 1).fit(module, loader(data, 0, 500, 250))


def test_implicit_feedback_is_read_from_the_datamodule(tmp_path: Path) -> None:
    data = low_rank_ratings(n=1000)

    class Interactions(L.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return loader(data, 0, 1000, 250)

        def train_interactions(self) -> tuple[torch.Tensor, torch.Tensor]:
            return data.user, data.item

    module = make_module(data, 1000, implicit_feedback=True)
    trainer(tmp_path, 1).fit(module, datamodule=Interactions())
    assert module.model.implicit_items.numel() == torch.unique(data.user.long() * NUM_ITEMS + data.item).numel()


def test_signature_is_a_cli_config() -> None:
    """jsonargparse (LightningCLI) builds the arguments from the signature and docstring."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RatingPredictor, "model")
    config = parser.parse_args([
        "--model.num_users=10", "--model.num_items=5", "--model.rating_min=1", "--model.rating_max=5",
        "--model.global_mean=3.5", "--model.sparse=true", "--model.l2=0.02",
        "--model.optimizer=lightning_mf.training.optimizers.RowAdagrad", "--model.optimizer.lr=0.2",
    ])
    module = parser.instantiate(config).model
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, RowAdagrad) and optimizer.defaults["lr"] == 0.2
    help_text = parser.format_help()
    assert "Per-rating L2 penalty" in help_text


DDP_SCRIPT = """
import sys, torch, lightning as L
from torch.utils.data import DataLoader
from lightning_mf.data.batch import RatingBatch
from lightning_mf.training.module import RatingPredictor

# Batch k holds item k only, so each of the two ranks sees only its half of items 0..7.
batches = []
for k in range(8):
    user = torch.arange(10, dtype=torch.int32) * 2 + (k % 2)
    item = torch.full((10,), k, dtype=torch.int32)
    batches.append(RatingBatch(user, item, torch.full((10,), 4.0)))
module = RatingPredictor(20, 10, 1.0, 5.0, 3.0, embedding_dim=4)
trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(module, DataLoader(batches, batch_size=None))
trainer.save_checkpoint(sys.argv[1])
"""


@pytest.mark.slow
def test_ddp_merges_every_ranks_seen_marks_into_the_checkpoint(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    checkpoint = tmp_path / "ddp.ckpt"
    repo = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, str(script), str(checkpoint)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    model = RatingPredictor.load_from_checkpoint(checkpoint).model
    assert model.user_seen.all(), model.user_seen
    assert model.item_seen[:8].all() and not model.item_seen[8:].any()


def test_sum_reduction_count_weights_and_implicit_penalty() -> None:
    """The per-rating objective of the class docstring, summed, with row weights n^(a-1)."""
    data = low_rank_ratings(n=60)
    module = make_module(data, 60, l2=0.3, l2_bias=0.05, l2_implicit=0.03, l2_count_power=0.75,
                         loss_reduction="sum", implicit_feedback=True)
    user_counts = torch.bincount(data.user.long(), minlength=NUM_USERS)
    item_counts = torch.bincount(data.item.long(), minlength=NUM_ITEMS)
    module.set_train_counts(user_counts, item_counts)
    model = module.model.train()
    model.set_implicit_feedback(data.user, data.item)
    with torch.no_grad():
        model.implicit_factors.weight.normal_(0.0, 0.1)
        model.user_bias.weight.normal_()
    loss, data_loss = module.loss(data)
    user, item = data.user.long(), data.item.long()
    w_u = user_counts[user].float().pow(-0.25)
    w_i = item_counts[item].float().pow(-0.25)
    # The SVD++ user term by hand: |N(u)|^-1/2 times the sum of y_j over the user's distinct items.
    implicit = torch.zeros(NUM_USERS, 8)
    for u in range(NUM_USERS):
        rated = torch.unique(data.item[data.user == u].long())
        if rated.numel():
            implicit[u] = model.implicit_factors.weight[rated].sum(0) / rated.numel() ** 0.5
    prediction = (data.rating.mean() + model.user_bias.weight[user, 0] + model.item_bias.weight[item, 0]
                  + ((model.user_factors.weight[user] + implicit[user]) * model.item_factors.weight[item]).sum(1))
    squared_error = (prediction - data.rating).pow(2)
    factors = w_u * model.user_factors.weight[user].pow(2).sum(1) + w_i * model.item_factors.weight[item].pow(2).sum(1)
    biases = model.user_bias.weight[user, 0].pow(2) + model.item_bias.weight[item, 0].pow(2)
    implicit_sq = implicit[user].pow(2).sum(1)
    expected = (squared_error + 0.3 * factors + 0.05 * biases + 0.03 * implicit_sq).sum()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(data_loss, squared_error.mean())
    assert implicit_sq.sum() > 0


def test_count_power_reads_the_datamodule_counts_and_implicit_lr_is_scaled(tmp_path: Path) -> None:
    data = low_rank_ratings(n=1000)

    class Counts(L.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return loader(data, 0, 1000, 250)

        def train_counts(self) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.bincount(data.user.long(), minlength=NUM_USERS),
                    torch.bincount(data.item.long(), minlength=NUM_ITEMS))

        def train_interactions(self) -> tuple[torch.Tensor, torch.Tensor]:
            return data.user, data.item

    module = make_module(data, 1000, l2=0.1, l2_count_power=0.5, implicit_feedback=True, implicit_lr_scale=0.1,
                         loss_reduction="sum", optimizer=partial(torch.optim.SGD, lr=0.01))
    fit = trainer(tmp_path, 1)
    fit.fit(module, datamodule=Counts())
    expected = torch.bincount(data.user.long(), minlength=NUM_USERS).clamp(min=1).float().pow(-0.5)
    torch.testing.assert_close(module.penalty_weights.user_factor, expected)
    lrs = {group.get("name", "main"): group["lr"] for group in fit.optimizers[0].param_groups}
    assert lrs == {"main": 0.01, "implicit_factors": pytest.approx(0.001)}
    with pytest.raises(ValueError, match="train_counts"):
        trainer(tmp_path, 1).fit(make_module(data, 1000, l2=0.1, l2_count_power=0.5), loader(data, 0, 1000, 250))


def test_cosine_decay_runs_the_learning_rate_to_zero_over_the_fit(tmp_path: Path) -> None:
    data = low_rank_ratings(n=1000)
    module = make_module(data, 1000, cosine_decay=True, optimizer=partial(torch.optim.SGD, lr=0.1))
    seen: list[float] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    fit = trainer(tmp_path, 2, callbacks=[Record()])
    fit.fit(module, loader(data, 0, 1000, 100))
    assert len(seen) == 20 and seen[0] == pytest.approx(0.1)
    assert seen == sorted(seen, reverse=True) and seen[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="either lr_scheduler or cosine_decay"):
        make_module(data, 1000, cosine_decay=True, lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1))


def test_bias_count_power_weights_the_bias_penalty() -> None:
    data = low_rank_ratings(n=80)
    module = make_module(data, 80, l2=0.0, l2_bias=10.0, l2_bias_count_power=0.0)
    user_counts = torch.bincount(data.user.long(), minlength=NUM_USERS)
    item_counts = torch.bincount(data.item.long(), minlength=NUM_ITEMS)
    module.set_train_counts(user_counts, item_counts)
    assert module.penalty_weights.user_factor.numel() == 0, "factor weights only when l2_count_power != 1"
    model = module.model.train()
    with torch.no_grad():
        model.user_bias.weight.normal_()
        model.item_bias.weight.normal_()
    loss, data_loss = module.loss(data)
    user, item = data.user.long(), data.item.long()
    biases = (model.user_bias.weight[user, 0].pow(2) / user_counts[user].clamp(min=1)
              + model.item_bias.weight[item, 0].pow(2) / item_counts[item].clamp(min=1))
    torch.testing.assert_close(loss, data_loss + (10.0 * biases).mean())
