"""The fast path's CPU loops in C (`native_kernels.c`), built with the system's C compiler on first use.

Why not inductor (`fused_kernels`), whose loops do the same arithmetic: a step's time on a CPU is
mostly waiting for rows at random addresses in tables larger than the caches, and only a loop that
asks for the next ratings' rows ahead of time (a software prefetch, which inductor does not emit)
overlaps those misses. At MovieLens-25M shapes (dim 128, batches of 32,768) the C loops run a
table's update in about 40% of the time of inductor's kernel and the forward stage in about 55% of
the eager one's (`index_select` and a batched matrix product): `benchmarks/step_stages.py` times
each stage, `benchmarks/throughput.py` whole fits. They also build in about a second instead of inductor's 16, and
for any batch size.

The library is compiled once per source, compiler and CPU (`-march=native`, so the cache key holds
the CPU's instruction-set flags: a node of another kind builds its own) into
`$LIGHTNING_MF_KERNEL_DIR`, else `~/.cache/lightning_mf/kernels`, written atomically so that DDP
ranks or tune workers building at once do not clash. Without a C compiler `NativeStages()` raises,
and the optimizer warns and runs its eager kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_suffix(".c")
_FLAGS = ("-O3", "-fPIC", "-shared", "-fno-math-errno")
_TUNED_FLAGS = ("-march=native",)  # tried first; retried without where a compiler lacks it

_P, _F, _I, _L = ctypes.c_void_p, ctypes.c_float, ctypes.c_int32, ctypes.c_int64
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "lmf_first_bad_index": (_L, [_P, _L, _L]),
    "lmf_gather_gram": (None, [_L, _P, _P, _P, _P, _L, _L]),
    "lmf_factor_update": (None, [_P, _P, _P, _P, _P, _P, _P, _F, _I, _P, _P, _P, _P, _F, _F, _I, _L, _L]),
    "lmf_bias_update": (None, [_P, _P, _P, _P, _P, _P, _F, _I, _F, _F, _I, _L]),
    "lmf_implicit_accumulate": (None, [_P, _P, _P, _P, _P, _F, _L, _L]),
}


def kernel_dir() -> Path:
    """Where built libraries are kept (`$LIGHTNING_MF_KERNEL_DIR`, else the user's cache)."""
    if os.environ.get("LIGHTNING_MF_KERNEL_DIR"):
        return Path(os.environ["LIGHTNING_MF_KERNEL_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightning_mf" / "kernels"


def c_compiler() -> str:
    """The C compiler to build with: `$CC`, else cc, gcc or clang on the PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        found = shutil.which(name) if name else None
        if found:
            return found
    raise RuntimeError("no C compiler found (tried $CC, cc, gcc and clang); install one, or set compile: false")


def _cpu_identity() -> str:
    """The CPU's model and instruction-set flags, which `-march=native` code depends on."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))  # each distinct line once


def build_library() -> Path:
    """The built library for this source, compiler and CPU: from the cache, or compiled now."""
    compiler = c_compiler()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(_FLAGS + _TUNED_FLAGS).encode(),
                                     _cpu_identity().encode()])).hexdigest()[:16]
    path = kernel_dir() / f"lmf_cpu_kernels-{key}.so"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        built = Path(scratch) / path.name
        for extra in (_TUNED_FLAGS, ()):
            result = subprocess.run([compiler, *_FLAGS, *extra, str(SOURCE), "-o", str(built), "-lm"],
                                    capture_output=True, text=True, check=False)
            if result.returncode == 0:
                os.replace(built, path)  # atomic: another process sees the whole file or none
                return path
            errors.append(result.stderr.strip()[-800:])
    raise RuntimeError(f"compiling {SOURCE} with {compiler} failed: {errors[-1]}")


@functools.cache
def load_library() -> ctypes.CDLL:
    """The library, built if needed and loaded once per process (ctypes.CDLL releases the GIL per call)."""
    library = ctypes.CDLL(str(build_library()))
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(library, name)
        function.restype, function.argtypes = restype, argtypes
    return library


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _flat(tensor: Tensor) -> Tensor:
    """A float32 or int64 CPU tensor laid out densely, as the loops index it."""
    if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.int64):
        raise TypeError(f"native kernels take float32 / int64 CPU tensors, got {tensor.dtype} on {tensor.device}")
    return tensor.contiguous()


def _penalty(c: Tensor | float | None) -> tuple[Tensor | None, float, int]:
    """A penalty coefficient as the loops take it: per-rating vector, scalar, and whether there is one."""
    if c is None:
        return None, 0.0, 0
    if isinstance(c, Tensor):
        return _flat(c), 0.0, 1
    return None, float(c), 1


