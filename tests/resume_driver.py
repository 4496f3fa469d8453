"""The fits `test_resume.py` compares, run through the CLI in one process (one import of Lightning).

    python tests/resume_driver.py DATA_DIR OTHER_DATA_DIR WORK_DIR

For each training path (dense with dropout, sparse SGD with cosine decay, FusedRowAdagrad): a
straight 2-epoch fit that also writes a checkpoint after every step, then fits resumed from the
end of epoch 0, from the middle of epoch 1 and (fused) from the last step of epoch 0, and a fit
stopped mid-epoch by `trainer.should_stop` then resumed from its `last.ckpt`. Then the fused fit
with two DataLoader workers, straight and resumed mid-epoch, and a `test` of a checkpoint on
another dataset folder. Every fit's record (batches trained, final weights, train loss) lands
under WORK_DIR/<fit>/; `results.json` holds what is not a file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lightning_mf.cli import build_cli
from lightning_mf.errors import DataError

EPOCHS, BATCH = 2, 96  # 1,000 training ratings: 11 batches an epoch, the last of 40
MID_EPOCH_STEP, LAST_STEP_OF_EPOCH_0 = 16, 11
PATHS = {
    "default": ["--model.dropout", "0.1", "--model.optimizer", "torch.optim.Adam", "--model.optimizer.lr", "0.01"],
    "sparse": ["--model.sparse", "true", "--model.l2", "0.02", "--model.cosine_decay", "true", "--model.loss_reduction",
               "sum", "--model.optimizer", "torch.optim.SGD", "--model.optimizer.lr", "0.05"],
    "fused": ["--model.l2", "0.02", "--model.optimizer", "lightning_mf.training.fused.FusedRowAdagrad",
              "--model.optimizer.lr", "0.1"],
}


def fit_args(data: Path, work: Path, path: str, name: str) -> list[str]:
    """The `fit` arguments shared by every run of a path (the SIGUSR1 and kill tests use them too)."""
    return [
        "fit", "--seed_everything", "7", "--data.data_dir", str(data), "--data.batch_size", str(BATCH),
        "--data.shuffle_window", "128", "--model.embedding_dim", "8", "--trainer.max_epochs", str(EPOCHS),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(work / "runs"), "--trainer.logger.init_args.name", name,
        "--trainer.logger.init_args.version", "0", "--checkpoint.save_top_k", "-1", "--checkpoint.filename", "epoch{epoch}",
        "--trainer.callbacks+=resume_callbacks.Record", f"--trainer.callbacks.out={work / name}", *PATHS[path],
    ]


def every_step(folder: Path) -> list[str]:
    return ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=1",
            "--trainer.callbacks.save_top_k=-1", f"--trainer.callbacks.dirpath={folder}",
            "--trainer.callbacks.filename=s{step:03d}", "--trainer.callbacks.auto_insert_metric_name=false"]


def checkpoints(work: Path, name: str) -> Path:
    return work / "runs" / name / "version_0" / "checkpoints"


def main(data: Path, other_data: Path, work: Path) -> None:
    results: dict[str, object] = {}
    for path in PATHS:
        build_cli(fit_args(data, work, path, f"{path}-straight") + every_step(work / f"{path}-steps"))
        resumed_from = {"epoch-end": checkpoints(work, f"{path}-straight") / "epoch0.ckpt",
                        "mid-epoch": work / f"{path}-steps" / f"s{MID_EPOCH_STEP:03d}.ckpt"}
        if path == "fused":
            resumed_from["last-step-of-epoch"] = work / f"{path}-steps" / f"s{LAST_STEP_OF_EPOCH_0:03d}.ckpt"
        for case, checkpoint in resumed_from.items():
            build_cli(fit_args(data, work, path, f"{path}-{case}") + ["--ckpt_path", str(checkpoint)])
        build_cli(fit_args(data, work, path, f"{path}-stopped")
                  + ["--trainer.callbacks+=resume_callbacks.StopAt", f"--trainer.callbacks.step={MID_EPOCH_STEP}"])
        stopped = checkpoints(work, f"{path}-stopped") / "last.ckpt"
        build_cli(fit_args(data, work, path, f"{path}-stopped-resumed") + ["--ckpt_path", str(stopped)])
    workers = ["--data.num_workers", "2"]
    build_cli(fit_args(data, work, "fused", "workers-straight") + workers + every_step(work / "workers-steps"))
    build_cli(fit_args(data, work, "fused", "workers-resumed") + workers
              + ["--ckpt_path", str(work / "workers-steps" / f"s{MID_EPOCH_STEP:03d}.ckpt")])
    try:
        build_cli(["test", "--data.data_dir", str(other_data), "--trainer.logger", "false",
                   "--ckpt_path", str(checkpoints(work, "fused-straight") / "last.ckpt")])
        results["other_dataset_error"] = None
    except DataError as error:
        results["other_dataset_error"] = str(error)
    (work / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
