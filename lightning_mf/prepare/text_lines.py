"""Ratings text as numbered physical lines: decoded strictly, in bounded chunks of whole lines.

Every reader that names a bad line by number (the line diagnostics, the item catalog) numbers it
here, so the numbers agree with each other and with an editor. Physical lines are separated by
`\\n` and counted from 1 including the header; a trailing `\\r` (CRLF files) is dropped, so is a
UTF-8 byte order mark before line 1. The newline that ends the last line does not start another
one. Blank lines (empty or whitespace only) carry no rating: callers ignore them, never reject
them, but they are still counted, so later line numbers match an editor's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from lightning_mf.errors import DataError

CHUNK_BYTES = 32 * 1024 * 1024
# Columns of a lines frame (`lines_frame`) and of the bad lines `check_lines` returns.
LINE, LINE_NUMBER = "__line", "__line_number"
_SHOWN_LINE_CHARS = 200


def shown_line(line: str) -> str:
    """A line quoted for an error message, cut after `_SHOWN_LINE_CHARS` characters."""
    return repr(line if len(line) <= _SHOWN_LINE_CHARS else line[:_SHOWN_LINE_CHARS] + "...")


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
