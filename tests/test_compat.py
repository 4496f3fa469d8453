"""Earlier versions' import paths, configs and checkpoints keep working after the package moved by stage."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lightning_mf._aliases import MOVED
from lightning_mf.training.module import RatingPredictor

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0_1"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_path_imports_as_the_module_that_holds_the_code(old: str) -> None:
    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__spec__.name == MOVED[old], "the real module keeps its own spec"


def test_old_class_paths_name_the_same_classes() -> None:
    from lightning_mf.fused import FusedRowAdagrad as OldFused
    from lightning_mf.optim import RowAdam as OldRowAdam
    from lightning_mf.training.fused import FusedRowAdagrad
    from lightning_mf.training.optimizers import RowAdam

    assert OldFused is FusedRowAdagrad and OldRowAdam is RowAdam


def test_the_clis_warning_filters_hold_only_inside_its_calls() -> None:
    code = """
import warnings
import lightning_mf.cli
ours = [f for f in warnings.filters if f[1] is not None and "IterableDataset" in f[1].pattern]
print(len(ours))
with warnings.catch_warnings():
    lightning_mf.cli._ignore_known_warnings()
    print(sum(f[1] is not None and "IterableDataset" in f[1].pattern for f in warnings.filters))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.stdout.split() == ["0", "1"], done.stderr[-2000:]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lightning_mf", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def printed(stdout: str, name: str) -> float:
    match = re.search(rf"{re.escape(name)}\s+([0-9.]+)", stdout)
    assert match, f"{name} not in the output:\n{stdout[-2000:]}"
    return float(match.group(1))


@pytest.mark.slow
def test_old_configs_and_checkpoints_test_to_the_same_metrics_and_resume(tmp_path: Path) -> None:
    expected = json.loads((FIXTURES / "expected.json").read_text())
    for name, metrics in expected.items():
        folder = FIXTURES / name
        saved = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
        assert saved["hyper_parameters"]["optimizer"]["class_path"].startswith(("lightning_mf.optim.",
                                                                               "lightning_mf.fused."))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = RatingPredictor.load_from_checkpoint(folder / "last.ckpt", map_location="cpu")
        assert torch.equal(module.model.user_factors.weight, saved["state_dict"]["model.user_factors.weight"])
        done = run(["test", "--config", str(folder / "config.yaml"), "--ckpt_path", str(folder / "last.ckpt"),
                    "--trainer.logger", "false", "--trainer.default_root_dir", f"test-{name}"], tmp_path)
        assert done.returncode == 0, done.stderr[-4000:]
        for metric, value in metrics.items():
            assert printed(done.stdout, metric) == pytest.approx(value, abs=1e-6), (name, metric)
    # The fused run resumes from its old checkpoint, LambdaLR schedule state and all, for a third epoch.
    folder = FIXTURES / "fused"
    done = run(["fit", "--config", str(folder / "config.yaml"), "--ckpt_path", str(folder / "last.ckpt"),
                "--trainer.max_epochs", "3", "--trainer.logger.init_args.name", "resumed"], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    resumed = torch.load(tmp_path / "runs" / "resumed" / "version_0" / "checkpoints" / "last.ckpt",
                         map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 30
