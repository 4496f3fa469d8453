"""The fast path's tables in transparent huge pages (Linux, CPU): random row access without TLB misses.

A step gathers and scatters rows at random all over tables of 30-80 MB at MovieLens-25M sizes.
With 4 KiB pages almost every row is a TLB miss, and a random 512-byte row gather runs at about a
quarter of its speed on 2 MiB pages: measured on a 2-core AMD EPYC VM, 6.5M rows/s against 24-33M
(`benchmarks/README.md`). Where the kernel hands out huge pages only on request
(`/sys/kernel/mm/transparent_hugepage/enabled` is `madvise`, as on that VM) nothing asks for them,
so here each large table moves, once, into fresh memory advised with `MADV_HUGEPAGE` before its
first touch. Where the setting is `always` the tables have them already; where `never`, nothing
changes.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import torch
from torch import Tensor

HUGE_PAGE = 1 << 21
MADV_HUGEPAGE = 14  # from linux/mman.h
MIN_BYTES = 4 * HUGE_PAGE  # smaller tables gain little and would waste most of a page
_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_available() -> bool:
    """Whether this kernel gives anonymous memory huge pages when asked (Linux, THP not `never`)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return "[never]" not in _SETTING.read_text()
    except OSError:
        return False


def _advise(tensor: Tensor) -> bool:
    """Asks for huge pages over the 2 MiB-aligned part of `tensor`'s (untouched) memory."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = (start + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1), end & ~(HUGE_PAGE - 1)
    if last <= first:
        return False
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise(first, last - first, MADV_HUGEPAGE) == 0


def empty_on_huge_pages(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised CPU tensor whose memory is advised for huge pages before any write."""
    tensor = torch.empty(shape, dtype=dtype)
    if tensor.numel() * tensor.element_size() >= MIN_BYTES and huge_pages_available():
        _advise(tensor)
    return tensor


def move_to_huge_pages(param: Tensor) -> bool:
    """Moves a large CPU parameter's values into huge-page memory (in place: `param.data`)."""
    if param.device.type != "cpu" or param.numel() * param.element_size() < MIN_BYTES or not huge_pages_available():
        return False
    fresh = empty_on_huge_pages(tuple(param.shape), param.dtype)
    fresh.copy_(param.detach())
    param.data = fresh
    return True
