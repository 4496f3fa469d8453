"""Line-level diagnostics: find every malformed line of a ratings file, with its line number.

The fast reader (readers.py) parses a whole file with one typed Polars read and only says *whether*
something is wrong. This module is the authoritative path it falls back to. It reads the file in
chunks of whole lines; a chunk the fast reader accepts as is (one valid row per line) is kept,
any other chunk is split into physical lines here, so that each row keeps its 1-based line
number, and every line is checked with bulk Polars string expressions (no Python loop over rows).
Callers may add checks on the typed rows (items missing from the dataset's item catalog), so every
kind of bad line is located, numbered and reported the same way.

Line numbering: physical lines separated by `\\n`, counted from 1 including the header; a trailing
`\\r` (CRLF files) is dropped, so is a UTF-8 byte order mark before line 1. The newline that ends
the last line does not start another one. Blank lines (empty or whitespace only) carry no rating:
they are ignored, never rejected, but still counted, so later line numbers match an editor's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from lightning_mf.prepare.formats import ScaleBounds
from lightning_mf.data.schema import ITEM, RATING, TIMESTAMP, USER
from lightning_mf.errors import DataError

REJECTED_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.String(),
    "line_number": pl.Int64(),
    "line": pl.String(),
    "reason": pl.String(),
}
CHUNK_BYTES = 32 * 1024 * 1024
# Columns of a lines frame (`lines_frame`) and of the bad lines `check_lines` returns.
LINE, LINE_NUMBER = "__line", "__line_number"
_REASON = "__reason"
# A (condition, reason) pair: rows where `condition` holds are bad, for the string `reason`.
Check = tuple[pl.Expr, pl.Expr]


@dataclass(frozen=True)
class LineLayout:
    """How the fields of one data line are laid out.

    Attributes:
        separator: Field separator (may be several characters, e.g. `::`).
        num_fields: Fields on every valid line.
        positions: 0-based field index of `user`, `item`, `rating` and, if present, `timestamp`.
        int_user: User ids must parse as integers (else they are kept as strings).
        int_item: As `int_user` for item ids.
        quoted: Fields may be wrapped in double quotes, with `""` for a literal quote.
        has_header: Line 1 is a header, not data.
    """

    separator: str
    num_fields: int
    positions: dict[str, int]
    int_user: bool
    int_item: bool
    quoted: bool
    has_header: bool

    @property
    def has_timestamp(self) -> bool:
        return TIMESTAMP in self.positions


@dataclass
class ScanResult:
    """Valid rows (typed, in line order) and the malformed lines of one file."""

    frame: pl.DataFrame
    rejected: pl.DataFrame
    bad_lines: int
    data_lines: int
    stopped_at_line: int | None = None  # last line checked when the scan stopped early


def empty_rejected() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECTED_SCHEMA)


def first_problem(checks: list[Check]) -> pl.Expr:
    """The reason of the first failing check, or null when every check passes."""
    if not checks:
        return pl.lit(None, dtype=pl.String)
    condition, reason = checks[0]
    chain = pl.when(condition.fill_null(False)).then(reason)
    for condition, reason in checks[1:]:
        chain = chain.when(condition.fill_null(False)).then(reason)
    return chain.otherwise(pl.lit(None, dtype=pl.String))


def rating_checks(bounds: ScaleBounds) -> list[Check]:
    """(condition, reason) pairs that find bad values in a typed float `rating` column."""
    rating = pl.col(RATING)
    shown = rating.cast(pl.String)
    outside = pl.concat_str(pl.lit("rating "), shown, pl.lit(f" is outside the scale {bounds.describe()}"))
    checks: list[Check] = [
        (rating.is_null(), pl.lit("empty rating")),
        (rating.is_nan(), pl.lit("rating is NaN")),
        (rating.is_infinite(), pl.concat_str(pl.lit("rating "), shown, pl.lit(" is not finite"))),
    ]
    if bounds.min is not None:
        checks.append((rating < bounds.min, outside))
    if bounds.max is not None:
        checks.append((rating > bounds.max, outside))
    if bounds.step is not None:
        steps = (rating.cast(pl.Float64) - (bounds.min or 0.0)) / bounds.step
        # Half stars are exact in float32; the tolerance only absorbs the division.
        off_grid = (steps - steps.round()).abs() > 1e-6
        off_grid_reason = pl.concat_str(pl.lit("rating "), shown, pl.lit(f" is not on the scale {bounds.describe()}"))
        checks.append((off_grid, off_grid_reason))
    return checks


def value_checks(schema: pl.Schema, bounds: ScaleBounds, *, has_timestamp: bool) -> list[Check]:
    """(condition, reason) pairs that find bad values in typed `user`/`item`/`rating`/`timestamp`.

    Shared by the line diagnostics and Parquet input (and, in aggregate form, the fast reader), so
    all of them agree on what is valid.
    """
    checks: list[Check] = []
    for role in (USER, ITEM):
        column = pl.col(role)
        empty = column.is_null()
        if schema[role] == pl.String:
            empty = empty | (column.str.strip_chars().str.len_bytes() == 0)
        checks.append((empty, pl.lit(f"empty {role} id")))
    checks.extend(rating_checks(bounds))
    if has_timestamp:
        checks.append((pl.col(TIMESTAMP).is_null(), pl.lit("empty timestamp")))
    return checks


def any_problem(frame: pl.DataFrame, bounds: ScaleBounds, *, has_timestamp: bool) -> bool:
    """Whether any row of a typed frame fails `value_checks`, without per-row temporaries.

    Null counts are free, and every rating check depends on the value alone, so it runs on the few
    distinct ratings instead of on every row (a 25M-row file has ten).
    """
    nulls = frame.null_count().row(0, named=True)
    if nulls[USER] or nulls[ITEM] or nulls[RATING] or (has_timestamp and nulls[TIMESTAMP]):
        return True
    for role in (USER, ITEM):
        if frame.schema[role] == pl.String:
            if frame.select((pl.col(role).str.strip_chars().str.len_bytes() == 0).any()).item():
                return True
    ratings = frame.select(pl.col(RATING).unique())
    flags = ratings.select(pl.any_horizontal([c.fill_null(False) for c, _ in rating_checks(bounds)]).any())
    return bool(flags.item())


def undecodable_error(
    path_name: str, data: bytes, error: UnicodeDecodeError, offset: int, first_line: int
) -> DataError:
    """A DataError locating an undecodable byte: line number and byte offset in the file."""
    line = first_line + data.count(b"\n", 0, error.start)
    start = data.rfind(b"\n", 0, error.start) + 1
    column = error.start - start + 1
    bad = data[error.start : error.end]
    return DataError(
        f"{path_name}: line {line}, byte offset {offset + error.start} (column {column}): "
        f"bytes {bad!r} are not valid {error.encoding}. The file must be UTF-8 text; re-encode it "
        "(e.g. `iconv -f latin1 -t utf-8`) or fix the line."
    )


def iter_text_chunks(
    path: Path, encoding: str, *, display_name: str, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[int, bytes, str]]:
    """Yield `(number of the first line, raw bytes, text)` for chunks of whole lines, decoded strictly.

    Chunks end after a `\\n`, which never occurs inside a UTF-8 multibyte sequence, so each chunk
    decodes on its own and memory stays bounded by `chunk_bytes`.
    """
    line_number, offset, carry = 1, 0, b""
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk_bytes)
            data = carry + block
            if not block:
                cut = len(data)
            else:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry = data
                    continue
            piece, carry = data[:cut], data[cut:]
            if piece:
                try:
                    text = piece.decode(encoding)
                except UnicodeDecodeError as error:
                    raise undecodable_error(display_name, piece, error, offset, line_number) from None
                if offset == 0:
                    text = text.removeprefix("\ufeff")
                yield line_number, piece, text
                line_number += piece.count(b"\n")
                offset += len(piece)
            if not block:
                return


def is_utf8(path: Path, *, chunk_bytes: int = CHUNK_BYTES) -> bool:
    """Whether the whole file decodes as UTF-8 (streamed)."""
    try:
        for _chunk in iter_text_chunks(path, "utf-8", display_name=str(path), chunk_bytes=chunk_bytes):
            pass
    except DataError:
        return False
    return True


def lines_frame(first_line: int, text: str) -> pl.DataFrame:
    """One row per physical line of `text` with its line number; the final newline adds no line."""
    lines = pl.Series(LINE, [text]).str.split("\n").explode()
    if text.endswith("\n"):
        lines = lines.head(len(lines) - 1)
    return pl.DataFrame(
        {
            LINE_NUMBER: pl.int_range(first_line, first_line + len(lines), dtype=pl.Int64, eager=True),
            LINE: lines.str.strip_suffix("\r"),
        }
    )


def _quoted_pattern(layout: LineLayout) -> str:
    """A regex matching a whole line of `num_fields` CSV fields, two groups per field.

    Each field is either double-quoted (a quote inside written as `""`) or plain: anything but the
    separator that does not start with a quote.
    """
    if len(layout.separator) != 1:
        raise ValueError(f"quoted layouts need a one-character separator, got {layout.separator!r}")
    sep = re.escape(layout.separator)
    field = f'(?:"((?:[^"]|"")*)"|([^"{sep}][^{sep}]*|))'
    return "^" + sep.join([field] * layout.num_fields) + "$"


def _with_fields(lines: pl.DataFrame, layout: LineLayout) -> pl.DataFrame:
    """Add one raw-text column per role (`__f_<role>`) and `__shape_ok` (right number of fields).

    The split is materialised once; every later expression reads the columns it produced.
    """
    line = pl.col(LINE)
    if layout.quoted:
        split = lines.with_columns(line.str.extract_groups(_quoted_pattern(layout)).alias("__parts"))
        groups = pl.col("__parts")

        def field(i: int) -> pl.Expr:
            quoted = groups.struct.field(str(2 * i + 1)).str.replace_all('""', '"', literal=True)
            return pl.coalesce(quoted, groups.struct.field(str(2 * i + 2)))

        shape_ok = groups.struct.field("1").is_not_null() | groups.struct.field("2").is_not_null()
    else:
        split = lines.with_columns(line.str.split(layout.separator).alias("__parts"))
        parts = pl.col("__parts")

        def field(i: int) -> pl.Expr:
            return parts.list.get(i, null_on_oob=True)

        shape_ok = parts.list.len() == layout.num_fields
    columns = [field(index).alias(f"__f_{role}") for role, index in layout.positions.items()]
    return split.with_columns(*columns, shape_ok.alias("__shape_ok")).drop("__parts")


def _typed_columns(layout: LineLayout) -> list[pl.Expr]:
    """Typed `user`/`item`/`rating`/`timestamp` from the raw fields; null where a field won't parse.

    Surrounding whitespace is allowed in numbers, as the fast Polars reader allows it.
    """

    def integer(role: str) -> pl.Expr:
        return pl.col(f"__f_{role}").str.strip_chars().str.to_integer(strict=False).alias(role)

    return [
        integer(USER) if layout.int_user else pl.col(f"__f_{USER}").alias(USER),
        integer(ITEM) if layout.int_item else pl.col(f"__f_{ITEM}").alias(ITEM),
        pl.col(f"__f_{RATING}").str.strip_chars().cast(pl.Float32, strict=False).alias(RATING),
        integer(TIMESTAMP) if layout.has_timestamp else pl.lit(None, dtype=pl.Int64).alias(TIMESTAMP),
    ]


def _parse_checks(layout: LineLayout) -> list[Check]:
    """Field-count and parse checks, in the order a line's reason is chosen, before value checks."""
    found = pl.col(LINE).str.count_matches(layout.separator, literal=True) + 1
    expected = f"expected {layout.num_fields} fields separated by {layout.separator!r}, found "
    shape_reason = pl.concat_str(pl.lit(expected), found.cast(pl.String))
    if layout.quoted:
        bad_quotes = f"malformed quotes: expected {layout.num_fields} fields, each plain or in double quotes"
        shape_reason = pl.when(found == layout.num_fields).then(pl.lit(bad_quotes)).otherwise(shape_reason)
    checks: list[Check] = [(~pl.col("__shape_ok"), shape_reason)]

    def shown(text: pl.Expr) -> pl.Expr:
        return pl.concat_str(pl.lit("'"), text, pl.lit("'"))

    def empty(text: pl.Expr) -> pl.Expr:
        return text.str.strip_chars().str.len_bytes() == 0

    roles = [(USER, layout.int_user, "user id", "an integer"), (ITEM, layout.int_item, "item id", "an integer")]
    roles.append((RATING, True, "rating", "a number"))
    if layout.has_timestamp:
        roles.append((TIMESTAMP, True, "timestamp", "an integer"))
    for role, parsed, label, kind in roles:
        text = pl.col(f"__f_{role}")
        checks.append((empty(text), pl.lit(f"empty {label}")))
        if parsed:
            message = pl.concat_str(pl.lit(f"{label} "), shown(text), pl.lit(f" is not {kind}"))
            checks.append((pl.col(role).is_null(), message))
    return checks


