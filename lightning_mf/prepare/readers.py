"""Read any supported ratings file into one validated frame: `user`, `item`, `rating`, `timestamp`.

A clean file goes through one typed Polars read plus a few vectorised checks (the fast path: a
25M-line ML-25M `ratings.csv` in seconds). Anything the fast path cannot parse, or any value it
finds off (nulls, NaN, off-scale ratings, empty ids), sends the file through `bad_rows.scan_file`,
which is authoritative: it locates each malformed line by its 1-based line number. Both paths
accept exactly the same rows, in file order. Given the dataset's item catalog (`known_items`), a
row whose item the catalog does not list is one more kind of malformed line: the fast path finds
out with one `is_in`, and only then do the line diagnostics locate such rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from lightning_mf.data.schema import ITEM, RATING, TIMESTAMP, USER, RatingScale
from lightning_mf.errors import DataError
from lightning_mf.prepare import bad_rows
from lightning_mf.prepare.catalog import missing_item_check
from lightning_mf.prepare.fast_read import fast_read
from lightning_mf.prepare.formats import detect_format, get_format, scale_bounds
from lightning_mf.prepare.layouts import layout_of
from lightning_mf.prepare.parquet_reader import read_parquet_ratings
from lightning_mf.prepare.row_checks import Check
from lightning_mf.prepare.text_lines import is_utf8, shown_line

BadRowPolicy = Literal["error", "skip"]


@dataclass
class RawRatings:
    """The valid ratings of one raw file plus what was rejected and how it was read.

    Attributes:
        frame: `user`, `item` (Int64 when ids are integers, else String), `rating` (Float32),
            `timestamp` (Int64, null where the source has none); valid rows in file order.
        rejected: `file`, `line_number` (1-based line; row number for Parquet), `line` (raw
            text), `reason`; empty unless `on_bad_rows="skip"` met malformed lines.
        format: The format read (never `auto`).
        scale: The rating scale: the format's, `rating_min` / `rating_max`, else the data's range.
        files: The files actually read.
        encoding: The text encoding decoded (`utf-8` or `latin-1`); None for Parquet.
    """

    frame: pl.DataFrame
    rejected: pl.DataFrame
    format: str
    scale: RatingScale
    files: list[Path] = field(default_factory=list)
    encoding: str | None = None


def read_ratings(
    path: Path,
    *,
    format: str = "auto",
    on_bad_rows: BadRowPolicy = "error",
    rating_min: float | None = None,
    rating_max: float | None = None,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str = "rating",
    timestamp_col: str | None = None,
    separator: str = ",",
    display_name: str | None = None,
    known_items: pl.Series | None = None,
    catalog_name: str | None = None,
) -> RawRatings:
    """Read and validate one ratings file.

    Args:
        path: The ratings file (CSV, `.dat`, `u.data`-style, Book-Crossing CSV or Parquet).
        format: A format name from `formats.FORMATS`, or `auto` to detect it.
        on_bad_rows: `error` raises on the first malformed line; `skip` returns the valid rows and
            every malformed line in `rejected`.
        rating_min: Lowest valid rating; unset: the format's (the data's minimum for generic files).
        rating_max: Highest valid rating; unset as for `rating_min`.
        user_col: Generic CSV / Parquet: the user id column.
        item_col: Generic CSV / Parquet: the item id column.
        rating_col: Generic CSV / Parquet: the rating column.
        timestamp_col: Generic CSV / Parquet: the timestamp column (integer epoch), if any.
        separator: Generic CSV: the one-character field separator.
        display_name: How to name the file in messages and `rejected.file` (e.g. an archive
            member); defaults to `path`.
        known_items: The item ids the dataset's catalog lists (`catalog.read_item_catalog`); a
            row whose item is not among them is a malformed line. None: no catalog check.
        catalog_name: How to name the catalog in the reason of such lines (`movieId 7 is not in
            movies.csv`); None: "the item catalog".

    Returns:
        The validated ratings.

    Raises:
        DataError: Missing or empty file, unknown format, missing columns, undecodable bytes, no
            valid rows, or (with `on_bad_rows="error"`) a malformed line.
    """
    path = Path(path)
    name = display_name or str(path)
    if on_bad_rows not in ("error", "skip"):
        raise DataError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")
    if not path.is_file():
        raise DataError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{name}: the file is empty; expected ratings")
    columns = {USER: user_col, ITEM: item_col, RATING: rating_col}
    if timestamp_col is not None:
        columns[TIMESTAMP] = timestamp_col
    if format == "auto":
        format = detect_format(
            path,
            user_col=user_col,
            item_col=item_col,
            rating_col=rating_col,
            timestamp_col=timestamp_col,
            separator=separator,
            display_name=name,
        )
    spec = get_format(format)
    bounds = scale_bounds(spec, rating_min, rating_max)

    def catalog_checks(item_dtype: pl.DataType) -> list[Check]:
        if known_items is None:
            return []
        label = spec.item_label or item_col
        return [missing_item_check(known_items, item_dtype, item_label=label, catalog_name=catalog_name)]

    if spec.name == "parquet":
        frame, rejected = read_parquet_ratings(path, name, columns, bounds, catalog_checks)
        encoding, bad_lines, stopped_at = None, rejected.height, None
    else:
        encoding = "utf-8"
        if spec.fallback_encoding is not None and not is_utf8(path):
            encoding = spec.fallback_encoding
        layout = layout_of(path, spec, name, encoding, columns, separator)
        extra = catalog_checks(pl.Int64() if layout.int_item else pl.String())
        source = path if encoding == "utf-8" else path.read_bytes().decode(encoding).encode("utf-8")
        frame = fast_read(source, layout, bounds, skip_header=layout.has_header, extra_checks=extra)
        rejected, bad_lines, stopped_at = bad_rows.empty_rejected(), 0, None
        if frame is None:
            scan = bad_rows.scan_file(
                path,
                layout,
                bounds,
                encoding=encoding,
                display_name=name,
                keep_rejected=None if on_bad_rows == "skip" else 1,
                stop_early=on_bad_rows == "error",
                typed_read=lambda chunk, header: fast_read(
                    chunk, layout, bounds, skip_header=header, extra_checks=extra
                ),
                extra_checks=extra,
            )
            frame, rejected, bad_lines, stopped_at = scan.frame, scan.rejected, scan.bad_lines, scan.stopped_at_line
    if bad_lines and on_bad_rows == "error":
        raise _bad_line_error(rejected.row(0, named=True), bad_lines, stopped_at)

    if frame.height == 0:
        if rejected.height:
            first = rejected.row(0, named=True)
            raise DataError(
                f"{name}: no valid ratings; all {rejected.height} data lines are malformed, the first "
                f"at line {first['line_number']}: {first['reason']}: {shown_line(first['line'])}. "
                "Is --format right?"
            )
        raise DataError(f"{name}: no ratings (the file is empty or holds only a header)")
    if spec.name == "csv":
        frame = _settle_id_types(frame)
    stats = frame.select(pl.col(RATING).min().alias("lo"), pl.col(RATING).max().alias("hi")).row(0)
    return RawRatings(
        frame=frame,
        rejected=rejected,
        format=spec.name,
        scale=bounds.resolve(stats[0], stats[1]),
        files=[path],
        encoding=encoding,
    )


def _bad_line_error(first: dict, bad_lines: int, stopped_at: int | None) -> DataError:
    """The error for `on_bad_rows="error"`: the first bad line, and how many followed it."""
    more = ""
    if bad_lines > 1:
        more = f" ({bad_lines - 1} more malformed line{'s' if bad_lines > 2 else ''} after it"
        more += f" up to line {stopped_at}, where checking stopped)" if stopped_at is not None else ")"
    return DataError(
        f"{first['file']}, line {first['line_number']}: {first['reason']}: {shown_line(first['line'])}{more}. "
        "Fix the file, or pass --on_bad_rows skip to keep the valid rows and write malformed lines "
        "to rejected.csv."
    )


def _settle_id_types(frame: pl.DataFrame) -> pl.DataFrame:
    """Generic CSV ids: Int64 when every id is a plain integer that prints back the same, else String.

    The round trip keeps `007` and `7` apart, so ISBN-like ids never lose leading zeros.
    """
    for role in (USER, ITEM):
        column = pl.col(role)
        as_int = column.str.to_integer(strict=False)
        if frame.select((as_int.cast(pl.String) == column).fill_null(False).all()).item():
            frame = frame.with_columns(as_int.alias(role))
    return frame
