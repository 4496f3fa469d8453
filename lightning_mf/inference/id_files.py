"""Files of raw ids a user hands in: `user,item` pairs for `predict --pairs`, users for `recommend`.

CSV (UTF-8, a header naming the columns, fields plain or in double quotes) or Parquet (integer or
string columns). Ids are returned as they are written (strings for CSV), to be matched against the
dataset by `id_maps.IdMap`: an id the dataset does not know is not an error. A malformed file is:
a missing column, a line with the wrong number of fields, an empty id; the error names the file,
the line (1-based, counting the header, as an editor does; a row number for Parquet) and what
was expected. Lines are numbered by `prepare.text_lines`, so blank lines keep the count right.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from lightning_mf.errors import DataError
from lightning_mf.prepare.formats import split_header
from lightning_mf.prepare.text_lines import LINE, LINE_NUMBER, iter_text_chunks, lines_frame, shown_line

PARQUET_SUFFIXES = (".parquet", ".pq")


def read_id_columns(path: str | Path, columns: Sequence[str]) -> pl.DataFrame:
    """The id `columns` of a CSV or Parquet file, in file order.

    Args:
        path: The file; `.parquet` / `.pq` is read as Parquet, anything else as CSV.
        columns: Column names that must be present (others are ignored).

    Raises:
        DataError: A missing or empty file, a missing column, a malformed line or row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected a header naming the columns {', '.join(columns)}")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(path, list(columns))
    return _read_csv(path, list(columns))


def _read_parquet(path: Path, columns: list[str]) -> pl.DataFrame:
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as error:  # noqa: BLE001 - polars raises several kinds for a non-Parquet file
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    missing = [name for name in columns if name not in schema]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {list(schema)}. Expected {columns}")
    for name in columns:
        dtype = schema[name]
        if not (dtype.is_integer() or dtype == pl.String):
            raise DataError(f"{path}: column {name!r} is {dtype}; expected integer or string ids")
    frame = pl.read_parquet(path, columns=columns)
    for name in columns:
        bad = frame[name].is_null()
        if frame[name].dtype == pl.String:
            bad = bad | (frame[name].str.strip_chars().str.len_bytes() == 0)
        if bad.any():
            row = int(bad.arg_max()) + 1
            raise DataError(f"{path}, row {row}: empty {name} id; expected an id in every row")
    return frame


def _field_pattern(count: int) -> str:
    """A regex of a whole CSV line of `count` fields, each double-quoted ("" for a quote) or plain."""
    field = r'(?:"((?:[^"]|"")*)"|([^",][^,]*|))'
    return "^" + ",".join([field] * count) + "$"


def _read_csv(path: Path, columns: list[str]) -> pl.DataFrame:
    frames = [lines_frame(first, text) for first, _raw, text in iter_text_chunks(path, "utf-8", display_name=str(path))]
    lines = pl.concat(frames)
    header = lines[LINE][0]
    names = split_header(header, ",")
    missing = [name for name in columns if name not in names]
    if missing:
        raise DataError(f"{path}, line 1: the header has {names}; expected the column(s) {columns} "
                        f"(missing {missing}), comma-separated")
    data = lines.slice(1).filter(pl.col(LINE).str.strip_chars().str.len_bytes() > 0)
    groups = pl.col(LINE).str.extract_groups(_field_pattern(len(names)))
    parts = data.with_columns(groups.alias("__parts"))
    fields = {}
    for name in columns:
        position = names.index(name)
        quoted = pl.col("__parts").struct.field(str(2 * position + 1)).str.replace_all('""', '"', literal=True)
        fields[name] = pl.coalesce(quoted, pl.col("__parts").struct.field(str(2 * position + 2)))
    parsed = parts.select(LINE_NUMBER, LINE, *(value.alias(name) for name, value in fields.items()))
    shape_ok = pl.col("__parts").struct.field("1").is_not_null() | pl.col("__parts").struct.field("2").is_not_null()
    bad_shape = parts.filter(~shape_ok.fill_null(False))
    if bad_shape.height:
        first = bad_shape.row(0, named=True)
        found = len(re.findall(",", first[LINE])) + 1
        raise DataError(f"{path}, line {first[LINE_NUMBER]}: expected {len(names)} comma-separated fields "
                        f"({', '.join(names)}), found {found}: {shown_line(first[LINE])}")
    for name in columns:
        empty = parsed.filter(pl.col(name).str.strip_chars().str.len_bytes() == 0)
        if empty.height:
            first = empty.row(0, named=True)
            raise DataError(f"{path}, line {first[LINE_NUMBER]}: empty {name} id; expected an id in every row: "
                            f"{shown_line(first[LINE])}")
    return parsed.select(columns)
