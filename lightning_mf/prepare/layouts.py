"""Where the fields sit on a data line of each text format (`LineLayout`), read from the header.

Headerless formats have fixed positions; a format with a header has it checked here (MovieLens
and Book-Crossing want their own, a generic CSV must name the columns asked for), so a file in the
wrong format fails on line 1 with the header it has, before any data line is judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from lightning_mf.data.schema import ITEM, RATING, TIMESTAMP, USER
from lightning_mf.errors import DataError
from lightning_mf.prepare.formats import (
    MOVIELENS_CSV_HEADER,
    SNIFF_BYTES,
    FormatSpec,
    bookcrossing_separator,
    split_header,
)
from lightning_mf.prepare.text_lines import shown_line, undecodable_error


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
        """Whether data lines carry a timestamp field."""
        return TIMESTAMP in self.positions


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


def _header_line(path: Path, encoding: str, name: str) -> str:
    """Line 1 of a text file, decoded strictly, without its BOM and line end."""
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    line = head.split(b"\n", 1)[0]
    try:
        text = line.decode(encoding)
    except UnicodeDecodeError as error:
        raise undecodable_error(name, line, error, 0, 1) from None
    return text.removeprefix("\ufeff").rstrip("\r")


def layout_of(
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
                f"found {shown_line(header)}; for other column names use --format csv with --user_col, "
                "--item_col, --rating_col and --timestamp_col"
            )
        return LineLayout(",", 4, fixed, True, True, quoted=False, has_header=True)
    if spec.name == "bookcrossing":
        found = bookcrossing_separator(header)
        if found is None:
            raise DataError(
                f'{name}, line 1: expected the Book-Crossing header "User-ID";"ISBN";"Book-Rating" '
                f"(separated by ';' or ','), found {shown_line(header)}"
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
