"""Parquet input: the ratings columns of any Parquet file, cast to the contract and checked by row.

Parquet is typed already, so nothing is parsed: ids become Int64 or String, ratings Float32 and
timestamps epoch seconds, and a bad row is reported by its 1-based row number as a line would be.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from lightning_mf.data.schema import ITEM, RATING, TIMESTAMP, USER
from lightning_mf.errors import DataError
from lightning_mf.prepare.formats import ScaleBounds
from lightning_mf.prepare.row_checks import REASON, Check, partition, value_checks


def read_parquet_ratings(
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
    checks = value_checks(frame.schema, bounds, has_timestamp=TIMESTAMP in columns)
    checks += catalog_checks(frame.schema[ITEM])
    numbered = frame.with_row_index("__row", offset=1)
    valid, bad = partition(numbered, checks)
    shown = [pl.col(c).cast(pl.String).fill_null("") for c in (USER, ITEM, RATING, TIMESTAMP)]
    rejected = bad.select(
        pl.lit(name, dtype=pl.String).alias("file"),
        pl.col("__row").cast(pl.Int64).alias("line_number"),
        pl.concat_str(shown, separator=",").alias("line"),
        pl.col(REASON).alias("reason"),
    )
    return valid.drop("__row"), rejected
