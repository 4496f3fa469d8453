"""`prepare`: a raw ratings source -> a validated, split, shuffled Parquet dataset folder.

The folder is built under a hidden staging name next to `out` and renamed into place only once
meta.json (written last) is there, so an interrupted run never leaves a folder that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lightning_mf import __version__
from lightning_mf.data.schema import FORMAT_VERSION, META_FILE, DatasetMeta
from lightning_mf.errors import DataError
from lightning_mf.prepare.build import DatasetBuild
from lightning_mf.prepare.options import PrepareOptions

log = logging.getLogger(__name__)

# Options that change where bytes come from, not which dataset results.
_NOT_IN_FINGERPRINT = ("cache_dir", "mirror")


def prepare_dataset(options: PrepareOptions, out: str | Path, force: bool = False) -> Path:
    """Build the dataset folder `out` from `options`, or reuse it when it is already finished.

    Args:
        options: What to read and how to filter and split it.
        out: The dataset folder to create.
        force: Rebuild even when `out` already holds a finished dataset.

    Returns:
        The dataset folder.
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = fingerprint_of(options)
    with _exclusive(out):
        if not force and (out / META_FILE).is_file():
            existing = DatasetMeta.load(out)
            if existing.fingerprint == fingerprint:
                log.info("reusing %s (same inputs and options; --force rebuilds it)", out)
                return out
            raise DataError(
                f"{out} already holds a dataset prepared from other inputs or options; "
                "pass --force to replace it, or choose another --out"
            )
        if not force and out.exists() and any(out.iterdir()):
            raise DataError(
                f"{out} exists but is not a finished dataset (no {META_FILE}); "
                "pass --force to replace it, or choose another --out"
            )
        _remove_stale_staging(out)
        staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            started = time.perf_counter()
            meta = _build(options, staging)
            meta.fingerprint = fingerprint
            meta.options = options.as_dict()
            meta.save(staging)
            _swap_into_place(staging, out)
            log.info("prepared %s in %.1f s: %s", out, time.perf_counter() - started, _summary(meta))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _build(options: PrepareOptions, staging: Path) -> DatasetMeta:
    if options.source == "synthetic":
        from lightning_mf.prepare.synthetic_build import build_synthetic

        return build_synthetic(options, staging)
    return _build_from_files(options, staging)


def _build_from_files(options: PrepareOptions, staging: Path) -> DatasetMeta:
    from lightning_mf.prepare.catalog import read_item_catalog
    from lightning_mf.prepare.readers import read_ratings
    from lightning_mf.prepare.sources import open_source, sha256_file

    _check_file_options(options)
    reader_options: dict[str, Any] = {
        "on_bad_rows": options.on_bad_rows,
        "rating_min": options.rating_min,
        "rating_max": options.rating_max,
        "user_col": options.user_col,
        "item_col": options.item_col,
        "rating_col": options.rating_col,
        "timestamp_col": options.timestamp_col,
        "separator": options.separator,
    }
    workdir = staging / "_work"
    with (
        open_source(
            options.source,
            fold=options.fold,
            test_source=options.test_source,
            cache_dir=Path(options.cache_dir),
            mirror=options.mirror,
            checksum=options.checksum,
            workdir=workdir,
        ) as files,
        ThreadPoolExecutor(max_workers=1) as hasher,
    ):
        if options.split == "predefined" and files.test is None:
            raise DataError(
                f"--split predefined needs a test file: pass --fold (ml-100k: u1..u5, ua, ub) "
                f"or --test_source PATH next to --source {options.source}"
            )
        if options.split != "predefined" and files.test is not None:
            raise DataError("--fold and --test_source define a predefined split: add --split predefined")
        roles = [("ratings", files.ratings)] + ([("test", files.test)] if files.test else [])
        roles += [("archive", files.archive)] if files.archive else []
        roles += [("catalog", files.catalog)] if options.item_catalog and files.catalog else []
        # Hashing runs beside the parse: hashlib releases the GIL.
        digests = {role: hasher.submit(sha256_file, path) for role, path in roles}
        if options.item_catalog and files.catalog is not None:
            reader_options["known_items"] = read_item_catalog(files.catalog, files.catalog_name)
            reader_options["catalog_name"] = files.catalog_name
        train_raw = read_ratings(
            files.ratings, format=options.format, display_name=files.ratings_name, **reader_options
        )
        test_raw = None
        if files.test is not None:
            test_raw = read_ratings(files.test, format=train_raw.format, display_name=files.test_name, **reader_options)
        sources = [
            {"role": role, "path": str(path), "bytes": path.stat().st_size, "sha256": digests[role].result()}
            for role, path in roles
        ]
    shutil.rmtree(workdir, ignore_errors=True)
    build = DatasetBuild.from_raw(train_raw, test_raw)
    # The raw frames (ids as read, 8 bytes each) are no longer needed: free them before splitting.
    del train_raw, test_raw
    build.write_rejected(staging)
    build.apply_filters(options)
    meta = build.split_and_write(options, staging)
    meta.sources = [{"origin": files.origin}, *sources]
    return meta


def _check_file_options(options: PrepareOptions) -> None:
    synthetic_only = {"rows", "users", "items", "synthetic_kind"}
    defaults = PrepareOptions(source=options.source)
    changed = sorted(name for name in synthetic_only if getattr(options, name) != getattr(defaults, name))
    if changed:
        raise DataError(f"{', '.join('--' + c for c in changed)} only apply to --source synthetic")
    if options.split != "predefined" and (options.fold or options.test_source):
        raise DataError("--fold and --test_source define a predefined split: add --split predefined")
    if options.split != "temporal" and (options.val_start or options.test_start):
        raise DataError("--val_start and --test_start only apply to --split temporal")


def fingerprint_of(options: PrepareOptions) -> str:
    """Identity of the inputs and options; a finished folder with the same one is reused."""
    settings = {k: v for k, v in options.as_dict().items() if k not in _NOT_IN_FINGERPRINT}
    identity = {
        "format_version": FORMAT_VERSION,
        "options": settings,
        "source": _source_identity(options.source),
        "test_source": _source_identity(options.test_source) if options.test_source else None,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _source_identity(source: str) -> Any:
    """Path, size and modification time of a local source (each file directly in a folder)."""
    path = Path(source)
    if not path.exists():
        return source
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[str(p.absolute()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Serialise prepares of one folder (e.g. DDP ranks started together): later ones then reuse it."""
    lock_path = out.parent / f".{out.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale_staging(out: Path) -> None:
    """Staging folders left by a killed run (we hold the lock, so nobody else is writing one)."""
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _swap_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        retired = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, retired)
        os.rename(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, out)


def _summary(meta: DatasetMeta) -> str:
    rows = ", ".join(f"{name} {meta.rows(name):,}" for name in meta.splits)
    return f"{meta.num_users:,} users, {meta.num_items:,} items; {rows}; rejected {meta.rejected_rows:,}"


def describe(meta: DatasetMeta) -> str:
    """A few lines for the terminal after a successful prepare."""
    lines = [_summary(meta), f"lightning_mf {__version__}, format {meta.format}"]
    for record in meta.filters:
        lines.append(f"filter {record['name']}: removed {record['removed_rows']:,} rows")
    for split, counts in meta.unseen.items():
        lines.append(
            f"{split}: {counts['unseen_user']:,} rows with a user and {counts['unseen_item']:,} "
            "with an item that train never saw"
        )
    return "\n".join(lines)


