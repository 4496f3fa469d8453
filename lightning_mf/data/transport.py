"""Batches from DataLoader workers to the main process: packed several to a message, unpacked again.

Every tensor crossing processes costs a shared-memory handle and a file-descriptor transfer (about
a millisecond), so workers send about `PACK_ROWS` ratings at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import NamedTuple

import torch
from torch.utils.data import get_worker_info

from lightning_mf.data.batch import RatingBatch

# Ratings per message from a DataLoader worker.
PACK_ROWS = 262_144


class PackedBatches(NamedTuple):
    """Consecutive batches of one DataLoader worker, sent to the main process as one message.

    Every tensor crossing processes costs a shared-memory handle and a file-descriptor transfer
    (about a millisecond), so workers send about `PACK_ROWS` ratings at a time and the loader
    splits them back (`unpack`) into the batches they were.
    """

    user: torch.Tensor
    item: torch.Tensor
    rating: torch.Tensor
    sizes: torch.Tensor

    def unpack(self) -> Iterator[RatingBatch]:
        sizes = self.sizes.tolist()
        parts = (column.split(sizes) for column in (self.user, self.item, self.rating))
        return (RatingBatch(*batch) for batch in zip(*parts))


def unpack(items: Iterator[RatingBatch | PackedBatches]) -> Iterator[RatingBatch]:
    """The batches of a DataLoader's output, with `PackedBatches` split back into batches."""
    for item in items:
        if isinstance(item, PackedBatches):
            yield from item.unpack()
        else:
            yield item


def for_transport(batches: Iterator[RatingBatch],
                  message_sizes: Iterable[int] | None = None) -> Iterator[RatingBatch | PackedBatches]:
    """Batches as they are in the main process; packed when this runs in a DataLoader worker.

    A message holds the given numbers of batches (training: fixed boundaries, so an interrupted
    epoch resumes message by message, see `resume_plan`), or, unset, batches until it holds
    `PACK_ROWS` ratings.
    """
    if get_worker_info() is None:
        yield from batches
        return
    if message_sizes is not None:
        for size in message_sizes:
            yield _pack(list(islice(batches, size)))
        return
    group: list[RatingBatch] = []
    rows = 0
    for batch in batches:
        group.append(batch)
        rows += len(batch.rating)
        if rows >= PACK_ROWS:
            yield _pack(group)
            group, rows = [], 0
    if group:
        yield _pack(group)


def _pack(group: list[RatingBatch]) -> PackedBatches:
    columns = (torch.cat([batch[i] for batch in group]) for i in range(3))
    return PackedBatches(*columns, torch.tensor([len(batch.rating) for batch in group]))
