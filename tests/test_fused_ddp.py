"""The fast path under DDP (2 gloo processes on CPU): a step equals one process's step on the union
batch, the full-25M recipe trains every rating once per epoch on both ranks alike, and what cannot
run is refused up front."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import make_dataset, read_split

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def environment() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK") + tuple(k for k in env if k.startswith("SLURM_")):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def ddp_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fused-ddp")
    done = subprocess.run([sys.executable, str(TESTS / "fused_ddp_step.py"), str(out)], env=environment(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adagrad", "sgd"])
@pytest.mark.parametrize("exchange", ["ratings", "dense"])
def test_a_ddp_step_equals_a_single_process_step_on_the_union_batch(ddp_steps: Path, name: str,
                                                                     exchange: str) -> None:
    """Three steps of FusedRowAdagrad / FusedSGD with SVD++, row weights on factors and biases, a
    mean loss over the global batch and a refresh: both ranks hold the single process's weights."""
    single = torch.load(ddp_steps / f"{name}-single.pt")
    ranks = [torch.load(ddp_steps / f"{name}-{exchange}-rank{rank}.pt") for rank in range(2)]
    for key, expected in single.items():
        for rank, weights in enumerate(ranks):
            torch.testing.assert_close(weights[key], expected, rtol=1e-5, atol=1e-6, msg=f"rank {rank}: {key}")
        assert torch.equal(ranks[0][key], ranks[1][key]), f"the ranks disagree on {key}"
    untrained = torch.load(ddp_steps / "untrained.pt")
    assert not torch.allclose(single["user_factors.weight"], untrained["user_factors.weight"]), "the steps moved it"
    assert not torch.allclose(single["implicit_factors.weight"], untrained["implicit_factors.weight"]), "y refreshed"


@pytest.mark.slow
def test_full25m_recipe_runs_under_ddp_on_cpus_once_per_epoch(tmp_path: Path) -> None:
    """`fit --config configs/full25m.yaml` with its data overridden, on 2 CPU processes (gloo)."""
    data = tmp_path / "data"
    make_dataset(data, train_rows=1001, val_rows=200, test_rows=100, num_users=40, num_items=30, row_group_size=128)
    args = [sys.executable, "-m", "lightning_mf", "fit", "--config", str(REPO_ROOT / "configs" / "full25m.yaml"),
            "--data.data_dir", str(data), "--data.prepare", "null", "--data.batch_size", "64",
            "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
            "--trainer.strategy", "ddp", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false", "--model.optimizer.init_args.compile", "false",
            "--trainer.callbacks+=resume_callbacks.Record", f"--trainer.callbacks.out={tmp_path / 'record'}"]
    done = subprocess.run(args, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [torch.load(tmp_path / "record" / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), f"the ranks disagree on {key}"
    table = read_split(data, "train")
    expected = Counter(zip(*(table.column(name).to_pylist() for name in ("user", "item", "rating"))))
    for epoch in range(2):
        seen: Counter = Counter()
        for rank in ranks:
            rows = rank["rows"][:, rank["rows"][1] == epoch]
            seen.update(zip(rows[2].int().tolist(), rows[3].int().tolist(), rows[4].float().tolist()))
        assert seen == expected, f"epoch {epoch}: ratings missing or repeated across ranks"
    # data.batch_size is the global batch: 64 ratings a step over 2 ranks, 32 each, 16 steps an epoch.
    for rank in ranks:
        assert rank["rows"][0].unique().tolist() == list(range(32))


def test_sparse_autograd_is_refused_on_nccl(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_mf.training import optimization
    from lightning_mf.training.module import RatingPredictor

    module = RatingPredictor(10, 10, 1.0, 5.0, 3.0, sparse=True, optimizer=torch.optim.SGD)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    monkeypatch.setattr(optimization, "_backend", lambda: "nccl")
    with pytest.raises(ValueError, match=r"NCCL does not have.*Use lightning_mf.training.fused.FusedRowAdagrad"):
        optimization.check_optimizer(optimizer, module.model, None)
    monkeypatch.setattr(optimization, "_backend", lambda: "gloo")
    optimization.check_optimizer(optimizer, module.model, None)


def test_the_fused_path_is_refused_on_sharding_strategies() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_mf.training.optimization import check_trainer_for_fused

    trainer = SimpleNamespace(gradient_clip_val=None, accumulate_grad_batches=1, precision="32-true", world_size=2,
                              strategy=FSDPStrategy.__new__(FSDPStrategy))
    with pytest.raises(ValueError, match=r"FSDPStrategy.*replicated tables.*--trainer.strategy ddp"):
        check_trainer_for_fused(trainer)  # type: ignore[arg-type]
