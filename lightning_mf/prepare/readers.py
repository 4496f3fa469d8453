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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from lightning_mf.prepare import bad_rows
from lightning_mf.prepare.bad_rows import Check, LineLayout
from lightning_mf.prepare.catalog import missing_item_check
from lightning_mf.prepare.formats import (
    MOVIELENS_CSV_HEADER,
    SNIFF_BYTES,
    FormatSpec,
    ScaleBounds,
    bookcrossing_separator,
    detect_format,
    get_format,
    scale_bounds,
    split_header,
)
from lightning_mf.data.schema import ITEM, RATING, TIMESTAMP, USER, RatingScale
from lightning_mf.errors import DataError

BadRowPolicy = Literal["error", "skip"]
_SHOWN_LINE_CHARS = 200


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
        frame, rejected = _read_parquet(path, name, columns, bounds, catalog_checks)
        encoding, bad_lines, stopped_at = None, rejected.height, None
    else:
        encoding = "utf-8"
        if spec.fallback_encoding is not None and not bad_rows.is_utf8(path):
            encoding = spec.fallback_encoding
        layout = _layout(path, spec, name, encoding, columns, separator)
        extra = catalog_checks(pl.Int64() if layout.int_item else pl.String())
        source = path if encoding == "utf-8" else path.read_bytes().decode(encoding).encode("utf-8")
        frame = _fast_read(source, layout, bounds, skip_header=layout.has_header, extra_checks=extra)
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
                typed_read=lambda chunk, header: _fast_read(
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
                f"at line {first['line_number']}: {first['reason']}: {_shown(first['line'])}. "
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


def _shown(line: str) -> str:
    return repr(line if len(line) <= _SHOWN_LINE_CHARS else line[:_SHOWN_LINE_CHARS] + "...")


def _bad_line_error(first: dict, bad_lines: int, stopped_at: int | None) -> DataError:
    """The error for `on_bad_rows="error"`: the first bad line, and how many followed it."""
    more = ""
    if bad_lines > 1:
        more = f" ({bad_lines - 1} more malformed line{'s' if bad_lines > 2 else ''} after it"
        more += f" up to line {stopped_at}, where checking stopped)" if stopped_at is not None else ")"
    return DataError(
        f"{first['file']}, line {first['line_number']}: {first['reason']}: {_shown(first['line'])}{more}. "
        "Fix the file, or pass --on_bad_rows skip to keep the valid rows and write malformed lines "
        "to rejected.csv."
    )


def _header_line(path: Path, encoding: str, name: str) -> str:
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    line = head.split(b"\n", 1)[0]
    try:
        text = line.decode(encoding)
    except UnicodeDecodeError as error:
        raise bad_rows.undecodable_error(name, line, error, 0, 1) from None
    return text.removeprefix("\ufeff").rstrip("\r")


def _layout(
    path: Path, spec: FormatSpec, name: str, encoding: str, columns: dict[str, str], separator: str
) -> LineLayout:
    """Where each field sits on a data line; checks the header of formats that have one."""
    fixed = {USER: 0, ITEM: 1, RATING: 2, TIMESTAMP: 3}
    if spec.name in ("movielens-dat", "movielens-100k"):
        return LineLayout(spec.separator or "", 4, fixed, True, True, quoted=False, has_header=False)
    header = _header_line(path, encoding, name)
    if spec.name == "movielens-csv":
        if [f.lower() for f in split_header(header, ",")] != [f.lower() for f in MOVIELENS_CSV_HEADER]:
            raise DataError(
                f"{name}, line 1: expected the MovieLens header {','.join(MOVIELENS_CSV_HEADER)!r}, "
                f"found {_shown(header)}; for other column names use --format csv with --user_col, "
                "--item_col, --rating_col and --timestamp_col"
            )
        return LineLayout(",", 4, fixed, True, True, quoted=False, has_header=True)
    if spec.name == "bookcrossing":
        found = bookcrossing_separator(header)
        if found is None:
            raise DataError(
                f'{name}, line 1: expected the Book-Crossing header "User-ID";"ISBN";"Book-Rating" '
                f"(separated by ';' or ','), found {_shown(header)}"
            )
        positions = {USER: 0, ITEM: 1, RATING: 2}
        return LineLayout(found, 3, positions, True, False, quoted=True, has_header=True)
    if len(separator) != 1:
        raise DataError(f"separator must be a single character for --format csv, got {separator!r}")
    names = split_header(header, separator)
    missing = [f"{role} column {col!r}" for role, col in columns.items() if col not in names]
    if missing:
        raise DataError(
            f"{name}: missing {', '.join(missing)}; the header (line 1, separator {separator!r}) has "
            f"{names}. Name the columns with --user_col, --item_col, --rating_col, --timestamp_col."
        )
    positions = {role: names.index(col) for role, col in columns.items()}
    return LineLayout(separator, len(names), positions, False, False, quoted=True, has_header=True)


def _fast_schema(layout: LineLayout) -> tuple[dict[str, pl.DataType], list[int]]:
    """Positional schema for a headerless typed read and the field indices to keep."""
    types = {
        USER: pl.Int64() if layout.int_user else pl.String(),
        ITEM: pl.Int64() if layout.int_item else pl.String(),
        RATING: pl.Float32(),
        TIMESTAMP: pl.Int64(),
    }
    roles = {index: role for role, index in layout.positions.items()}
    schema: dict[str, pl.DataType] = {}
    for index in range(layout.num_fields):
        role = roles.get(index)
        schema[role or f"_{index}"] = types[role] if role else pl.String()
    return schema, sorted(roles)


def _fast_read(
    source: Path | bytes,
    layout: LineLayout,
    bounds: ScaleBounds,
    *,
    skip_header: bool,
    extra_checks: Sequence[Check] = (),
) -> pl.DataFrame | None:
    """One typed Polars read of UTF-8 text plus vectorised checks; None when lines need diagnosing.

    `extra_checks` (the item catalog) cost one pass over the frame, an `is_in` for the catalog.
    """
    skip = 1 if skip_header else 0
    try:
        if layout.separator == "::":
            # `a::b::c::d` split on ':' gives a,,b,,c,,d: read 7 fields, the odd ones must be empty.
            spacer = pl.Int8()
            schema = {
                USER: pl.Int64(), "_1": spacer, ITEM: pl.Int64(), "_3": spacer,
                RATING: pl.Float32(), "_5": spacer, TIMESTAMP: pl.Int64(),
            }  # fmt: skip
            frame = pl.read_csv(source, has_header=False, separator=":", quote_char=None, schema=schema)
            if frame.select(pl.any_horizontal(pl.col("_1", "_3", "_5").is_not_null()).any()).item():
                return None
            frame = frame.select(USER, ITEM, RATING, TIMESTAMP)
        else:
            schema, keep = _fast_schema(layout)
            frame = pl.read_csv(
                source,
                has_header=False,
                skip_lines=skip,
                separator=layout.separator,
                quote_char='"' if layout.quoted else None,
                schema=schema,
                columns=keep,
                raise_if_empty=False,
            )
    except pl.exceptions.PolarsError:
        return None
    if not layout.has_timestamp:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Int64).alias(TIMESTAMP))
    frame = frame.select(USER, ITEM, RATING, TIMESTAMP)
    if bad_rows.any_problem(frame, bounds, has_timestamp=layout.has_timestamp):
        return None
    if extra_checks:
        flags = pl.any_horizontal([condition.fill_null(False) for condition, _ in extra_checks])
        if frame.select(flags.any()).item():
            return None
    return frame


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