class NativeStages:
    """The C loops with `fused_kernels.CompiledStages`' interface (plus the forward's gather).

    Loading builds the library if needed: that raises where no C compiler works.
    """

    def __init__(self) -> None:
        self._library = load_library()

    def gather_gram(self, tables: list[Tensor], indices: list[Tensor], out: list[Tensor], gram: Tensor) -> None:
        """`out[r] = tables[r][indices[r]]` and `gram[b, r, s] = out[r][b] . out[s][b]` (2 or 3 tables)."""
        library = self._library
        tables = [_flat(table) for table in tables]
        indices = [_flat(index) for index in indices]
        count, dim = out[0].shape
        for table, index in zip(tables, indices):
            bad = library.lmf_first_bad_index(index.data_ptr(), count, table.shape[0])
            if bad >= 0:
                raise IndexError(f"row index {int(index[bad])} at position {bad} of the batch is outside a table "
                                 f"of {table.shape[0]} rows")
        if not gram.is_contiguous() or any(not rows.is_contiguous() for rows in out):
            raise ValueError("native gather_gram writes into contiguous buffers only")
        array = ctypes.c_void_p * 3
        library.lmf_gather_gram(len(tables), array(*[t.data_ptr() for t in tables]),
                                array(*[i.data_ptr() for i in indices]), array(*[o.data_ptr() for o in out]),
                                gram.data_ptr(), count, dim)

    def factor_table_update(self, table: Tensor, accumulator: Tensor | None, rows: Tensor, own: Tensor,
                            other: Tensor, d: Tensor, c: Tensor | float | None, d_square: Tensor,
                            d_dot: Tensor | None, other_sq: Tensor, own_sq: Tensor, lr: float | Tensor,
                            eps: float, rule: str = "adagrad") -> None:
        """As `fused_step.factor_table_update` with the `adagrad` or `sgd` rule."""
        if not table.is_contiguous():
            raise ValueError("native factor_table_update updates a contiguous table only")
        c_vector, c_scalar, has_c = _penalty(c)
        adagrad = rule == "adagrad"
        own, other, d, d_square, other_sq, own_sq = map(_flat, (own, other, d, d_square, other_sq, own_sq))
        d_dot = _flat(d_dot) if d_dot is not None and has_c else None
        rows = _flat(rows)
        self._library.lmf_factor_update(
            table.data_ptr(), _pointer(accumulator) if adagrad else None, rows.data_ptr(), own.data_ptr(),
            other.data_ptr(), d.data_ptr(), _pointer(c_vector), c_scalar, has_c, d_square.data_ptr(),
            _pointer(d_dot), other_sq.data_ptr(), own_sq.data_ptr(), float(lr), float(eps), int(adagrad),
            rows.shape[0], table.shape[1])

    def bias_table_update(self, table: Tensor, accumulator: Tensor | None, rows: Tensor, looked_up: Tensor,
                          d: Tensor, c: Tensor | float | None, lr: float | Tensor, eps: float,
                          rule: str = "adagrad") -> None:
        """As `fused_step.bias_table_update` with the `adagrad` or `sgd` rule (a 1-D table)."""
        if not table.is_contiguous() or table.dim() != 1:
            raise ValueError("native bias_table_update updates a contiguous 1-D table only")
        c_vector, c_scalar, has_c = _penalty(c)
        adagrad = rule == "adagrad"
        rows, looked_up, d = _flat(rows), _flat(looked_up), _flat(d)
        self._library.lmf_bias_update(
            table.data_ptr(), _pointer(accumulator) if adagrad else None, rows.data_ptr(), looked_up.data_ptr(),
            d.data_ptr(), _pointer(c_vector), c_scalar, has_c, float(lr), float(eps), int(adagrad), rows.shape[0])

    def implicit_accumulate(self, gradient: Tensor, user: Tensor, d: Tensor, item_rows: Tensor,
                            implicit_rows: Tensor, c: float) -> None:
        """As `fused_implicit.accumulate`: G[user] += d * q + c * z."""
        if not gradient.is_contiguous():
            raise ValueError("native implicit_accumulate adds into a contiguous gradient only")
        user, d, item_rows, implicit_rows = map(_flat, (user, d, item_rows, implicit_rows))
        self._library.lmf_implicit_accumulate(gradient.data_ptr(), user.data_ptr(), d.data_ptr(),
                                              item_rows.data_ptr(), implicit_rows.data_ptr(), float(c),
                                              user.shape[0], gradient.shape[1])
