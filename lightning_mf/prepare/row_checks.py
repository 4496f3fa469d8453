"""What makes a typed rating row bad, as (condition, reason) pairs of Polars expressions.

The line diagnostics, Parquet input and (in aggregate form) the fast reader all judge rows with
these checks, so every path accepts exactly the same rows and gives the same reasons.
"""

from __future__ import annotations

import polars as pl

from lightning_mf.data.schema import ITEM, RATING, TIMESTAMP, USER
from lightning_mf.prepare.formats import ScaleBounds

# Column of the first failing reason in the bad rows `partition` returns.
REASON = "__reason"
# A (condition, reason) pair: rows where `condition` holds are bad, for the string `reason`.
Check = tuple[pl.Expr, pl.Expr]


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
    bad = flagged.filter(pl.col("__failed")).with_columns(first_problem(checks).alias(REASON)).drop("__failed")
    return valid, bad
