"""DataLoaders over our streams: batches as they come, and a training loader that resumes mid-epoch.

Lightning restores a dataloader that has `state_dict` / `load_state_dict` before it makes the
iterator of a resumed fit, and saves its state in every checkpoint. `TrainLoader`'s state is its
position: the epoch and how many of its batches were trained (as counted by the trainer in the main
process; the fetcher and the workers have read further), plus what the position depends on, so a
checkpoint resumed with another batching is refused rather than silently misread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from lightning_mf.data.batch import RatingBatch
from lightning_mf.data.resume_plan import resume_plan
from lightning_mf.data.stream import EvalStream, TrainStream
from lightning_mf.data.transport import unpack
from lightning_mf.errors import DataError

# What a mid-epoch position depends on: resuming with another value would skip other batches.
_BATCHING_KEYS = ("num_batches", "num_workers", "world_size", "batch_size", "seed", "drop_remainder")


class StreamLoader(DataLoader):
    """A DataLoader over one of our streams: batches as they are (`batch_size=None`).

    Workers send several batches per message (`PackedBatches`); iterating splits them back, so
    `len()` and the batches are the same with or without workers.
    """

    def __init__(self, dataset: TrainStream | EvalStream, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)

    def __iter__(self) -> Iterator[RatingBatch]:  # type: ignore[override]
        return unpack(super().__iter__())


class TrainLoader(StreamLoader):
    """The training stream: each iteration is one epoch, and the loader's state is its position.

    Lightning calls `set_epoch` only on samplers, which an IterableDataset does not have, so each
    iteration first moves the stream to a position: the trainer's epoch and the batches its loop has
    already trained of it (`position_of`; nonzero when a fit resumes mid-epoch), or, without a
    trainer, the state from `load_state_dict`, else the next epoch by the count of iterations.
    Mid-epoch, the stream continues in the order an uninterrupted epoch would have had
    (`resume_plan`). The position is decided at the first batch, not when the iterator is made:
    Lightning makes a resumed fit's iterator before its loops have moved to the resumed epoch.

    Args:
        stream: This rank's training stream, built for this loader's `num_workers`.
        position_of: `(epoch, batches trained of it)` from the trainer, or None where there is none.
        trained_of: For `state_dict`: how many batches of the current epoch have been trained;
            unset, or returning None: the batches this loader has yielded.
        **kwargs: DataLoader options (`num_workers`, `pin_memory`, ...).
    """

    def __init__(self, stream: TrainStream, position_of: Callable[[], tuple[int, int] | None] | None = None,
                 trained_of: Callable[[], int | None] | None = None, **kwargs: Any) -> None:
        # A generator of its own: each DataLoader iterator draws its workers' base seed from one,
        # which would otherwise be torch's global RNG and move the model's dropout stream.
        super().__init__(stream, generator=torch.Generator().manual_seed(stream.seed), **kwargs)
        if stream.num_workers != self.num_workers:
            raise ValueError(f"TrainLoader: the stream was built for {stream.num_workers} workers, the loader "
                             f"has {self.num_workers}")
        self.stream = stream
        self._position_of, self._trained_of = position_of, trained_of
        self._iterations = 0
        self._epoch = 0
        self._yielded = 0
        self._loaded: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[RatingBatch]:  # type: ignore[override]
        return self._epoch_batches()

    def _next_position(self) -> tuple[int, int]:
        position = self._position_of() if self._position_of is not None else None  # may load a state
        loaded, self._loaded = self._loaded, None
        if position is None:
            position = loaded if loaded is not None else (self._iterations, 0)
        epoch, trained = position
        return (epoch + 1, 0) if trained >= len(self) else (epoch, trained)

    def _epoch_batches(self) -> Iterator[RatingBatch]:
        epoch, trained = self._next_position()
        self.stream.set_position(epoch, trained)
        self._epoch, self._yielded = epoch, trained
        self._iterations += 1
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        trained = self._trained_of() if self._trained_of is not None else None
        trained = self._yielded if trained is None else trained
        stream = self.stream
        return {
            "epoch": self._epoch,
            "batches_trained": trained,
            "worker_batches": resume_plan(len(self), self.num_workers, stream.batch_size, trained)[1],
            "rank": stream.rank,
            "num_batches": len(self),
            "num_workers": self.num_workers,
            "world_size": stream.world_size,
            "batch_size": stream.batch_size,
            "seed": stream.seed,
            "drop_remainder": stream.drop_remainder,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues the saved position at the next iteration. Under DDP every rank loads rank 0's
        state: ranks train in lockstep, so each rank's position in its own shard is the same."""
        trained = int(state["batches_trained"])
        if 0 < trained < int(state["num_batches"]):
            now = {key: value for key, value in self.state_dict().items() if key in _BATCHING_KEYS}
            changed = [f"{key} {state[key]} -> {now[key]}" for key in _BATCHING_KEYS if state.get(key) != now[key]]
            if changed:
                raise DataError(
                    f"the checkpoint stopped after {trained} of {state['num_batches']} training batches of epoch "
                    f"{state['epoch']}, and resuming there needs the same batching ({', '.join(changed)}). Resume "
                    "with the data, trainer and data.num_workers settings it was trained with, or from a "
                    "checkpoint saved at the end of an epoch."
                )
        self._loaded = (int(state["epoch"]), trained)
