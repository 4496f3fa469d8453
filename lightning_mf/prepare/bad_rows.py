"""Line-level diagnostics: find every malformed line of a ratings file, with its line number.

The fast reader (fast_read.py) parses a whole file with one typed Polars read and only says
*whether* something is wrong. This module is the authoritative path it falls back to. It reads the
file in chunks of whole lines (text_lines.py); a chunk the fast reader accepts as is (one valid
row per line) is kept, any other chunk is split into numbered physical lines, so that each row
keeps its 1-based line number, and every line is checked with bulk Polars string expressions
(line_checks.py). Callers may add checks on the typed rows (items missing from the dataset's item
catalog), so every kind of bad line is located, numbered and reported the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from lightning_mf.prepare.formats import ScaleBounds
from lightning_mf.prepare.layouts import LineLayout, typed_schema
from lightning_mf.prepare.line_checks import check_lines
from lightning_mf.prepare.row_checks import (
    REASON,
    Check,
    any_problem,
    first_problem,
    partition,
    rating_checks,
    value_checks,
)
from lightning_mf.prepare.text_lines import (
    CHUNK_BYTES,
    LINE,
    LINE_NUMBER,
    is_utf8,
    iter_text_chunks,
    lines_frame,
    undecodable_error,
)

__all__ = [
    "CHUNK_BYTES",
    "LINE",
    "LINE_NUMBER",
    "REJECTED_SCHEMA",
    "Check",
    "LineLayout",
    "ScanResult",
    "TypedRead",
    "any_problem",
    "check_lines",
    "empty_rejected",
    "first_problem",
    "is_utf8",
    "iter_text_chunks",
    "lines_frame",
    "partition",
    "rating_checks",
    "scan_file",
    "typed_schema",
    "undecodable_error",
    "value_checks",
]

REJECTED_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.String(),
    "line_number": pl.Int64(),
    "line": pl.String(),
    "reason": pl.String(),
}


@dataclass
class ScanResult:
    """Valid rows (typed, in line order) and the malformed lines of one file."""

    frame: pl.DataFrame
    rejected: pl.DataFrame
    bad_lines: int
    data_lines: int
    stopped_at_line: int | None = None  # last line checked when the scan stopped early


def empty_rejected() -> pl.DataFrame:
    """A `rejected` frame with no rows, for files where nothing was rejected."""
    return pl.DataFrame(schema=REJECTED_SCHEMA)


TypedRead = Callable[[bytes, bool], "pl.DataFrame | None"]


def scan_file(
    path: Path,
    layout: LineLayout,
    bounds: ScaleBounds,
    *,
    encoding: str,
    display_name: str,
    keep_rejected: int | None = None,
    stop_early: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    typed_read: TypedRead | None = None,
    extra_checks: Sequence[Check] = (),
) -> ScanResult:
    """Check every line of a delimited file and split it into valid rows and rejected lines.

    Args:
        path: The ratings file.
        layout: Where each field is on a line.
        bounds: The rating range valid lines must respect.
        encoding: `utf-8` (undecodable bytes raise a DataError with their location) or `latin-1`.
        display_name: The file name used in `rejected.file` and messages.
        keep_rejected: Keep at most this many rejected lines (all are still counted); `None`: all.
        stop_early: Stop after the chunk holding the first bad line (enough to report an error;
            a file in the wrong format is then not checked to the end).
        chunk_bytes: Bytes decoded and checked at a time.
        typed_read: The fast reader for one chunk of UTF-8 bytes (`True`: skip its first line, the
            header), returning None unless every row is valid. Chunks it accepts with one row per
            line skip the line-by-line checks, so a big file with a few bad lines costs little
            more than a clean one. It must apply `extra_checks` too.
        extra_checks: More (condition, reason) pairs on typed rows, e.g. items missing from the
            dataset's item catalog; see `check_lines`.

    Returns:
        Valid typed rows in line order, rejected lines in line order and the counts.
    """
    frames: list[pl.DataFrame] = []
    rejected: list[pl.DataFrame] = []
    bad_lines = data_lines = kept = 0
    stopped_at: int | None = None
    size, consumed = path.stat().st_size, 0
    chunks = iter_text_chunks(path, encoding, display_name=display_name, chunk_bytes=chunk_bytes)
    for first_line, piece, text in chunks:
        consumed += len(piece)
        if typed_read is not None:
            header_here = layout.has_header and first_line == 1
            raw = piece if encoding == "utf-8" else text.encode("utf-8")
            frame = typed_read(raw, header_here)
            lines_here = piece.count(b"\n") + (not piece.endswith(b"\n")) - header_here
            if frame is not None and frame.height == lines_here:
                frames.append(frame)
                data_lines += frame.height
                continue
        lines = lines_frame(first_line, text)
        lines = lines.filter(pl.col(LINE).str.strip_chars().str.len_bytes() > 0)
        if layout.has_header:
            lines = lines.filter(pl.col(LINE_NUMBER) > 1)
        if lines.height == 0:
            continue
        data_lines += lines.height
        valid, bad = check_lines(lines, layout, bounds, extra_checks=extra_checks)
        frames.append(valid)
        bad_lines += bad.height
        if bad.height and (keep_rejected is None or kept < keep_rejected):
            take = bad.height if keep_rejected is None else min(bad.height, keep_rejected - kept)
            kept += take
            rejected.append(
                bad.head(take).select(
                    pl.lit(display_name, dtype=pl.String).alias("file"),
                    pl.col(LINE_NUMBER).alias("line_number"),
                    pl.col(LINE).alias("line"),
                    pl.col(REASON).alias("reason"),
                )
            )
        if bad.height and stop_early and consumed < size:
            stopped_at = first_line + text.count("\n") - 1
            break
    # No rechunk: copying 25M rows into one buffer would double peak memory for nothing.
    frame = pl.concat(frames, rechunk=False) if frames else pl.DataFrame(schema=typed_schema(layout))
    return ScanResult(
        frame=frame,
        rejected=pl.concat(rejected) if rejected else empty_rejected(),
        bad_lines=bad_lines,
        data_lines=data_lines,
        stopped_at_line=stopped_at,
    )
