"""FusedRowAdagrad: the closed-form update equals RowAdagrad through autograd, and Lightning drives it."""

from __future__ import annotations

import copy
import csv
import os
import shutil
import warnings
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lightning_mf.training import fused_step
from helpers import random_rating_batch
from lightning_mf.data.batch import RatingBatch
from lightning_mf.training.fused import FusedRowAdagrad
from lightning_mf.training.module import RatingPredictor
from lightning_mf.training.native_kernels import NativeStages
from lightning_mf.training.optimization import step_schedulers
from lightning_mf.training.optimizers import RowAdagrad

NUM_USERS, NUM_ITEMS = 30, 20


def batch_of(size: int, seed: int) -> RatingBatch:
    return random_rating_batch(size, seed, NUM_USERS, NUM_ITEMS)


def module(**kwargs) -> RatingPredictor:
    torch.manual_seed(0)
    options = dict(embedding_dim=8, init_std=0.3, sparse=True, l2=0.05)
    options.update(kwargs)
    return RatingPredictor(NUM_USERS, NUM_ITEMS, 0.5, 5.0, 3.0, **options)


CASES = {
    "linear, mean": {},
    "sigmoid, sum": dict(output="sigmoid", loss_reduction="sum"),
    "no biases, no penalty": dict(use_bias=False, l2=0.0),
    "bias penalty of its own": dict(l2_bias=0.2),
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("decay", [0.0, 0.01])
@pytest.mark.parametrize("row_weights", [False, True], ids=["unweighted", "row-weighted"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("native", [False, True], ids=["eager", "native"])
def test_update_equals_row_adagrad_through_autograd(kwargs: dict, decay: float, row_weights: bool,
                                                    threads: int, native: bool) -> None:
    optimizer = assert_matches_row_adagrad(kwargs, decay, row_weights, dict(threads=threads, compile=native))
    assert isinstance(optimizer._compiled, NativeStages) == native and not optimizer.compile_failed


def assert_matches_row_adagrad(kwargs: dict, decay: float, row_weights: bool, fused_options: dict,
                               steps: int = 3) -> FusedRowAdagrad:
    reference = module(**kwargs)
    fused = copy.deepcopy(reference)
    options = dict(lr=0.1, initial_accumulator_value=0.01, weight_decay=decay)
    reference_opt = RowAdagrad(reference.parameters(), **options)
    fused_opt = FusedRowAdagrad(fused.parameters(), **fused_options, **options)
    if row_weights:
        counts = (torch.arange(NUM_USERS) % 7 + 1, torch.arange(NUM_ITEMS) % 5 + 1)
        reference.penalty_weights.factor_power = fused.penalty_weights.factor_power = 0.5
        reference.set_train_counts(*counts)
        fused.set_train_counts(*counts)
    for seed in range(steps):
        batch = batch_of(64, seed)
        loss, data_loss = reference.loss(batch)
        reference_opt.zero_grad()
        loss.backward()
        reference_opt.step()
        mse = fused_opt.update(fused.model, *batch, l2=fused.l2, l2_bias=fused.l2_bias,
                               reduction=fused.loss_reduction, row_weights=fused.penalty_weights)
        torch.testing.assert_close(mse, data_loss.detach())
        for (name, expected), actual in zip(reference.named_parameters(), fused.parameters()):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)
    return fused_opt


@pytest.mark.parametrize("threads", [1, 2])
def test_update_follows_batch_size_changes(threads: int) -> None:
    """Kept step buffers grow and shrink with the batch; odd sizes and a single rating split cleanly."""
    reference = module(l2_bias=0.2)
    fused = copy.deepcopy(reference)
    reference_opt = RowAdagrad(reference.parameters(), lr=0.1, weight_decay=0.01)
    fused_opt = FusedRowAdagrad(fused.parameters(), lr=0.1, weight_decay=0.01, threads=threads)
    for seed, size in enumerate([64, 1, 17, 130, 2, 64]):
        batch = batch_of(size, seed)
        loss, data_loss = reference.loss(batch)
        reference_opt.zero_grad()
        loss.backward()
        reference_opt.step()
        mse = fused_opt.update(fused.model, *batch, l2=fused.l2, l2_bias=fused.l2_bias)
        torch.testing.assert_close(mse, data_loss.detach())
        for (name, expected), actual in zip(reference.named_parameters(), fused.parameters()):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=f"{name} after a batch of {size}")


class PlainStages:
    """Stands in for `CompiledStages` with the same functions run as plain Python: the kernels'
    math and their wiring into the step, without a compiler. Records the batch size of every call."""

    def __init__(self) -> None:
        self.sizes: Counter[tuple[str, int]] = Counter()
        self.factor_table_update = self._recorded("update_table", fused_step.factor_table_update)
        self.bias_table_update = self._recorded("update_bias", fused_step.bias_table_update)

    def _recorded(self, name: str, function: Callable[..., None], rows_at: int = 2) -> Callable[..., None]:
        def call(*args: object) -> None:
            self.sizes[name, args[rows_at].shape[0]] += 1  # type: ignore[attr-defined]
            function(*args)
        return call


def plain_stages(monkeypatch: pytest.MonkeyPatch) -> list[PlainStages]:
    made: list[PlainStages] = []

    def make() -> PlainStages:
        made.append(PlainStages())
        return made[-1]

    monkeypatch.setattr("lightning_mf.training.fused_base.CompiledStages", make)
    return made


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("row_weights", [False, True], ids=["unweighted", "row-weighted"])
def test_compiled_stages_math_equals_row_adagrad(kwargs: dict, row_weights: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    made = plain_stages(monkeypatch)
    assert_matches_row_adagrad(kwargs, 0.01, row_weights, dict(threads=2, compile=True, kernels="inductor"))
    (stages,) = made
    # The first step runs in one thread (it compiles), the other two in both: every table, every step.
    assert stages.sizes["update_table", 64] == 2 * 3
    assert stages.sizes["update_bias", 64] == (0 if kwargs.get("use_bias") is False else 2 * 3)


def test_compiled_stages_serve_the_first_batch_size_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch's shorter last batch runs eagerly instead of compiling a second set of kernels."""
    made = plain_stages(monkeypatch)
    reference = module(l2_bias=0.2)
    fused = copy.deepcopy(reference)
    reference_opt = RowAdagrad(reference.parameters(), lr=0.1)
    fused_opt = FusedRowAdagrad(fused.parameters(), lr=0.1, compile=True, kernels="inductor")
    for seed, size in enumerate([64, 17, 64]):
        batch = batch_of(size, seed)
        loss, _ = reference.loss(batch)
        reference_opt.zero_grad()
        loss.backward()
        reference_opt.step()
        fused_opt.update(fused.model, *batch, l2=fused.l2, l2_bias=fused.l2_bias)
        for (name, expected), actual in zip(reference.named_parameters(), fused.parameters()):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=f"{name} after a batch of {size}")
    assert made[0].sizes == Counter({("update_table", 64): 4, ("update_bias", 64): 4})


def test_compile_failure_warns_once_and_trains_on_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing:
        def factor_table_update(self, *args: object) -> None:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        bias_table_update = factor_table_update

    monkeypatch.setattr("lightning_mf.training.fused_base.CompiledStages", Failing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_matches_row_adagrad({}, 0.01, True, dict(threads=2, compile=True, kernels="inductor"))
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "compiling failed, training on with the eager kernels" in messages[0]
    assert "No working C++ compiler" in messages[0]


def has_cxx_compiler() -> bool:
    return shutil.which(os.environ.get("CXX", "g++")) is not None


@pytest.mark.slow
@pytest.mark.skipif(not has_cxx_compiler(), reason="torch.compile's CPU backend needs a C++ compiler (g++ or $CXX)")
def test_torch_compiled_update_equals_row_adagrad_and_compiles_once() -> None:
    """The real thing: inductor's kernels, run from both threads, match RowAdagrad, and the steps after
    the second reuse the kernels compiled so far (none per step)."""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed compile would only warn
        optimizer = assert_matches_row_adagrad({}, 0.01, True, dict(threads=2, compile=True, kernels="inductor"),
                                               steps=4)
    assert optimizer.compiled_warm and not optimizer.compile_failed
    # Each table's update (two factor tables, two bias tables, by their shapes): no more.
    assert counters["stats"]["unique_graphs"] - before <= 4


def trainer(tmp_path: Path, epochs: int, **kwargs) -> pl.Trainer:
    options = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                   num_sanity_val_steps=0)
    return pl.Trainer(max_epochs=epochs, default_root_dir=tmp_path, **{**options, **kwargs})


def test_lightning_drives_it_by_manual_optimization(tmp_path: Path) -> None:
    model = module(optimizer=partial(FusedRowAdagrad, lr=0.1), cosine_decay=True)
    train = [batch_of(128, seed) for seed in range(6)]
    fit = trainer(tmp_path, 4, limit_val_batches=0)
    before = model.model.user_factors.weight.detach().clone()
    fit.fit(model, DataLoader(train, batch_size=None))
    assert not model.automatic_optimization
    assert fit.global_step == 4 * len(train)
    assert not torch.equal(model.model.user_factors.weight, before)
    assert model.model.user_factors.weight.grad is None
    # The step-interval cosine schedule is stepped by the module under manual optimization.
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    assert fit.callback_metrics["train/loss"].item() < 2.0
    # The seen-marks (set in the optimizer's second thread) cover exactly the trained rows.
    users = torch.zeros(NUM_USERS, dtype=torch.bool)
    items = torch.zeros(NUM_ITEMS, dtype=torch.bool)
    for batch in train:
        users[batch.user.long()] = True
        items[batch.item.long()] = True
    assert torch.equal(model.model.user_seen, users) and torch.equal(model.model.item_seen, items)


def test_epoch_schedulers_are_stepped(tmp_path: Path) -> None:
    model = module(optimizer=partial(FusedRowAdagrad, lr=0.1),
                   lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    fit = trainer(tmp_path, 3, limit_val_batches=0)
    fit.fit(model, DataLoader([batch_of(64, 0)], batch_size=None))
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_unsupported_models_are_rejected_up_front(tmp_path: Path) -> None:
    for kwargs, found in [(dict(dropout=0.1), "dropout=0.1"), (dict(ensemble_size=2), "ensemble_size=2")]:
        model = module(optimizer=FusedRowAdagrad, **kwargs)
        with pytest.raises(ValueError, match=f"does not support {found}.*RowAdagrad"):
            trainer(tmp_path, 1).fit(model, DataLoader([batch_of(8, 0)], batch_size=None))


def test_optimizer_state_round_trips_through_state_dict_and_pickle() -> None:
    import pickle

    model = module()
    optimizer = FusedRowAdagrad(model.parameters(), lr=0.1)
    optimizer.update(model.model, *batch_of(32, 0), l2=0.05, l2_bias=0.05)
    clone = pickle.loads(pickle.dumps(optimizer))  # its thread pool is not part of its state
    restored = FusedRowAdagrad(model.parameters(), lr=0.1)
    restored.load_state_dict(optimizer.state_dict())
    for source in (clone, restored):
        for a, b in zip(source.state.values(), optimizer.state.values()):
            torch.testing.assert_close(a["sum"], b["sum"])


def test_step_without_the_modules_closure_is_an_error() -> None:
    optimizer = FusedRowAdagrad(module().parameters())
    with pytest.raises(RuntimeError, match="needs the closure"):
        optimizer.step()


@pytest.mark.parametrize("name, value", [("lr", 0.0), ("eps", 0.0), ("initial_accumulator_value", -1.0),
                                         ("weight_decay", -0.1), ("threads", 3)])
def test_bad_arguments_are_rejected(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"FusedRowAdagrad: {name} must be"):
        FusedRowAdagrad(module().parameters(), **{name: value})


class EveryStepLogging(RatingPredictor):
    """The training step's logging as it was: `self.log` of both losses on every step."""

    def training_step(self, batch: RatingBatch, batch_idx: int) -> None:
        self.seen.update(batch.user, batch.item)
        mse = self._fused_step(batch, batch_idx)
        size = batch.rating.shape[0]
        self.log("train/loss", mse, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("train/loss_step", mse, on_step=True, on_epoch=False, batch_size=size)

    def on_train_epoch_end(self) -> None:
        step_schedulers(self.trainer, "epoch")


def logged(tmp_path: Path, cls: type[RatingPredictor]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every train loss a 3-epoch fit writes, per tag (batches of unequal sizes)."""
    torch.manual_seed(0)
    model = cls(NUM_USERS, NUM_ITEMS, 0.5, 5.0, 3.0, embedding_dim=8, init_std=0.3, l2=0.05,
                optimizer=partial(FusedRowAdagrad, lr=0.1))
    train = [batch_of(size, seed) for seed, size in enumerate([40, 90, 17, 64, 33])]
    logger = CSVLogger(tmp_path, name=cls.__name__)
    trainer(tmp_path, 3, limit_val_batches=0, logger=logger, log_every_n_steps=3).fit(
        model, DataLoader(train, batch_size=None))
    with (Path(logger.log_dir) / "metrics.csv").open() as metrics:
        rows = list(csv.DictReader(metrics))
    return {tag: [(int(row["step"]), float(row[tag])) for row in rows if row.get(tag)]
            for tag in ("train/loss", "train/loss_step")}


def test_train_losses_are_logged_as_when_logging_every_step(tmp_path: Path) -> None:
    """`train/loss` stays the epoch's rating-weighted mean MSE, `train/loss_step` keeps every written step."""
    expected, actual = logged(tmp_path, EveryStepLogging), logged(tmp_path, RatingPredictor)
    assert len(actual["train/loss"]) == 3 and len(actual["train/loss_step"]) == 5  # 15 steps, every 3rd
    for tag in expected:
        assert [step for step, _ in actual[tag]] == [step for step, _ in expected[tag]], tag
        # Same fit either way, up to the order of float additions in torch's scatter kernels.
        np.testing.assert_allclose([v for _, v in actual[tag]], [v for _, v in expected[tag]], rtol=1e-4, err_msg=tag)


def test_a_resumed_optimizer_compiles_for_the_batch_size_it_was_compiling_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resumed on an epoch's short last batch, the kernels are still those of the full batch size."""
    made = plain_stages(monkeypatch)
    model = module(l2_bias=0.2)
    first = FusedRowAdagrad(model.parameters(), lr=0.1, compile=True, kernels="inductor")
    first.update(model.model, *batch_of(64, 0), l2=model.l2, l2_bias=model.l2_bias)
    state = first.state_dict()
    assert state["compiled_batch_size"] == 64
    resumed = FusedRowAdagrad(model.parameters(), lr=0.1, compile=True, kernels="inductor")
    resumed.load_state_dict(state)
    resumed.update(model.model, *batch_of(17, 1), l2=model.l2, l2_bias=model.l2_bias)  # eager: not the size
    resumed.update(model.model, *batch_of(64, 2), l2=model.l2, l2_bias=model.l2_bias)  # compiled
    assert made[-1].sizes == Counter({("update_table", 64): 2, ("update_bias", 64): 2})
