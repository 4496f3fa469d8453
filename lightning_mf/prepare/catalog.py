"""Item catalogs: the ids a MovieLens dataset lists in `movies.csv`, `movies.dat` or `u.item`.

A rating whose item its dataset's own catalog does not list is a dangling reference, bad input
like a malformed line: `read_ratings(known_items=...)` rejects it with `missing_item_check`.

Only the id, the first field of each line, is read. Titles are quoted and hold commas in
`movies.csv`, and are latin-1 in ML-1M's `movies.dat` and in `u.item`; ids are ASCII digits in
every release. So the bytes are decoded as latin-1 (which never fails and leaves ASCII as is)
and each line is cut at its first separator: one vectorised pass, no CSV dialect to get right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from lightning_mf.data.schema import ITEM
from lightning_mf.errors import DataError
from lightning_mf.prepare.row_checks import Check
from lightning_mf.prepare.text_lines import LINE, LINE_NUMBER, lines_frame, shown_line

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class CatalogSpec:
    """How one catalog file is laid out.

    Attributes:
        name: The file name, lower case (files are matched ignoring case).
        separator: Separator after the id field.
        header: The first field of the header line (compared ignoring case); None: no header.
        layout: What a line looks like, for error messages.
    """

    name: str
    separator: str
    header: str | None
    layout: str


CATALOGS: dict[str, CatalogSpec] = {
    spec.name: spec
    for spec in (
        CatalogSpec("movies.csv", ",", "movieId", "movieId,title,genres after a header line"),
        CatalogSpec("movies.dat", "::", None, "MovieID::Title::Genres"),
        CatalogSpec("u.item", "|", None, "movie id|movie title|release date|...|genre flags"),
    )
}


def read_item_catalog(path: Path, display_name: str | None = None) -> pl.Series:
    """The item ids a MovieLens item catalog lists.

    Args:
        path: A `movies.csv`, `movies.dat` or `u.item` file (the name, in any case, picks the layout).
        display_name: How to name the file in messages (e.g. `archive.zip:member`); defaults to `path`.

    Returns:
        The distinct ids, sorted, as an Int64 Series named `item`.

    Raises:
        DataError: Unknown catalog name, missing, unreadable or empty file, a wrong `movies.csv`
            header, or a line whose first field is not an integer id.
    """
    path = Path(path)
    name = display_name or str(path)
    spec = CATALOGS.get(path.name.lower())
    if spec is None:
        raise DataError(
            f"{name}: not a known item catalog; expected a file named {', '.join(CATALOGS)} (any case)"
        )
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{name}: cannot read the item catalog: {error.strerror or error}") from None
    lines = lines_frame(1, data.removeprefix(_BOM).decode("latin-1"))
    lines = lines.filter(pl.col(LINE).str.strip_chars().str.len_bytes() > 0)
    if spec.header is not None and lines.height:
        _check_header(lines, spec, name)
        lines = lines.filter(pl.col(LINE_NUMBER) > 1)
    if lines.height == 0:
        raise DataError(f"{name}: the item catalog lists no items; expected lines {spec.layout!r}")
    parts = pl.col(LINE).str.splitn(spec.separator, 2)
    ids = lines.with_columns(
        parts.struct.field("field_0").str.strip_chars().str.strip_chars('"').str.to_integer(strict=False).alias(ITEM),
        parts.struct.field("field_1").is_not_null().alias("__separated"),
    )
    bad = ids.filter(pl.col(ITEM).is_null() | ~pl.col("__separated"))
    if bad.height:
        number, line = bad.row(0)[:2]
        more = ""
        if bad.height > 1:
            more = f" ({bad.height - 1} more such line{'s' if bad.height > 2 else ''} after it)"
        raise DataError(
            f"{name}, line {number}: expected an item catalog line {spec.layout!r} starting with an integer "
            f"id, found {shown_line(line)}{more}. Is this the dataset's own {spec.name}?"
        )
    return ids.get_column(ITEM).unique().sort()


def _check_header(lines: pl.DataFrame, spec: CatalogSpec, name: str) -> None:
    """Line 1 must be the header; the caller has dropped blank lines, so a blank line 1 is none."""
    header = lines.filter(pl.col(LINE_NUMBER) == 1).get_column(LINE)
    found = header.item() if header.len() else ""
    first = found.split(spec.separator, 1)[0].strip().strip('"')
    if first.lower() != (spec.header or "").lower():
        raise DataError(
            f"{name}, line 1: expected the header of a MovieLens {spec.name} ({spec.layout!r}, "
            f"first column {spec.header!r}), found {shown_line(found)}"
        )


def missing_item_check(
    known_items: pl.Series, item_dtype: pl.DataType, *, item_label: str, catalog_name: str | None
) -> Check:
    """A (condition, reason) check flagging rows whose `item` is not in `known_items`.

    Args:
        known_items: The ids the catalog lists (`read_item_catalog`).
        item_dtype: The dtype of the `item` column checked; the ids are cast to it (Int64 ids
            compare as their decimal text against string item columns).
        item_label: What the ratings file calls its item id (`movieId`), for the reason.
        catalog_name: How to name the catalog in the reason; None: "the item catalog".
    """
    ids = known_items.cast(item_dtype, strict=False).drop_nulls().unique().implode()
    item = pl.col(ITEM)
    shown = item.cast(pl.String)
    if item_dtype == pl.String:
        shown = pl.concat_str(pl.lit("'"), shown, pl.lit("'"))
    where = catalog_name or "the item catalog"
    reason = pl.concat_str(pl.lit(f"{item_label} "), shown, pl.lit(f" is not in {where}"))
    return ~item.is_in(ids), reason
