"""The benchmarks run end to end and report what they promise (never how fast: timings vary)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

THROUGHPUT_KEYS = {
    "device", "precision", "machine", "torch", "threads", "batch_size", "train_rows",
    "lmf_ratings_per_s", "seed_config_ratings_per_s", "surprise_ratings_per_s", "loader_ratings_per_s",
    "peak_rss_mb", "epoch_s", "epoch_s_kind", "warmup_s", "val_s", "val_rmse",
    "lmf_over_surprise", "lmf_over_surprise_sgd", "surprise_epochs", "surprise_sgd_ratings_per_s",
    "lmf_over_seed_config", "loader_over_lmf", "load_average_before",
}


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_throughput_quick_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    args = ["--rows", "20000", "--users", "400", "--items", "300", "--batch_size", "1024", "--quick",
            "--cache_dir", str(tmp_path / "cache"), "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "throughput.py"), *args], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert THROUGHPUT_KEYS <= figures.keys(), THROUGHPUT_KEYS - figures.keys()
    for key in ("lmf_ratings_per_s", "seed_config_ratings_per_s", "loader_ratings_per_s", "peak_rss_mb", "epoch_s",
                "warmup_s", "val_s", "lmf_over_seed_config", "loader_over_lmf"):
        assert positive(figures[key]), (key, figures[key])
    assert figures["device"].startswith("cpu") and figures["threads"] == 1
    # 19,200 training ratings in batches of 1,024 are one short epoch: measured, not extrapolated.
    assert figures["train_rows"] == 19_200 and figures["epoch_s_kind"].startswith("measured")
    try:
        import surprise  # noqa: F401
    except ImportError:
        assert figures["surprise_ratings_per_s"] is None and "not installed" in figures["surprise_note"]
    else:
        for key in ("surprise_ratings_per_s", "surprise_sgd_ratings_per_s", "lmf_over_surprise", "lmf_over_surprise_sgd"):
            assert positive(figures[key]), (key, figures[key])
        # The headline Surprise figure is a multi-epoch fit, its table initialisation amortized.
        assert figures["surprise_epochs"] == throughput_defaults().surprise_epochs >= 5
        assert figures["surprise_sgd_ratings_per_s"] >= figures["surprise_ratings_per_s"]
    assert "| lightning_mf fast path" in result.stdout and "lightning_mf / Surprise (5-epoch fit)" in result.stdout
    assert "lightning_mf / Surprise's SGD loop alone" in result.stdout
    assert (tmp_path / "cache" / "synthetic-20000r-400u-300i" / "meta.json").is_file()
    assert not list(tmp_path.glob("runs")), "fit logs belong in the benchmark's scratch folder"


def throughput_defaults():
    import throughput

    return throughput.parse([])


def test_throughput_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    import throughput

    with pytest.raises(SystemExit):
        throughput.parse(["--rows", "0"])
    assert "--rows must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        throughput.parse(["--batch_size", "-5"])
    assert "--batch_size must be >= 1" in capsys.readouterr().err


def test_throughput_defaults_follow_the_device() -> None:
    import throughput

    cpu = throughput.parse([])
    assert (cpu.batch_size, cpu.threads, cpu.rows) == (throughput.DEFAULT_BATCH["cpu"], 1, 25_000_000)
    assert cpu.surprise_epochs >= 5  # enough epochs that Surprise's table initialisation is amortized
    assert cpu.fit_overrides == []
    varied = throughput.parse(["--skip", "seed", "--", "--model.optimizer.init_args.threads", "1"])
    assert varied.skip == ["seed"] and varied.fit_overrides == ["--model.optimizer.init_args.threads", "1"]
    quick = throughput.parse(["--quick"])
    assert quick.seed_steps <= 20 and quick.surprise_rows <= 20_000


def test_fit_timer_rejects_no_warmup(tmp_path: Path) -> None:
    from fit_timer import FitTimer

    with pytest.raises(ValueError, match="warmup_batches must be >= 1, got 0"):
        FitTimer(str(tmp_path / "t.json"), warmup_batches=0)


def test_gpu_check_fails_cleanly_without_cuda(tmp_path: Path) -> None:
    """Without CUDA (and without the dry-run switch) the GPU check stops at once and says why."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("GPU_CHECK_DRY_RUN", None)
    result = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert "torch sees no CUDA device" in result.stdout
    assert "torch sees no CUDA device" in (tmp_path / "gpu_check.log").read_text()


@pytest.mark.slow
@pytest.mark.realdata
def test_fast_path_matches_the_dense_path_rmse_on_ml_latest_small(ml_latest_small_dir: Path, tmp_path: Path) -> None:
    import torch
    from rmse_parity import TOLERANCE, compare

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = compare(ml_latest_small_dir, tmp_path)
    finally:
        torch.set_num_threads(threads)
    dense, fast = results["dense"]["test_rmse"], results["fast"]["test_rmse"]
    assert fast <= dense + TOLERANCE, results
    # Both are real fits, well below the global-mean baseline (~1.04 on this split).
    assert max(dense, fast) < 0.90, results


def test_step_stages_reports_every_stage_of_every_backend(tmp_path: Path) -> None:
    out = tmp_path / "stages.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "step_stages.py"), "--users", "300",
                             "--items", "200", "--dim", "16", "--batch_size", "256", "--steps", "3", "--warmup", "1",
                             "--backends", "eager,native", "--json", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    from step_stages import STAGES

    assert set(figures["milliseconds"]) == {"eager", "native"} and figures["timed_steps"] == 2
    for backend, stages in figures["milliseconds"].items():
        assert set(stages) == set(STAGES) and all(positive(value) for value in stages.values()), backend
    from machine import cpu_model

    assert result.stdout.startswith(f"machine: {cpu_model()}, "), "the CPU model comes with the figures"
    assert "| native |" in result.stdout and "| eager |" in result.stdout
