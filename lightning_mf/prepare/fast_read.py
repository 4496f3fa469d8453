"""The fast path: one typed Polars read of a whole text file, plus vectorised checks on the result.

It accepts a file only when every row is valid and returns None otherwise, without saying where:
locating bad lines is the job of the line diagnostics (bad_rows.py), which also use this read on
each chunk so that the clean parts of a file with a few bad lines still cost little.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from lightning_mf.data.schema import ITEM, RATING, TIMESTAMP, USER
from lightning_mf.prepare.formats import ScaleBounds
from lightning_mf.prepare.layouts import LineLayout, typed_schema
from lightning_mf.prepare.row_checks import Check, any_problem


def _fast_schema(layout: LineLayout) -> tuple[dict[str, pl.DataType], list[int]]:
    """Positional schema for a headerless typed read and the field indices to keep."""
    types = typed_schema(layout)
    roles = {index: role for role, index in layout.positions.items()}
    schema: dict[str, pl.DataType] = {}
    for index in range(layout.num_fields):
        role = roles.get(index)
        schema[role or f"_{index}"] = types[role] if role else pl.String()
    return schema, sorted(roles)


def fast_read(
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
    if any_problem(frame, bounds, has_timestamp=layout.has_timestamp):
        return None
    if extra_checks:
        flags = pl.any_horizontal([condition.fill_null(False) for condition, _ in extra_checks])
        if frame.select(flags.any()).item():
            return None
    return frame