def _read_parquet(
    path: Path,
    name: str,
    columns: dict[str, str],
    bounds: ScaleBounds,
    catalog_checks: Callable[[pl.DataType], list[Check]],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Typed columns from a Parquet file; invalid rows are reported by 1-based row number.

    `catalog_checks` gives the item catalog checks for the item dtype the file turns out to have.
    """
    try:
        schema = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as error:
        raise DataError(f"{name}: cannot read as Parquet: {error}") from None
    missing = [f"{role} column {col!r}" for role, col in columns.items() if col not in schema]
    if missing:
        raise DataError(
            f"{name}: missing {', '.join(missing)}; the file has columns {list(schema)}. "
            "Name them with --user_col, --item_col, --rating_col, --timestamp_col."
        )
    frame = pl.read_parquet(path, columns=list(columns.values())).select(
        pl.col(col).alias(role) for role, col in columns.items()
    )
    casts = []
    for role in columns:
        dtype = frame.schema[role]
        if role in (USER, ITEM):
            if dtype.is_integer():
                casts.append(pl.col(role).cast(pl.Int64))
            elif dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum)):
                casts.append(pl.col(role).cast(pl.String))
            else:
                raise DataError(
                    f"{name}: {role} column {columns[role]!r} has type {dtype}; expected integers or strings"
                )
        elif role == RATING:
            if not dtype.is_numeric():
                raise DataError(f"{name}: rating column {columns[role]!r} has type {dtype}; expected numbers")
            casts.append(pl.col(role).cast(pl.Float32))
        elif dtype.is_integer():
            casts.append(pl.col(role).cast(pl.Int64))
        elif isinstance(dtype, (pl.Datetime, pl.Date)):
            casts.append(pl.col(role).dt.epoch("s"))
        else:
            raise DataError(
                f"{name}: timestamp column {columns[role]!r} has type {dtype}; "
                "expected integer epoch seconds or datetimes"
            )
    frame = frame.with_columns(casts)
    if TIMESTAMP not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Int64).alias(TIMESTAMP))
    frame = frame.select(USER, ITEM, RATING, TIMESTAMP)
    checks = bad_rows.value_checks(frame.schema, bounds, has_timestamp=TIMESTAMP in columns)
    checks += catalog_checks(frame.schema[ITEM])
    numbered = frame.with_row_index("__row", offset=1)
    valid, bad = bad_rows.partition(numbered, checks)
    shown = [pl.col(c).cast(pl.String).fill_null("") for c in (USER, ITEM, RATING, TIMESTAMP)]
    rejected = bad.select(
        pl.lit(name, dtype=pl.String).alias("file"),
        pl.col("__row").cast(pl.Int64).alias("line_number"),
        pl.concat_str(shown, separator=",").alias("line"),
        pl.col("__reason").alias("reason"),
    )
    return valid.drop("__row"), rejected