def typed_schema(layout: LineLayout) -> pl.Schema:
    """Schema of the valid rows read with `layout`: integer or string ids, float32 ratings."""
    return pl.Schema(
        {
            USER: pl.Int64() if layout.int_user else pl.String(),
            ITEM: pl.Int64() if layout.int_item else pl.String(),
            RATING: pl.Float32(),
            TIMESTAMP: pl.Int64(),
        }
    )


def partition(
    frame: pl.DataFrame, checks: list[Check], *, flag: pl.Expr | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split rows into those passing every check and the others, with the first failing reason.

    Every row gets a cheap pass/fail flag (`flag`, default: any check holds); the reasons, which
    build strings, are worked out for the failing rows only.
    """
    if flag is None:
        flag = pl.any_horizontal([condition.fill_null(False) for condition, _ in checks])
    flagged = frame.with_columns(flag.alias("__failed"))
    valid = flagged.filter(~pl.col("__failed")).drop("__failed")
    bad = flagged.filter(pl.col("__failed")).with_columns(first_problem(checks).alias(_REASON)).drop("__failed")
    return valid, bad


def check_lines(
    lines: pl.DataFrame, layout: LineLayout, bounds: ScaleBounds, *, extra_checks: Sequence[Check] = ()
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split (`__line_number`, `__line`) data lines (blank lines removed) into valid and bad ones.

    `extra_checks` are (condition, reason) pairs on the typed columns (an item catalog), tried
    after the parse and value checks, so a line gets the first reason that applies.

    Returns the valid typed rows and the bad lines with `__line_number`, `__line`, `__reason`.
    """
    parsed = _with_fields(lines, layout).with_columns(_typed_columns(layout))
    value = value_checks(parsed.schema, bounds, has_timestamp=layout.has_timestamp) + list(extra_checks)
    # Unparseable fields are null once typed, so the value checks flag them too.
    flag = pl.any_horizontal([~pl.col("__shape_ok")] + [c.fill_null(False) for c, _ in value])
    valid, bad = partition(parsed, _parse_checks(layout) + value, flag=flag)
    return valid.select(USER, ITEM, RATING, TIMESTAMP), bad.select(LINE_NUMBER, LINE, _REASON)


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
                    pl.col(_REASON).alias("reason"),
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
