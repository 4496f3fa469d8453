"""The training paths on a CUDA device: the CLI in fp32, bf16-mixed (dense and sparse paths) and bf16-true (the fast path), the
sparse and fused row updates without host syncs, and checkpoints that reload on the GPU. Every
test here is marked `gpu` and skipped without CUDA (see conftest.py); `benchmarks/gpu_check.sh`
runs them on a GPU machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from lightning_mf.data.batch import RatingBatch
from lightning_mf.training.fused import FusedRowAdagrad
from lightning_mf.training.module import RatingPredictor
from lightning_mf.training.optimizers import RowAdagrad, RowAdam

pytestmark = pytest.mark.gpu

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
SMALL = [
    "--data.prepare.rows", "20000", "--data.prepare.users", "400", "--data.prepare.items", "300",
    "--data.batch_size", "2048", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
    "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--data.pin_memory", "true",
]
NUM_USERS, NUM_ITEMS = 300, 200


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "lightning_mf", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": path})


def random_batch(size: int, device: torch.device, seed: int = 0) -> RatingBatch:
    generator = torch.Generator().manual_seed(seed)
    user = torch.randint(0, NUM_USERS, (size,), generator=generator, dtype=torch.int32)
    item = torch.randint(0, NUM_ITEMS, (size,), generator=generator, dtype=torch.int32)
    rating = torch.randint(1, 11, (size,), generator=generator).float() / 2
    return RatingBatch(user.to(device), item.to(device), rating.to(device))


@pytest.mark.slow
@pytest.mark.parametrize("configs, name, precision", [
    (["quickstart.yaml"], "quickstart", "32-true"), (["quickstart.yaml"], "quickstart", "bf16-mixed"),
    (["quickstart.yaml", "throughput.yaml"], "throughput", "32-true"),
    (["quickstart.yaml", "throughput.yaml"], "throughput", "bf16-true"),  # the fast path's bfloat16 tables
    (["quickstart.yaml", "full25m.yaml"], "full25m", "32-true"),
], ids=["quickstart (RowAdam)", "quickstart bf16-mixed", "throughput (FusedRowAdagrad)", "throughput bf16-true",
        "full25m (FusedRowAdagrad, SVD++)"])
def test_cli_fits_and_tests_on_cuda(tmp_path: Path, precision: str, configs: list[str], name: str) -> None:
    args = [arg for config in configs for arg in ("--config", str(CONFIGS / config))]
    args += [*SMALL, "--trainer.precision", precision]
    if "full25m.yaml" in configs:  # its data is ML-25M: a small synthetic set instead
        args += ["--data.data_dir", "data/small", "--data.prepare.source", "synthetic"]
    fit = run_cli(["fit", *args], tmp_path)
    assert fit.returncode == 0, fit.stderr[-4000:]
    run_dir = tmp_path / "runs" / name / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file(), sorted(str(p) for p in tmp_path.rglob("*.ckpt"))
    test = run_cli(["test", *args, "--ckpt_path", str(last)], tmp_path)
    assert test.returncode == 0, test.stderr[-4000:]
    assert "test/rmse" in test.stdout


@pytest.mark.parametrize("optimizer", [partial(RowAdagrad, lr=0.05), partial(RowAdam, lr=0.01)],
                         ids=["RowAdagrad", "RowAdam"])
def test_sparse_step_on_cuda_updates_only_the_batch_rows(optimizer) -> None:
    device = torch.device("cuda")
    module = RatingPredictor(NUM_USERS, NUM_ITEMS, 0.5, 5.0, 3.5, embedding_dim=16, l2=0.01, sparse=True,
                             optimizer=optimizer).to(device)
    opt = module.configure_optimizers()
    batch = random_batch(64, device)
    before = module.model.user_factors.weight.detach().clone()
    loss, _ = module.loss(batch)
    loss.backward()
    assert module.model.user_factors.weight.grad.is_sparse
    opt.step()
    changed = (module.model.user_factors.weight.detach() != before).any(1)
    touched = torch.zeros(NUM_USERS, dtype=torch.bool, device=device)
    touched[batch.user.long()] = True
    assert torch.equal(changed, touched)


def test_row_adagrad_step_makes_no_host_sync() -> None:
    """The sparse path's step (lookup, loss, backward, RowAdagrad) stays on the GPU."""
    device = torch.device("cuda")
    module = RatingPredictor(NUM_USERS, NUM_ITEMS, 0.5, 5.0, 3.5, embedding_dim=16, l2=0.01, sparse=True,
                             optimizer=partial(RowAdagrad, lr=0.05)).to(device)
    opt = module.configure_optimizers()
    batches = [random_batch(4096, device, seed) for seed in range(3)]
    loss, _ = module.loss(batches[0])  # first step outside: lazy state and allocator warm-up
    loss.backward()
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[1:]:
            loss, _ = module.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


def test_marking_seen_rows_makes_no_host_sync() -> None:
    module = RatingPredictor(NUM_USERS, NUM_ITEMS, 0.5, 5.0, 3.5, embedding_dim=4).to("cuda")
    batch = random_batch(4096, torch.device("cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        module.model.mark_seen(batch.user, batch.item)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert module.model.user_seen[batch.user.long()].all().item()


def test_fused_update_makes_no_host_sync_and_matches_row_adagrad() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    reference = RatingPredictor(NUM_USERS, NUM_ITEMS, 0.5, 5.0, 3.5, embedding_dim=16, l2=0.01, sparse=True,
                                optimizer=partial(RowAdagrad, lr=0.05)).to(device)
    fused = RatingPredictor(NUM_USERS, NUM_ITEMS, 0.5, 5.0, 3.5, embedding_dim=16, l2=0.01, sparse=True).to(device)
    fused.load_state_dict(reference.state_dict())
    reference_opt = reference.configure_optimizers()
    fused_opt = FusedRowAdagrad(fused.parameters(), lr=0.05)
    batches = [random_batch(4096, device, seed) for seed in range(3)]
    fused_opt.update(fused.model, *batches[0], l2=0.01, l2_bias=0.01)  # lazy state outside the check
    loss, _ = reference.loss(batches[0])
    loss.backward()
    reference_opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[1:]:
            fused_opt.update(fused.model, *batch, l2=0.01, l2_bias=0.01)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for batch in batches[1:]:
        loss, _ = reference.loss(batch)
        reference_opt.zero_grad(set_to_none=True)
        loss.backward()
        reference_opt.step()
    for expected, actual in zip(reference.parameters(), fused.parameters()):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_checkpoint_from_a_cuda_fit_reloads_to_the_same_predictions(tmp_path: Path, precision: str) -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    module = RatingPredictor(NUM_USERS, NUM_ITEMS, 0.5, 5.0, 3.5, embedding_dim=16, l2=0.01, sparse=True,
                             optimizer=partial(FusedRowAdagrad, lr=0.05))
    train = [random_batch(1024, torch.device("cpu"), seed) for seed in range(8)]
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision=precision, max_epochs=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(train, batch_size=None))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    probe = random_batch(2048, torch.device("cuda"), seed=99)
    module = module.to("cuda").eval()
    with torch.no_grad():
        expected = module(probe.user, probe.item)
    on_gpu = RatingPredictor.load_from_checkpoint(path, map_location="cuda").eval()
    on_cpu = RatingPredictor.load_from_checkpoint(path, map_location="cpu").eval()
    with torch.no_grad():
        assert torch.equal(on_gpu(probe.user, probe.item), expected)
        torch.testing.assert_close(on_cpu(probe.user.cpu(), probe.item.cpu()), expected.cpu())
