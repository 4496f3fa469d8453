"""The fast path's C loops (`native_kernels`): the eager step's math at every width and batch size,
bitwise repeatable, a clear error for a bad index, built once per source and CPU, and a fit that
trains on eagerly where no compiler works."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from helpers import random_rating_batch

from lightning_mf.training import native_kernels
from lightning_mf.training.fused import FusedRowAdagrad, FusedSGD
from lightning_mf.training.module import RatingPredictor
from lightning_mf.training.native_kernels import NativeStages

NUM_USERS, NUM_ITEMS = 30, 20


def module(dim: int, implicit: bool = False) -> RatingPredictor:
    torch.manual_seed(0)
    model = RatingPredictor(NUM_USERS, NUM_ITEMS, 0.5, 5.0, 3.0, embedding_dim=dim, init_std=0.3, sparse=True,
                            l2=0.05, l2_bias=0.02, l2_count_power=0.75, implicit_feedback=implicit, l2_implicit=0.03)
    model.set_train_counts(torch.arange(NUM_USERS) % 7 + 1, torch.arange(NUM_ITEMS) % 5 + 1)
    if implicit:
        history = random_rating_batch(200, 99, NUM_USERS, NUM_ITEMS)
        model.model.set_implicit_feedback(history.user, history.item)
        with torch.no_grad():
            model.model.implicit_factors.weight.normal_(0.0, 0.2)
    return model


def train(model: RatingPredictor, optimizer: FusedRowAdagrad | FusedSGD, sizes: list[int]) -> None:
    for seed, size in enumerate(sizes):
        batch = random_rating_batch(size, seed, NUM_USERS, NUM_ITEMS)
        optimizer.update(model.model, *batch, l2=model.l2, l2_bias=model.l2_bias, l2_implicit=model.l2_implicit,
                         row_weights=model.penalty_weights, reduction=model.loss_reduction)
    optimizer.refresh_implicit(model.model)


def fit_both(optimizer_class: type, dim: int, sizes: list[int], implicit: bool = False,
             **options: object) -> tuple[RatingPredictor, RatingPredictor, FusedRowAdagrad | FusedSGD]:
    eager, native = module(dim, implicit), module(dim, implicit)
    train(eager, optimizer_class(eager.parameters(), lr=0.05, compile=False, **options), sizes)
    native_optimizer = optimizer_class(native.parameters(), lr=0.05, compile=True, **options)
    train(native, native_optimizer, sizes)
    return eager, native, native_optimizer


# Widths below, at and off the loops' 16 lanes; batches shorter and longer than the prefetch distance (8).
@pytest.mark.parametrize("dim", [1, 15, 16, 37])
@pytest.mark.parametrize("optimizer_class", [FusedRowAdagrad, FusedSGD])
def test_native_loops_take_the_eager_steps(dim: int, optimizer_class: type) -> None:
    eager, native, optimizer = fit_both(optimizer_class, dim, [1, 7, 9, 64, 130], threads=2)
    assert isinstance(optimizer._compiled, NativeStages) and not optimizer.compile_failed
    for (name, expected), actual in zip(eager.named_parameters(), native.parameters()):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)


def test_native_loops_cover_the_svdpp_term() -> None:
    eager, native, _ = fit_both(FusedSGD, 12, [64, 64, 33], implicit=True)
    for (name, expected), actual in zip(eager.named_parameters(), native.parameters()):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(native.model.implicit_factors.weight, module(12, True).model.implicit_factors.weight)


def test_native_steps_are_bitwise_repeatable() -> None:
    first, second = module(24), module(24)
    for model in (first, second):
        train(model, FusedRowAdagrad(model.parameters(), lr=0.05, compile=True, threads=2), [64, 100, 64])
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_an_index_outside_a_table_is_a_clear_error() -> None:
    model = module(8)
    batch = random_rating_batch(16, 0, NUM_USERS, NUM_ITEMS)
    batch.user[5] = NUM_USERS
    before = copy.deepcopy(model.model.state_dict())
    optimizer = FusedRowAdagrad(model.parameters(), lr=0.05, compile=True, threads=1)
    with pytest.raises(IndexError, match=f"row index {NUM_USERS} at position 5 of the batch is outside a table of "
                                         f"{NUM_USERS} rows"):
        optimizer.update(model.model, *batch, l2=model.l2)
    for name, value in model.model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed by a refused step"


@pytest.fixture
def fresh_kernel_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty library cache, and no library loaded in this process (restored afterwards)."""
    monkeypatch.setenv("LIGHTNING_MF_KERNEL_DIR", str(tmp_path / "kernels"))
    native_kernels.load_library.cache_clear()
    yield tmp_path / "kernels"
    native_kernels.load_library.cache_clear()


def test_the_library_is_built_once_per_source_and_cpu(fresh_kernel_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    built = native_kernels.build_library()
    assert built.parent == fresh_kernel_dir and built.is_file()

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled again although the cache holds the library")

    monkeypatch.setattr(native_kernels.subprocess, "run", no_compiler)
    assert native_kernels.build_library() == built
    monkeypatch.undo()
    monkeypatch.setenv("LIGHTNING_MF_KERNEL_DIR", str(fresh_kernel_dir))
    monkeypatch.setattr(native_kernels, "_cpu_identity", lambda: "model name: another CPU")
    other = native_kernels.build_library()
    assert other != built and other.is_file(), "a CPU of another kind builds its own library"
    assert sorted(fresh_kernel_dir.iterdir()) == sorted([built, other]), "only the two libraries: no build leftovers"


def test_a_failing_compiler_warns_once_and_trains_on_eagerly(fresh_kernel_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    eager = module(8)
    train(eager, FusedRowAdagrad(eager.parameters(), lr=0.05, compile=False), [64, 64])
    fallback = module(8)
    optimizer = FusedRowAdagrad(fallback.parameters(), lr=0.05, compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(fallback, optimizer, [64, 64])
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "compiling failed, training on with the eager kernels" in messages[0]
    assert "native_kernels.c" in messages[0] and optimizer.compile_failed
    for a, b in zip(eager.parameters(), fallback.parameters()):
        assert torch.equal(a, b)
    assert not fresh_kernel_dir.exists() or not any(fresh_kernel_dir.glob("*.so"))


def test_a_missing_compiler_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(native_kernels.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"no C compiler found \(tried \$CC, cc, gcc and clang\)"):
        native_kernels.c_compiler()


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="FusedSGD: kernels must be native or inductor, got 'cuda'"):
        FusedSGD(module(4).parameters(), kernels="cuda")
