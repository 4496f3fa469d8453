"""`RatingsDataModule`: a prepared dataset folder as Lightning dataloaders of `RatingBatch`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import pyarrow.parquet as pq
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_mf.data.loaders import StreamLoader, TrainLoader
from lightning_mf.data.schema import ITEM, ITEMS_FILE, META_FILE, USER, USERS_FILE, DatasetMeta, split_file
from lightning_mf.data.stream import EvalStream, TrainStream
from lightning_mf.errors import DataError
from lightning_mf.prepare.options import PrepareOptions

MultiprocessingContext = Literal["spawn", "forkserver", "fork"]
PREPARED_ROOT = Path("data/prepared")
# `batch_size: auto`: the fast path's best batch per device (benchmarks/README.md).
AUTO_BATCH_SIZE = {"cpu": 32_768, "cuda": 262_144}
AUTO_STEPS_PER_EPOCH = 50  # `auto` never makes an epoch shorter than about this many steps


def is_global_zero_from_env() -> bool:
    """Whether this process is global rank 0, judged before any process group exists.

    Reads torchrun's `RANK`, SLURM's `SLURM_PROCID`, or Lightning's launcher's `NODE_RANK` and
    `LOCAL_RANK` (its rank 0 is the original process, which has neither).
    """
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name):
            return int(os.environ[name]) == 0
    return int(os.environ.get("NODE_RANK") or 0) == 0 and int(os.environ.get("LOCAL_RANK") or 0) == 0


def wait_for_meta(folder: Path, timeout: float, poll: float = 1.0) -> None:
    """Blocks until `folder/meta.json` exists (rank 0 is preparing it), or raises after `timeout` s."""
    path = folder / META_FILE
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() >= deadline:
            raise DataError(
                f"waited {timeout:g} s for {path}, which global rank 0 writes when it prepares the dataset; "
                "see rank 0's error, raise data.prepare_timeout, or run `python -m lightning_mf prepare` first."
            )
        time.sleep(poll)


def default_data_dir(prepare: PrepareOptions | None, root: Path = PREPARED_ROOT) -> Path:
    """Where a dataset made from `prepare` lives when no `data_dir` is given: named by content."""
    if prepare is None:
        raise DataError("give data.data_dir (a prepared folder), or data.prepare to build one")
    from lightning_mf.prepare.pipeline import fingerprint_of

    if prepare.source == "synthetic":
        label = f"synthetic-{prepare.synthetic_kind}"
    else:
        label = Path(prepare.source).name.removesuffix(".zip") or "dataset"
    return root / f"{label}-{fingerprint_of(prepare)[:12]}"


class RatingsDataModule(pl.LightningDataModule):
    """Streams a prepared dataset folder (see `lightning_mf.data.schema`) as `RatingBatch` batches.

    `meta.json` is read here, so `num_users`, `num_items`, `rating_min`, `rating_max` and
    `global_mean` are known before the model is built (the CLI links them into it). Given `prepare`
    options, the folder is prepared first if needed: by global rank 0, while the other ranks wait.

    Training reshuffles row-group order and rows within `shuffle_window` every epoch and shards the
    stream so every rating is seen once per epoch across ranks and workers, with equal batch counts
    per rank (`lightning_mf.data.stream` explains the arithmetic). Validation, test and predict
    stream their user-sorted files in order, in batches of whole users.

    Args:
        data_dir: The prepared dataset folder (created by `prepare` when `prepare` is given).
            Unset with `prepare` given: `data/prepared/<source>-<fingerprint>`, one folder per
            distinct source and options, so configs that differ only in data never collide.
        prepare: How to prepare `data_dir` if it is not prepared yet (`source`, split, filters...);
            an existing folder prepared with the same options is reused. Unset: `data_dir` must
            already be prepared.
        batch_size: Training ratings per step, over all DDP ranks together (the global batch: each
            of W ranks takes `batch_size // W`), so a recipe trains alike on any number of devices.
            The last batch of each epoch also takes the remainder (up to one rating more per rank)
            unless `drop_remainder` is set. `auto`: 32,768 on a CPU, 262,144 on a GPU (the fast
            path's best; see benchmarks/README.md), but at most a fiftieth of the training ratings
            (a power of two, at least 1,024), so that an epoch takes about 50 steps or more.
        eval_batch_size: Target ratings per validation / test / predict batch; batches end on user
            boundaries, so sizes vary by about one user's ratings.
        shuffle_window: Training rows shuffled together each epoch (about 20 bytes per row; about
            three windows are in memory at once). Larger mixes more, smaller saves memory.
        drop_remainder: Make every training batch exactly `batch_size` by skipping, each epoch, the
            fewer than `batch_size` (+1) ratings per rank that do not fill one (useful for
            fixed-shape compilation).
        num_workers: DataLoader worker processes per rank; 0 streams in the main process, where
            reading already runs in background threads. Workers persist across epochs; with
            `spawn`, a script that uses them needs the `if __name__ == "__main__":` guard.
        multiprocessing_context: How workers start. `spawn` (default) starts clean interpreters,
            immune to locks held by the parent's thread pools (polars, OpenMP); `forkserver`
            likewise; `fork` starts faster but is only safe if the parent never ran polars.
        pin_memory: Pin batches in page-locked memory for faster, asynchronous GPU copies; `auto`:
            when the trainer's device is a GPU.
        seed: Base of the per-epoch shuffle; epoch e uses `seed + e`. Must be >= 0. Independent
            of `seed_everything`, so the data order does not change with the model's seed.
        predict_split: The split `predict` streams: `val` or `test`.
        prepare_timeout: Seconds ranks other than 0 wait for rank 0 to prepare `data_dir`.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        prepare: PrepareOptions | None = None,
        batch_size: int | Literal["auto"] = 1024,
        eval_batch_size: int = 65_536,
        shuffle_window: int = 262_144,
        drop_remainder: bool = False,
        num_workers: int = 0,
        multiprocessing_context: MultiprocessingContext = "spawn",
        pin_memory: bool | Literal["auto"] = False,
        seed: int = 42,
        predict_split: Literal["val", "test"] = "test",
        prepare_timeout: float = 3600.0,
    ) -> None:
        super().__init__()
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise DataError(f"data.batch_size must be an integer >= 1 or auto, found {batch_size!r}")
        for name, value, low in [
            ("eval_batch_size", eval_batch_size, 1),
            ("shuffle_window", shuffle_window, 1),
            ("num_workers", num_workers, 0),
            ("seed", seed, 0),
        ]:
            if value < low:
                raise DataError(f"data.{name} must be >= {low}, found {value}")
        if multiprocessing_context not in ("spawn", "forkserver", "fork"):
            raise DataError(
                f"data.multiprocessing_context must be spawn, forkserver or fork, found {multiprocessing_context!r}"
            )
        if predict_split not in ("val", "test"):
            raise DataError(f"data.predict_split must be 'val' or 'test', found {predict_split!r}")
        if isinstance(prepare, dict):  # as stored in a checkpoint's hyperparameters
            prepare = PrepareOptions(**prepare)
        self.save_hyperparameters()
        if prepare is not None:  # plain values, so checkpoints load with torch.load(weights_only=True)
            self.hparams["prepare"] = prepare.as_dict()
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir(prepare)
        self.prepare = prepare
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.shuffle_window, self.drop_remainder, self.seed = shuffle_window, drop_remainder, seed
        self.num_workers, self.multiprocessing_context = num_workers, multiprocessing_context
        self.pin_memory, self.predict_split = pin_memory, predict_split
        # One preparer for all nodes: data_dir must be on storage every node sees.
        self.prepare_data_per_node = False
        self._prepared = False
        if prepare is not None:
            if is_global_zero_from_env():
                self.prepare_data()
            else:
                wait_for_meta(self.data_dir, prepare_timeout)
        try:
            self.meta = DatasetMeta.load(self.data_dir)
        except (FileNotFoundError, ValueError) as error:
            raise DataError(str(error)) from error

    @property
    def num_users(self) -> int:
        return self.meta.num_users

    @property
    def num_items(self) -> int:
        return self.meta.num_items

    @property
    def rating_min(self) -> float:
        """Lowest rating of the dataset's scale (not of the data); predictions are clipped to it."""
        return float(self.meta.rating_scale.min)

    @property
    def rating_max(self) -> float:
        return float(self.meta.rating_scale.max)

    @property
    def global_mean(self) -> float:
        """Mean training rating."""
        return float(self.meta.rating["mean"])

    def prepare_data(self) -> None:
        """Runs `prepare` into `data_dir` once (it reuses a finished folder with the same options)."""
        if self.prepare is None or self._prepared:
            return
        from lightning_mf.prepare.pipeline import prepare_dataset  # imports polars; not needed otherwise

        prepare_dataset(self.prepare, self.data_dir)
        self._prepared = True

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def _training_position(self) -> tuple[int, int] | None:
        """The trainer's epoch and the batches of it its loop has finished, which a resumed fit
        continues after; None without a trainer."""
        if self.trainer is None:
            return None
        loop = getattr(self.trainer, "fit_loop", None)
        if loop is None:  # a stand-in trainer that only knows its epoch
            return self.trainer.current_epoch, 0
        # Lightning loads a resumed loader's state when it sets the loader up after restoring the
        # checkpoint; whatever needs the loader's length before that (`estimated_stepping_batches`
        # in configure_optimizers) sets it up too early, and the state is still pending: load it now.
        loop._load_combined_loader_states()
        return self.trainer.current_epoch, loop.epoch_loop.batch_progress.current.completed

    def _trained_batches(self) -> int | None:
        """Batches of the current epoch the trainer has trained, counted in the main process (the
        fetcher and the workers have read further; a checkpoint written at a batch's end counts
        it); None without a trainer."""
        return None if self.trainer is None else self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint records of its dataset, so it is never resumed or scored on another."""
        return {"data_dir": str(self.data_dir), "fingerprint": self.meta.fingerprint}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.check_trained_on(state_dict)

    def check_trained_on(self, state_dict: dict[str, Any]) -> None:
        """Refuses a checkpoint trained on another dataset folder (its `state_dict`): its indices would
        mean other users and items. A checkpoint of an earlier version, without the record, passes."""
        saved = state_dict.get("fingerprint")
        if saved is not None and saved != self.meta.fingerprint:
            raise DataError(
                f"the checkpoint was trained on the dataset {state_dict.get('data_dir')} (fingerprint {saved[:12]}), "
                f"but data.data_dir is {self.data_dir} (fingerprint {self.meta.fingerprint[:12]}): its user and item "
                "indices would name other users and items. Give the dataset it was trained on "
                "(--data.data_dir or the same data.prepare options), or train afresh without --ckpt_path."
            )

    def _loader_options(self) -> dict[str, Any]:
        pin = self.pin_memory
        if pin == "auto":
            pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        options: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": pin}
        if self.num_workers > 0:
            options.update(multiprocessing_context=self.multiprocessing_context, persistent_workers=True)
        return options

    def train_stream(self) -> TrainStream:
        """This rank's training stream."""
        rank, world_size = self._rank_and_world()
        path = self.data_dir / split_file("train")
        stream = TrainStream(path, self.rank_batch_size(), self.shuffle_window, self.seed, rank, world_size,
                             self.drop_remainder, self.num_workers)
        expected = self.meta.rows("train")
        if stream.num_rows != expected:
            raise DataError(
                f"{path} holds {stream.num_rows} rows but {self.data_dir / META_FILE} says {expected}; "
                "the folder is inconsistent: re-run `prepare` with --force."
            )
        return stream

    def global_batch_size(self) -> int:
        """`batch_size`, with `auto` resolved for the trainer's device (a CPU without a trainer)."""
        if self.batch_size != "auto":
            return self.batch_size
        device = self.trainer.strategy.root_device.type if self.trainer is not None else "cpu"
        by_data = 1 << max(10, (self.meta.rows("train") // AUTO_STEPS_PER_EPOCH).bit_length() - 1)
        return min(AUTO_BATCH_SIZE["cuda" if device == "cuda" else "cpu"], by_data)

    def rank_batch_size(self) -> int:
        """This rank's share of the global batch."""
        world_size = self._rank_and_world()[1]
        global_size = self.global_batch_size()
        if global_size < world_size:
            raise DataError(f"data.batch_size {global_size} is smaller than the number of processes ({world_size}): "
                            "every rank needs at least one rating per step")
        return global_size // world_size

    def eval_stream(self, split: Literal["val", "test"]) -> EvalStream:
        """This rank's stream of an evaluation split."""
        rank, world_size = self._rank_and_world()
        return EvalStream(self.data_dir / split_file(split), self.eval_batch_size, rank, world_size)

    def train_interactions(self) -> tuple[Tensor, Tensor]:
        """User and item indices of every training rating, in file order (for SVD++'s N(u)).

        Reads the two columns whole: 8 bytes per training rating.
        """
        table = pq.read_table(self.data_dir / split_file("train"), columns=[USER, ITEM])
        user, item = (torch.from_numpy(table.column(name).to_numpy().copy()) for name in (USER, ITEM))
        return user, item

    def train_counts(self) -> tuple[Tensor, Tensor]:
        """Number of training ratings of every user and every item, as `prepare` recorded them."""
        counts = []
        for name in (USERS_FILE, ITEMS_FILE):
            column = pq.read_table(self.data_dir / name, columns=["train_ratings"]).column("train_ratings")
            counts.append(torch.from_numpy(column.to_numpy().copy()))
        return counts[0], counts[1]

    def train_dataloader(self) -> DataLoader:
        return TrainLoader(self.train_stream(), self._training_position, self._trained_batches,
                           **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        return StreamLoader(self.eval_stream("val"), **self._loader_options())

    def test_dataloader(self) -> DataLoader:
        return StreamLoader(self.eval_stream("test"), **self._loader_options())

    def predict_dataloader(self) -> DataLoader:
        return StreamLoader(self.eval_stream(self.predict_split), **self._loader_options())
