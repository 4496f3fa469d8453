"""Row-wise optimizers: only touched rows move, and the updates are the documented ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_mf.training.optimizers import RowAdagrad, RowAdam

REPO = Path(__file__).resolve().parents[1]


def sparse_step(optimizer: torch.optim.Optimizer, weight: torch.Tensor, rows: torch.Tensor,
                upstream: torch.Tensor) -> None:
    """One step on the loss sum(upstream * weight[rows]), with a sparse gradient."""
    optimizer.zero_grad()
    (F.embedding(rows, weight, sparse=True) * upstream).sum().backward()
    optimizer.step()


@pytest.mark.parametrize("factory", [lambda p: RowAdagrad(p, lr=0.1), lambda p: RowAdam(p, lr=0.1),
                                     lambda p: RowAdagrad(p, lr=0.1, weight_decay=0.5),
                                     lambda p: RowAdam(p, lr=0.1, weight_decay=0.5, decoupled_weight_decay=True)])
def test_sparse_step_updates_only_touched_rows(factory) -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(10, 3))
    before = weight.detach().clone()
    optimizer = factory([weight])
    rows = torch.tensor([2, 7, 2], dtype=torch.int32)
    sparse_step(optimizer, weight, rows, torch.randn(3, 3))
    changed = (weight.detach() != before).any(1)
    assert changed.nonzero().flatten().tolist() == [2, 7]


def test_row_adagrad_matches_its_formula_with_duplicate_rows() -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(6, 4))
    start = weight.detach().clone()
    optimizer = RowAdagrad([weight], lr=0.3, eps=1e-10, initial_accumulator_value=0.1)
    rows = torch.tensor([1, 4, 1])
    upstream = torch.randn(3, 4)
    sparse_step(optimizer, weight, rows, upstream)
    # Each occurrence adds its mean square; the update uses the accumulator after all of them.
    accumulator = torch.full((6,), 0.1)
    accumulator.index_add_(0, rows, upstream.pow(2).mean(1))
    expected = start.clone()
    expected.index_add_(0, rows, -0.3 * upstream / accumulator[rows].sqrt().unsqueeze(1))
    torch.testing.assert_close(weight.detach(), expected)
    torch.testing.assert_close(optimizer.state[weight]["sum"], accumulator)


def test_row_adam_equals_adam_when_every_row_is_touched_every_step() -> None:
    torch.manual_seed(0)
    sparse_weight = torch.nn.Parameter(torch.randn(5, 3))
    dense_weight = torch.nn.Parameter(sparse_weight.detach().clone())
    row_adam = RowAdam([sparse_weight], lr=0.05, weight_decay=0.1)
    adam = torch.optim.Adam([dense_weight], lr=0.05, weight_decay=0.1)
    for _ in range(4):
        rows = torch.cat([torch.randperm(5), torch.randint(0, 5, (3,))])  # every row, some twice
        upstream = torch.randn(rows.numel(), 3)
        sparse_step(row_adam, sparse_weight, rows, upstream)
        adam.zero_grad()
        (dense_weight[rows] * upstream).sum().backward()
        adam.step()
    torch.testing.assert_close(sparse_weight.detach(), dense_weight.detach())


@pytest.mark.parametrize(("decoupled", "reference"), [(False, torch.optim.Adam), (True, torch.optim.AdamW)])
def test_row_adam_dense_gradients_follow_adam(decoupled: bool, reference) -> None:
    torch.manual_seed(0)
    mine = torch.nn.Parameter(torch.randn(4, 2))
    theirs = torch.nn.Parameter(mine.detach().clone())
    row_adam = RowAdam([mine], lr=0.01, weight_decay=0.2, decoupled_weight_decay=decoupled)
    torch_adam = reference([theirs], lr=0.01, weight_decay=0.2)
    for _ in range(3):
        target = torch.randn(4, 2)
        for weight, optimizer in ((mine, row_adam), (theirs, torch_adam)):
            optimizer.zero_grad()
            (weight - target).pow(2).sum().backward()
            optimizer.step()
    torch.testing.assert_close(mine.detach(), theirs.detach())


def test_row_adam_bias_corrects_a_late_first_touch() -> None:
    weight = torch.nn.Parameter(torch.zeros(3, 2))
    optimizer = RowAdam([weight], lr=0.01)
    for _ in range(50):
        sparse_step(optimizer, weight, torch.tensor([0]), torch.ones(1, 2))
    sparse_step(optimizer, weight, torch.tensor([2]), torch.ones(1, 2))
    # Row 2's first step is a full Adam first step (lr), not one damped by 50 steps of row 0.
    torch.testing.assert_close(weight.detach()[2], torch.full((2,), -0.01))
    assert optimizer.state[weight]["step"].flatten().tolist() == [50.0, 0.0, 1.0]


def test_row_adagrad_dense_gradients_follow_adagrad() -> None:
    torch.manual_seed(0)
    mine = torch.nn.Parameter(torch.randn(3))
    theirs = torch.nn.Parameter(mine.detach().clone())
    row = RowAdagrad([mine], lr=0.1, eps=1e-10)
    reference = torch.optim.Adagrad([theirs], lr=0.1, eps=1e-10)
    for _ in range(3):
        for weight, optimizer in ((mine, row), (theirs, reference)):
            optimizer.zero_grad()
            (weight * torch.tensor([1.0, -2.0, 3.0])).pow(2).sum().backward()
            optimizer.step()
    torch.testing.assert_close(mine.detach(), theirs.detach())


@pytest.mark.parametrize(("factory", "message"), [
    (lambda p: RowAdam(p, lr=0.0), "RowAdam: lr must be > 0, got 0.0"),
    (lambda p: RowAdam(p, betas=(0.9, 1.0)), r"RowAdam: betas must lie in \[0, 1\)"),
    (lambda p: RowAdam(p, weight_decay=-1.0), "RowAdam: weight_decay must be >= 0"),
    (lambda p: RowAdagrad(p, lr=-1.0), "RowAdagrad: lr must be > 0, got -1.0"),
    (lambda p: RowAdagrad(p, eps=0.0), "RowAdagrad: eps must be > 0"),
])
def test_bad_arguments_are_rejected(factory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory([torch.nn.Parameter(torch.zeros(2))])


RSS_AFTER_FREE = """
import ctypes, sys
from lightning_mf.training.allocator import keep_freed_memory

def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096

kept = keep_freed_memory() and keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
size = 16 << 20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
before = resident()
libc.free(ctypes.c_void_p(block))
print(kept, before - resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt, read back through /proc")
def test_keep_freed_memory_keeps_a_freed_batch_buffer_resident() -> None:
    """By default glibc unmaps a freed 16 MB block at once; after the call (made twice: harmless) it keeps it."""
    freed = {}
    for mode in ("default", "keep"):
        done = subprocess.run([sys.executable, "-c", RSS_AFTER_FREE, mode], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr[-2000:]
        kept, released = done.stdout.split()
        freed[mode] = (kept, int(released))
    assert freed["keep"][0] == "True"
    assert freed["default"][1] > 12 << 20, freed  # handed back to the OS
    assert freed["keep"][1] < 4 << 20, freed  # still resident, for the next step
