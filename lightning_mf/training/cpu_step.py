"""What `FusedRowAdagrad` keeps from step to step on a CPU: a second thread and batch-sized buffers.

Torch kernels release the GIL, so a plain Python thread running kernels of its own uses the second
core without OpenMP's barriers, which stall whenever another process holds a core. And a
batch-sized tensor allocated afresh in that thread every step costs more than the arithmetic on
it: glibc hands a thread arena's freed heap back to the OS, so each step page-faults it in again
(2x the time of a multiply at 16,384 x 128). Neither is optimizer state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from torch import Tensor


class SecondThread:
    """Runs part of a step's work in one worker thread beside the calling thread (made on first use)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    def split_batch(self, threaded: bool, size: int, work: Callable[[slice], None]) -> None:
        """`work` on each half of the batch, the second half in the worker thread; or on all of it here."""
        if threaded and size > 1:
            self.in_parallel(True, partial(work, slice(0, size // 2)), partial(work, slice(size // 2, size)))
        else:
            work(slice(0, size))

    def in_parallel(self, threaded: bool, first: Callable[[], object], second: Callable[[], object]) -> None:
        """Runs `second` in the worker thread beside `first` in this one (or both here, in turn)."""
        if not threaded:
            first()
            second()
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="lightning_mf-fused")
        pending = self._executor.submit(second)
        try:
            first()
        finally:
            pending.result()


class KeptBuffers:
    """Step-sized buffers by name, kept between steps and grown when a batch is larger."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A buffer of `shape` with `like`'s dtype and device; its contents are whatever was left."""
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self._buffers[name] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buffer[:numel].view(shape)
