"""Split numbered data lines into valid typed rows and bad lines, each with its first reason.

A line is cut into its fields (quoted CSV fields by one regex), the fields are parsed to typed
columns and both the parse and the value checks run as bulk Polars expressions over all lines at
once, never as a Python loop over rows. The reasons are built for the failing lines only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl

from lightning_mf.data.schema import ITEM, RATING, TIMESTAMP, USER
from lightning_mf.prepare.formats import ScaleBounds
from lightning_mf.prepare.layouts import LineLayout
from lightning_mf.prepare.row_checks import REASON, Check, partition, value_checks
from lightning_mf.prepare.text_lines import LINE, LINE_NUMBER


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
    return valid.select(USER, ITEM, RATING, TIMESTAMP), bad.select(LINE_NUMBER, LINE, REASON)
