"""Exact resume: a fit interrupted anywhere and resumed ends with the weights of the uninterrupted fit.

The fits run through the CLI in subprocesses (`resume_driver.py` runs the in-process ones in one
process); every comparison is `torch.equal` on the final weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import make_dataset, read_split
from resume_driver import LAST_STEP_OF_EPOCH_0, MID_EPOCH_STEP, PATHS, fit_args

from lightning_mf.data.resume_plan import batches_per_message, block_lengths, message_sizes, resume_plan
from lightning_mf.errors import DataError
from lightning_mf.training.checkpoint_io import AtomicCheckpointIO
from lightning_mf.training.optimization import check_trainer_for_fused

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK") + tuple(k for k in env if k.startswith("SLURM_")):
        env.pop(name, None)
    return {**env, **extra}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The training dataset (1,000 ratings) and another one, of other sizes and fingerprint."""
    root = tmp_path_factory.mktemp("resume-data")
    make_dataset(root / "data", train_rows=1000, val_rows=200, test_rows=100, num_users=40, num_items=30,
                 row_group_size=128)
    make_dataset(root / "other", train_rows=500, num_users=45, num_items=30, seed=1)
    return root / "data", root / "other"


@pytest.fixture(scope="module")
def driven(datasets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("resume-runs")
    done = subprocess.run([sys.executable, str(TESTS / "resume_driver.py"), *map(str, datasets), str(work)], cwd=work,
                          env=environment(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-6000:]
    return work


def record(work: Path, name: str, rank: int = 0) -> dict:
    return torch.load(work / name / f"rank{rank}.pt", weights_only=False)


def assert_same_weights(a: dict, b: dict, what: str) -> None:
    assert a["weights"].keys() == b["weights"].keys()
    for key, value in a["weights"].items():
        assert torch.equal(value, b["weights"][key]), f"{what}: {key} differs by {(value - b['weights'][key]).abs().max()}"


CASES = [(path, case) for path in PATHS for case in ("epoch-end", "mid-epoch", "stopped-resumed")]
CASES.append(("fused", "last-step-of-epoch"))
STARTS = {"epoch-end": 11, "mid-epoch": MID_EPOCH_STEP, "stopped-resumed": MID_EPOCH_STEP,
          "last-step-of-epoch": LAST_STEP_OF_EPOCH_0}


@pytest.mark.slow
@pytest.mark.parametrize(("path", "case"), CASES)
def test_a_resumed_fit_ends_bitwise_where_the_straight_fit_does(driven: Path, path: str, case: str) -> None:
    straight, resumed = record(driven, f"{path}-straight"), record(driven, f"{path}-{case}")
    assert resumed["first_step"] == STARTS[case], "resumed from the checkpoint's step, not from scratch"
    assert_same_weights(straight, resumed, f"{path}, resumed from {case}")
    # Each epoch's train loss, the one cut by the interruption included, is the straight run's exactly.
    assert resumed["train_losses"] and all(straight["train_losses"][e] == v for e, v in resumed["train_losses"].items())
    if case in ("mid-epoch", "stopped-resumed"):
        assert 1 in resumed["train_losses"], "the interrupted epoch's loss was logged"
    # Together the two runs trained exactly the straight run's batches, in its order.
    if case == "stopped-resumed":
        stopped = record(driven, f"{path}-stopped")
        assert int(stopped["rows"][0, -1]) == MID_EPOCH_STEP - 1, "stopped where asked"
        both = torch.cat([stopped["rows"], resumed["rows"]], 1)
        assert torch.equal(both, straight["rows"])


@pytest.mark.slow
def test_two_workers_resume_mid_epoch_with_the_same_batches_in_the_same_order(driven: Path) -> None:
    straight, resumed = record(driven, "workers-straight"), record(driven, "workers-resumed")
    assert resumed["first_step"] == MID_EPOCH_STEP
    tail = straight["rows"][:, straight["rows"][0] >= MID_EPOCH_STEP]
    assert torch.equal(resumed["rows"], tail)
    assert_same_weights(straight, resumed, "two workers, resumed mid-epoch")


@pytest.mark.slow
def test_a_checkpoint_of_another_dataset_is_refused_naming_both(driven: Path, datasets: tuple[Path, Path]) -> None:
    message = json.loads((driven / "results.json").read_text())["other_dataset_error"]
    assert message is not None, "testing on another dataset folder must fail"
    assert str(datasets[0]) in message and str(datasets[1]) in message and "tests-0" in message and "tests-1" in message


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lightning_mf", *args], cwd=cwd, env=environment(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigusr1_checkpoints_requeues_and_the_requeued_job_resumes_by_itself(
        driven: Path, datasets: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = dict(SLURM_JOB_ID="4242", SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
                 SLURM_JOB_NAME="lightning-mf", SCONTROL_LOG=str(tmp_path / "scontrol.log"),
                 PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = [*fit_args(datasets[0], tmp_path, "fused", "job"), "--trainer.logger.init_args.version", "null",
            "--trainer.callbacks+=resume_callbacks.Slow", f"--trainer.callbacks.marker={tmp_path / 'marker'}"]
    first = cli(args, tmp_path, **slurm)
    deadline = time.monotonic() + 120
    while not (tmp_path / "marker").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGUSR1)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 0, output[-4000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    folder = tmp_path / "runs" / "job" / "slurm-4242" / "checkpoints"
    preempted = torch.load(folder / "preempted.ckpt", weights_only=False)
    assert 3 <= preempted["global_step"] < 22, "checkpointed mid-fit, at a batch end"
    # The requeued job: the same command (less the test's slowing down), no --ckpt_path.
    second = cli(args[:-2], tmp_path, **slurm, SLURM_RESTART_COUNT="1")
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output[-4000:]
    assert "requeued: resuming from" in output
    resumed = record(tmp_path, "job")
    assert resumed["first_step"] == preempted["global_step"]
    assert_same_weights(record(driven, "fused-straight"), resumed, "preempted by SIGUSR1 and requeued")


@pytest.mark.slow
def test_a_save_killed_mid_write_leaves_the_previous_checkpoint(driven: Path, datasets: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    steps = tmp_path / "steps"
    checkpoint_every_4 = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                          "--trainer.callbacks.every_n_train_steps=4", "--trainer.callbacks.save_last=true",
                          f"--trainer.callbacks.dirpath={steps}"]
    killed = cli([*fit_args(datasets[0], tmp_path, "fused", "killed"), *checkpoint_every_4,
                  "--trainer.callbacks+=resume_callbacks.KillInSave", "--trainer.callbacks.step=12"], tmp_path)
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert (steps / ".last.ckpt.partial").is_file(), "killed while writing"
    assert torch.load(steps / "last.ckpt", weights_only=False)["global_step"] == 8, "the previous save is whole"
    resumed = cli([*fit_args(datasets[0], tmp_path, "fused", "after-kill"), "--ckpt_path", str(steps / "last.ckpt")],
                  tmp_path)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-4000:]
    assert record(tmp_path, "after-kill")["first_step"] == 8
    assert_same_weights(record(driven, "fused-straight"), record(tmp_path, "after-kill"), "resumed after a killed save")


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    whole = tmp_path / "whole.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.arange(1000.0)}, "epoch": 3}, whole)
    assert AtomicCheckpointIO().load_checkpoint(whole)["epoch"] == 3
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut.ckpt: not a readable checkpoint .*cut off while being written"):
        AtomicCheckpointIO().load_checkpoint(cut)
    assert not list(tmp_path.glob(".*partial")), "a finished save leaves no partial file"


def round_robin(lengths: list[int], per_message: int) -> list[tuple[int, int]]:
    """(worker, batch) in the order PyTorch's DataLoader hands them over: one message per worker in turn."""
    order = []
    for start in range(0, max(lengths), per_message):
        for worker, length in enumerate(lengths):
            order += [(worker, batch) for batch in range(start, min(start + per_message, length))]
    return order


@pytest.mark.parametrize(("num_batches", "num_workers", "batch_size"), [(23, 3, 65_536), (10, 4, 100_000),
                                                                        (7, 2, 262_144), (5, 0, 10)])
def test_resume_plans_continue_the_round_robin_order(num_batches: int, num_workers: int, batch_size: int) -> None:
    """For every interruption point, the rotated workers' messages continue the uninterrupted order."""
    per_message = batches_per_message(batch_size)
    lengths = block_lengths(num_batches, num_workers) if num_workers else [num_batches]
    straight = round_robin(lengths, per_message) if num_workers else [(0, b) for b in range(num_batches)]
    for trained in range(num_batches + 1):
        rotation, skips = resume_plan(num_batches, num_workers, batch_size, trained)
        workers = max(1, num_workers)
        # Physical worker p plays logical (p + rotation) % K, sending its messages from its skip on.
        queues = [[(logical, batch) for batch in range(skips[logical], lengths[logical])]
                  for logical in ((p + rotation) % workers for p in range(workers))]
        messages = [message_sizes(lengths[(p + rotation) % workers], skips[(p + rotation) % workers], batch_size)
                    for p in range(workers)]
        order, cursor = [], [0] * workers
        for round_index in range(max((len(m) for m in messages), default=0)):
            for p in range(workers):
                if round_index < len(messages[p]):
                    size = messages[p][round_index]
                    order += queues[p][cursor[p]:cursor[p] + size]
                    cursor[p] += size
        assert order == straight[trained:], (trained, rotation, skips)
    with pytest.raises(ValueError, match="trained must be in"):
        resume_plan(num_batches, num_workers, batch_size, num_batches + 1)


def test_a_mid_epoch_position_is_refused_with_other_batching(tmp_path: Path) -> None:
    from lightning_mf.data.datamodule import RatingsDataModule

    make_dataset(tmp_path, train_rows=500, row_group_size=64)
    loader = RatingsDataModule(str(tmp_path), batch_size=32).train_dataloader()
    state = {**loader.state_dict(), "batches_trained": 5, "epoch": 2}
    loader.load_state_dict(state)
    assert next(iter(loader)).user.shape == (32,) and loader.state_dict()["epoch"] == 2
    other = RatingsDataModule(str(tmp_path), batch_size=64).train_dataloader()
    with pytest.raises(DataError, match=r"stopped after 5 of 16 training batches of epoch 2.*batch_size 32 -> 64"):
        other.load_state_dict(state)
    other.load_state_dict({**state, "batches_trained": 16})  # an epoch's end: any batching continues


@pytest.mark.parametrize(("setting", "message"), [
    (dict(gradient_clip_val=1.0), r"gradient_clip_val=1.0 \(the update is applied in closed form and never clipped"),
    (dict(accumulate_grad_batches=4), r"accumulate_grad_batches=4 \(every batch is one update; raise data.batch_size"),
    (dict(precision="16-mixed"), r"precision=16-mixed \(float16 needs gradient scaling.*use 32-true, or bf16-true"),
    (dict(precision="bf16-mixed"), r"precision=bf16-mixed \(mixed precision autocasts matrix products.*bf16-true"),
])
def test_trainer_settings_the_fused_path_would_ignore_are_refused(setting: dict, message: str) -> None:
    trainer = SimpleNamespace(**{**dict(gradient_clip_val=None, accumulate_grad_batches=1, precision="32-true",
                                        world_size=1, strategy=None), **setting})
    with pytest.raises(ValueError, match=message):
        check_trainer_for_fused(trainer)  # type: ignore[arg-type]
    check_trainer_for_fused(SimpleNamespace(gradient_clip_val=None, accumulate_grad_batches=1, precision="bf16-true",
                                            world_size=1, strategy=None))


def test_the_fused_path_refuses_gradient_clipping_through_the_trainer(tmp_path: Path) -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from lightning_mf.data.batch import RatingBatch
    from lightning_mf.training.fused import FusedRowAdagrad
    from lightning_mf.training.module import RatingPredictor

    module = RatingPredictor(10, 10, 1.0, 5.0, 3.0, embedding_dim=4, optimizer=FusedRowAdagrad)
    batch = RatingBatch(torch.arange(10, dtype=torch.int32), torch.arange(10, dtype=torch.int32), torch.full((10,), 3.0))
    trainer = pl.Trainer(max_epochs=1, gradient_clip_val=0.5, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="cannot honour trainer.gradient_clip_val=0.5"):
        trainer.fit(module, DataLoader([batch], batch_size=None))


DDP_FIT = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--data.batch_size", "96"]  # the global batch: 48 per rank


@pytest.mark.slow
def test_ddp_resumed_mid_epoch_matches_the_straight_ddp_fit_on_both_ranks(datasets: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    """2 ranks (gloo): 500 ratings each, 11 batches of 48 an epoch; interrupted at step 16 of 22."""
    steps = tmp_path / "steps"
    every_step = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                  "--trainer.callbacks.every_n_train_steps=1", "--trainer.callbacks.save_top_k=-1",
                  f"--trainer.callbacks.dirpath={steps}", "--trainer.callbacks.filename=s{step:03d}",
                  "--trainer.callbacks.auto_insert_metric_name=false"]
    straight = cli([*fit_args(datasets[0], tmp_path, "sparse", "ddp-straight"), *DDP_FIT, *every_step], tmp_path)
    output = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0, output[-4000:]
    resumed = cli([*fit_args(datasets[0], tmp_path, "sparse", "ddp-resumed"), *DDP_FIT,
                   "--ckpt_path", str(steps / "s016.ckpt")], tmp_path)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-4000:]
    ranks = [(record(tmp_path, "ddp-straight", r), record(tmp_path, "ddp-resumed", r)) for r in range(2)]
    for rank, (straight_rank, resumed_rank) in enumerate(ranks):
        assert resumed_rank["first_step"] == 16
        assert_same_weights(straight_rank, resumed_rank, f"rank {rank}")
    assert_same_weights(ranks[0][1], ranks[1][1], "rank 0 against rank 1")
    # Epoch 1 was cut at step 16: its ratings, trained before the cut in one run and after it in
    # the other, are every training rating exactly once.
    table = read_split(datasets[0], "train")
    expected = Counter(zip(*(table.column(name).to_pylist() for name in ("user", "item", "rating"))))
    seen: Counter = Counter()
    for straight_rank, resumed_rank in ranks:
        for rows, keep in ((straight_rank["rows"], lambda r: (r[1] == 1) & (r[0] < 16)),
                           (resumed_rank["rows"], lambda r: r[1] == 1)):
            part = rows[:, keep(rows)]
            seen.update(zip(part[2].int().tolist(), part[3].int().tolist(), part[4].float().tolist()))
    assert seen == expected
