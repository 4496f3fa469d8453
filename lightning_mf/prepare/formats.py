"""Raw input formats: how each ratings source is recognised, laid out and scaled.

Detection looks at the first line before the file name: contents are harder to get wrong than names
(a renamed `ratings.csv` still starts with `userId,movieId,...`), while the name rescues files whose
first line is itself malformed. `format=` always wins over detection.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from lightning_mf.data.schema import RatingScale
from lightning_mf.errors import DataError

PARQUET_MAGIC = b"PAR1"
SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class FormatSpec:
    """What is fixed about one input format.

    Attributes:
        name: The `--format` value.
        summary: One line for error messages: what the format looks like.
        scale: The rating scale; `None` for generic files (options, else the data's range).
        separator: Field separator; `None` when it is decided per file (Book-Crossing: from the
            header; generic CSV: the `separator` option).
        has_header: Whether line 1 is a header.
        quoted: Whether fields may be wrapped in double quotes (CSV quoting).
        header: The fixed header fields, compared case-insensitively without quotes.
        user_int: Whether user ids are integers; `None` when inferred from the data.
        item_int: As `user_int` for item ids.
        has_timestamp: Whether every line carries a timestamp field.
        fallback_encoding: Encoding used when the file is not valid UTF-8; `None`: UTF-8 only.
        item_label: What the format calls its item id, for messages; `None`: the `item_col` option.
    """

    name: str
    summary: str
    scale: RatingScale | None
    separator: str | None
    has_header: bool
    quoted: bool
    header: tuple[str, ...] | None = None
    user_int: bool | None = True
    item_int: bool | None = True
    has_timestamp: bool = True
    fallback_encoding: str | None = None
    item_label: str | None = None


MOVIELENS_CSV_HEADER = ("userId", "movieId", "rating", "timestamp")
BOOKCROSSING_HEADER = ("User-ID", "ISBN", "Book-Rating")

FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec(
            "movielens-csv",
            "MovieLens ratings.csv: header userId,movieId,rating,timestamp, half stars 0.5-5",
            RatingScale(0.5, 5.0, 0.5),
            separator=",",
            has_header=True,
            quoted=False,
            header=MOVIELENS_CSV_HEADER,
            item_label="movieId",
        ),
        # ML-1M uses whole stars 1-5 and ML-10M half stars; one scale covers both files.
        FormatSpec(
            "movielens-dat",
            "MovieLens 1M/10M ratings.dat: UserID::MovieID::Rating::Timestamp, no header",
            RatingScale(0.5, 5.0, 0.5),
            separator="::",
            has_header=False,
            quoted=False,
            item_label="MovieID",
        ),
        FormatSpec(
            "movielens-100k",
            "MovieLens 100K u.data / uN.base / uN.test: user<TAB>item<TAB>rating<TAB>timestamp, 1-5",
            RatingScale(1.0, 5.0, 1.0),
            separator="\t",
            has_header=False,
            quoted=False,
            item_label="item id",
        ),
        FormatSpec(
            "bookcrossing",
            'Book-Crossing BX-Book-Ratings.csv: header "User-ID";"ISBN";"Book-Rating" (";" or ","), 0-10',
            RatingScale(0.0, 10.0, 1.0),
            separator=None,
            has_header=True,
            quoted=True,
            header=BOOKCROSSING_HEADER,
            item_int=False,
            has_timestamp=False,
            fallback_encoding="latin-1",
            item_label="ISBN",
        ),
        FormatSpec(
            "csv",
            "any CSV with a header naming --user_col, --item_col, --rating_col [--timestamp_col]",
            None,
            separator=None,
            has_header=True,
            quoted=True,
            user_int=None,
            item_int=None,
            has_timestamp=False,
        ),
        FormatSpec(
            "parquet",
            "any Parquet file with --user_col, --item_col, --rating_col [--timestamp_col] columns",
            None,
            separator=None,
            has_header=False,
            quoted=False,
            user_int=None,
            item_int=None,
            has_timestamp=False,
        ),
    )
}

ML100K_NAME = re.compile(r"^u(\.data|[1-5a-b]\.(base|test))$", re.IGNORECASE)
_NAME_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (ML100K_NAME, "movielens-100k"),
    (re.compile(r"^ratings\.dat$", re.IGNORECASE), "movielens-dat"),
    (re.compile(r"^bx-book-ratings\.csv$", re.IGNORECASE), "bookcrossing"),
    (re.compile(r"\.(parquet|pq)$", re.IGNORECASE), "parquet"),
    (re.compile(r"^ratings\.csv$", re.IGNORECASE), "movielens-csv"),
)


@dataclass(frozen=True)
class ScaleBounds:
    """The rating range lines are checked against; a `None` bound is not checked.

    Generic files without `rating_min` / `rating_max` have open bounds and take their scale from
    the data once it is read (`resolve`).
    """

    min: float | None
    max: float | None
    step: float | None

    def describe(self) -> str:
        low = "-inf" if self.min is None else f"{self.min:g}"
        high = "inf" if self.max is None else f"{self.max:g}"
        steps = "" if self.step is None else f" in steps of {self.step:g}"
        return f"{low} to {high}{steps}"

    def resolve(self, observed_min: float, observed_max: float) -> RatingScale:
        """The dataset's scale: the bounds where set, else the observed range."""
        return RatingScale(
            min=float(observed_min if self.min is None else self.min),
            max=float(observed_max if self.max is None else self.max),
            step=self.step,
        )


def catalog_file_for(ratings_file: str) -> str | None:
    """The item catalog MovieLens ships next to a ratings file of this name (lower case), if any.

    ML csv datasets list their movies in `movies.csv`, ML-1M/10M in `movies.dat`, ml-100k (also
    for its `uN.base` / `uN.test` folds) in `u.item`; other sources ship no catalog we check.
    """
    name = ratings_file.lower()
    if name == "ratings.csv":
        return "movies.csv"
    if name == "ratings.dat":
        return "movies.dat"
    if ML100K_NAME.match(name):
        return "u.item"
    return None


def scale_bounds(spec: FormatSpec, rating_min: float | None, rating_max: float | None) -> ScaleBounds:
    """The bounds to check: `rating_min` / `rating_max` where given, else the format's scale.

    Args:
        spec: The input format.
        rating_min: Lowest valid rating, overriding the format's.
        rating_max: Highest valid rating, overriding the format's.

    Raises:
        DataError: `rating_min` is above `rating_max`.
    """
    low = rating_min if rating_min is not None else (spec.scale.min if spec.scale else None)
    high = rating_max if rating_max is not None else (spec.scale.max if spec.scale else None)
    if low is not None and high is not None and low > high:
        raise DataError(f"rating_min ({low:g}) must not exceed rating_max ({high:g})")
    return ScaleBounds(low, high, spec.scale.step if spec.scale else None)


def get_format(name: str) -> FormatSpec:
    """The spec of a format name, or a DataError listing the known ones."""
    if name not in FORMATS:
        raise DataError(f"unknown format {name!r}; expected 'auto' or one of: {', '.join(FORMATS)}")
    return FORMATS[name]


def format_help() -> str:
    """The known formats, one per line, for error messages."""
    return "\n".join(f"  {spec.name}: {spec.summary}" for spec in FORMATS.values())


def split_header(line: str, separator: str) -> list[str]:
    """Header fields of one CSV line, quotes removed (the header is tiny, so the csv module is fine)."""
    fields = next(csv.reader([line], delimiter=separator, quotechar='"'), [])
    return [field.strip() for field in fields]


def first_line(path: Path) -> str:
    """The first line of a text file for sniffing: BOM and line end removed, decoded leniently.

    Latin-1 never fails, so sniffing works for any encoding; the readers decode strictly later.
    """
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    line = head.split(b"\n", 1)[0].removeprefix(b"\xef\xbb\xbf").rstrip(b"\r")
    return line.decode("latin-1")


def bookcrossing_separator(line: str) -> str | None:
    """The separator (`;` or `,`) if `line` is a Book-Crossing header, else None."""
    for separator in (";", ","):
        names = [name.lower() for name in split_header(line, separator)]
        if names == [name.lower() for name in BOOKCROSSING_HEADER]:
            return separator
    return None


def _is_int(text: str) -> bool:
    return text.strip().lstrip("+-").isdigit()


def _sniff_content(line: str, columns: tuple[str, ...], separator: str) -> str | None:
    if split_header(line, ",") == list(MOVIELENS_CSV_HEADER):
        return "movielens-csv"
    if bookcrossing_separator(line) is not None:
        return "bookcrossing"
    parts = line.split("::")
    if len(parts) == 4 and all(_is_int(p) for p in (parts[0], parts[1], parts[3])):
        return "movielens-dat"
    parts = line.split("\t")
    if len(parts) == 4 and all(_is_int(p) for p in parts):
        return "movielens-100k"
    if len(separator) == 1 and set(columns) <= set(split_header(line, separator)):
        return "csv"
    return None


def detect_format(
    path: Path,
    *,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str = "rating",
    timestamp_col: str | None = None,
    separator: str = ",",
    display_name: str | None = None,
) -> str:
    """Guess the format of a ratings file from its first line, then its name.

    Args:
        path: The ratings file.
        user_col: Generic CSV: the user column a header must name to be detected as `csv`.
        item_col: Generic CSV: the item column.
        rating_col: Generic CSV: the rating column.
        timestamp_col: Generic CSV: the timestamp column, if any.
        separator: Generic CSV: the field separator.
        display_name: How to name the file in errors; defaults to `path`.

    Returns:
        A format name (a key of `FORMATS`).

    Raises:
        DataError: Nothing matched; the message lists the formats and how to force one.
    """
    with open(path, "rb") as handle:
        magic = handle.read(len(PARQUET_MAGIC))
    if magic == PARQUET_MAGIC:
        return "parquet"
    line = first_line(path)
    columns = tuple(c for c in (user_col, item_col, rating_col, timestamp_col) if c is not None)
    found = _sniff_content(line, columns, separator)
    if found is not None:
        return found
    for pattern, name in _NAME_HINTS:
        if pattern.search(path.name):
            return name
    shown = line if len(line) <= 120 else line[:120] + "..."
    raise DataError(
        f"{display_name or path}: cannot tell the input format from the file name and first line "
        f"{shown!r}. Known formats:\n{format_help()}\n"
        "Force one with --format NAME; for other CSV files use --format csv with --user_col, "
        "--item_col, --rating_col, optionally --timestamp_col and --separator."
    )
