"""Tiny raw ratings files in every supported format, written by hand so each quirk is visible."""

from __future__ import annotations

import zipfile
from pathlib import Path

import polars as pl

# (user, item, rating, timestamp): the rows every MovieLens-shaped fixture below holds.
ML_ROWS = [(1, 31, 2.5, 1260759144), (1, 1029, 3.0, 1260759179), (2, 10, 4.0, 835355493), (7, 31, 0.5, 851866703)]
ML100K_ROWS = [(196, 242, 3.0, 881250949), (186, 302, 3.0, 891717742), (22, 377, 1.0, 878887116)]
ML_HEADER = "userId,movieId,rating,timestamp"


def _num(value: float) -> str:
    return f"{value:g}" if value != int(value) else f"{int(value)}"


def ml_body(rows: list[tuple] = ML_ROWS, *, eol: str = "\n") -> bytes:
    """The data lines of a MovieLens `ratings.csv` (ratings written like GroupLens: `2.5`, `3.0`)."""
    return "".join(f"{u},{i},{float(r):.1f},{t}{eol}" for u, i, r, t in rows).encode()


def ml_csv(rows: list[tuple] = ML_ROWS, *, eol: str = "\n") -> bytes:
    """A MovieLens `ratings.csv`: header plus `ml_body`."""
    return (ML_HEADER + eol).encode() + ml_body(rows, eol=eol)


def ml_dat(rows: list[tuple] = ML_ROWS, *, eol: str = "\n") -> bytes:
    """A MovieLens 1M/10M `ratings.dat`: `::` separated, no header."""
    return "".join(f"{u}::{i}::{_num(r)}::{t}{eol}" for u, i, r, t in rows).encode()


def ml100k(rows: list[tuple] = ML100K_ROWS) -> bytes:
    """A MovieLens 100K `u.data`: tab separated, no header."""
    return "".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in rows).encode()


# Book-Crossing as distributed: `;`, every field quoted, latin-1, CRLF. ISBNs keep leading zeros,
# a final `X`, and one has a stray non-ASCII byte (0xB0, the degree sign in latin-1).
BX_ROWS = [
    (276725, "034545104X", 0.0),
    (276726, "0155061224", 5.0),
    (276727, "0446520802", 0.0),
    (2, "3404611306°", 7.0),
    (8, "0002005018", 10.0),
]
BX_HEADER = '"User-ID";"ISBN";"Book-Rating"'


def bookcrossing(
    rows: list[tuple] = BX_ROWS,
    *,
    separator: str = ";",
    quoted: bool = True,
    encoding: str = "latin-1",
    eol: str = "\r\n",
) -> bytes:
    """A Book-Crossing `BX-Book-Ratings.csv` in the given dialect."""

    def field(value: object) -> str:
        return f'"{value}"' if quoted else str(value)

    header = separator.join(field(name) for name in ("User-ID", "ISBN", "Book-Rating"))
    lines = [header] + [separator.join(field(v) for v in (u, isbn, int(r))) for u, isbn, r in rows]
    return (eol.join(lines) + eol).encode(encoding)


# Item catalogs listing the fixtures' items plus one nobody rated. Titles carry the quirks of the
# real files: commas (quoted in movies.csv), a doubled quote, a single colon, non-ASCII letters.
ML_MOVIES = {
    10: "GoldenEye (1995)",
    31: "American President, The (1995)",
    1029: "Cité des enfants perdus, La (1995)",
    2: 'Star Wars: Episode IV - "A New Hope" (1977)',
}
ML100K_MOVIES = {
    242: "Kolya (1996)",
    302: "L.A. Confidential (1997)",
    377: "Heavyweights (1994)",
    1: "Café au lait (1993)",
}


def movies_csv(movies: dict[int, str] = ML_MOVIES) -> bytes:
    """A MovieLens `movies.csv`: header, UTF-8, titles with a comma or quote wrapped in quotes."""

    def title(text: str) -> str:
        return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text

    lines = ["movieId,title,genres"] + [f"{i},{title(t)},Comedy|Drama" for i, t in movies.items()]
    return ("\n".join(lines) + "\n").encode()


def movies_dat(movies: dict[int, str] = ML_MOVIES) -> bytes:
    """A MovieLens 1M `movies.dat`: `MovieID::Title::Genres`, latin-1, no header."""
    return "".join(f"{i}::{t}::Animation|Children's\n" for i, t in movies.items()).encode("latin-1")


def u_item(movies: dict[int, str] = ML100K_MOVIES) -> bytes:
    """A MovieLens 100K `u.item`: `|` separated, latin-1, id, title, dates, URL, 19 genre flags."""
    flags = "|".join("0" * 19)
    lines = [f"{i}|{t}|01-Jan-1995||http://us.imdb.com/M/title-exact?{i}|{flags}\n" for i, t in movies.items()]
    return "".join(lines).encode("latin-1")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip archive holding `members` (name inside the archive -> content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def expected_frame(rows: list[tuple], *, item_dtype: pl.DataType = pl.Int64(), timestamps: bool = True) -> pl.DataFrame:
    """The frame `read_ratings` must return for `rows`."""
    return pl.DataFrame(
        {
            "user": [r[0] for r in rows],
            "item": [r[1] for r in rows],
            "rating": [float(r[2]) for r in rows],
            "timestamp": [r[3] for r in rows] if timestamps else [None] * len(rows),
        },
        schema={"user": pl.Int64(), "item": item_dtype, "rating": pl.Float32(), "timestamp": pl.Int64()},
    )
