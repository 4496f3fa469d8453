"""Where each DataLoader worker resumes an interrupted epoch, from the number of batches trained.

With K workers, logical worker w of a rank yields the contiguous block `worker_block(M, K, w)` of
the rank's M batches, `batches_per_message` of them per message (the block's last message takes
the rest), and the DataLoader hands the main process one message of each worker in turn: worker 0,
1, ..., K-1, 0, ..., passing over a worker with nothing left (PyTorch restarts that cycle at
worker 0 for every new iterator). The batches trained are therefore a prefix of that round-robin
sequence, and `resume_plan` turns its length into the number of batches each worker has had
trained.

A resumed iteration must also continue the sequence in the same order, although the DataLoader's
cycle starts at worker 0 again. So the workers are rotated: physical worker p plays logical worker
`(p + rotation) % K`, where `rotation` is the worker whose message the interruption cut (or the
next one to speak). That worker first sends the rest of the cut message, then each keeps its
message boundaries, which are fixed from its block's start: the cycle then runs through the same
messages in the same order as an uninterrupted epoch.
"""

from __future__ import annotations

import math

from lightning_mf.data.sharding import worker_block
from lightning_mf.data.transport import PACK_ROWS


def batches_per_message(batch_size: int) -> int:
    """How many training batches a worker sends per message: about `PACK_ROWS` ratings."""
    return max(1, math.ceil(PACK_ROWS / batch_size))


def block_lengths(num_batches: int, num_workers: int) -> list[int]:
    """The number of batches in each worker's block."""
    bounds = (worker_block(num_batches, num_workers, worker) for worker in range(num_workers))
    return [last - first for first, last in bounds]


def resume_plan(num_batches: int, num_workers: int, batch_size: int, trained: int) -> tuple[int, list[int]]:
    """`(rotation, skips)` after `trained` batches of an epoch: the logical worker that speaks first,
    and how many batches of each logical worker's block were trained (with no workers, one entry).

    Raises:
        ValueError: `trained` is not in `[0, num_batches]`.
    """
    if not 0 <= trained <= num_batches:
        raise ValueError(f"resume_plan: trained must be in [0, {num_batches}], got {trained}")
    if num_workers == 0:
        return 0, [trained]
    per_message = batches_per_message(batch_size)
    lengths = block_lengths(num_batches, num_workers)
    remaining = trained
    for message in range(math.ceil(max(lengths) / per_message)):
        start = message * per_message
        for worker, length in enumerate(lengths):
            if start >= length:
                continue
            size = min(per_message, length - start)
            if remaining < size:
                # Workers before this one have sent this round's message too; those after it not yet.
                skips = [min(start + (per_message if other < worker else 0), lengths[other])
                         for other in range(num_workers)]
                skips[worker] = start + remaining
                return worker, skips
            remaining -= size
    return 0, lengths


def message_sizes(block_length: int, skip: int, batch_size: int) -> list[int]:
    """The batch counts of the messages a worker sends from batch `skip` of its block on: the rest of
    the message `skip` falls in, then whole messages at the block's fixed boundaries."""
    per_message = batches_per_message(batch_size)
    sizes = []
    position = skip
    while position < block_length:
        end = min((position // per_message + 1) * per_message, block_length)
        sizes.append(end - position)
        position = end
    return sizes
