"""Item catalogs: reading movies.csv / movies.dat / u.item, and ratings of items they do not list."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal, assert_series_equal

from fixtures_raw import (
    BX_ROWS,
    ML100K_MOVIES,
    ML_HEADER,
    ML_MOVIES,
    ML_ROWS,
    bookcrossing,
    expected_frame,
    ml100k,
    ml_body,
    ml_csv,
    ml_dat,
    movies_csv,
    movies_dat,
    u_item,
    write,
)
from lightning_mf.prepare import bad_rows
from lightning_mf.prepare.catalog import missing_item_check, read_item_catalog
from lightning_mf.prepare.formats import ScaleBounds
from lightning_mf.prepare.readers import read_ratings
from lightning_mf.errors import DataError

ML_IDS = sorted(ML_MOVIES)  # the fixtures' items (10, 31, 1029) plus 2, which nobody rated


def _ids(values: list[int]) -> pl.Series:
    return pl.Series("item", sorted(values), dtype=pl.Int64)


@pytest.fixture
def no_diagnostics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if a read leaves the fast path."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the line diagnostics ran on a clean file")

    monkeypatch.setattr(bad_rows, "scan_file", refuse)


# --- reading catalogs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "ids"),
    [
        ("movies.csv", movies_csv(), ML_IDS),
        ("movies.dat", movies_dat(), ML_IDS),
        ("u.item", u_item(), sorted(ML100K_MOVIES)),
        ("Movies.CSV", movies_csv(), ML_IDS),
        ("U.ITEM", u_item(), sorted(ML100K_MOVIES)),
    ],
)
def test_read_each_format(tmp_path: Path, name: str, data: bytes, ids: list[int]) -> None:
    assert_series_equal(read_item_catalog(write(tmp_path / name, data)), _ids(ids))


def test_quirks_of_real_files(tmp_path: Path) -> None:
    """BOM, CRLF, blank lines, duplicate ids and no final newline change nothing."""
    text = movies_csv().decode().replace("\n", "\r\n")
    data = b"\xef\xbb\xbf" + (text + "\r\n10,GoldenEye again (1995),Action\r\n").encode()
    assert_series_equal(read_item_catalog(write(tmp_path / "movies.csv", data)), _ids(ML_IDS))
    unterminated = write(tmp_path / "u.item", u_item().rstrip(b"\n"))
    assert_series_equal(read_item_catalog(unterminated), _ids(list(ML100K_MOVIES)))


def test_titles_with_separators_do_not_matter(tmp_path: Path) -> None:
    """Only the id before the first separator is read: `::`-free colons, commas, quotes and pipes."""
    dat = '7::Star Wars: Episode V::Action\n8::Dr. Strangelove or: How I Learned...::Comedy\n'.encode("latin-1")
    assert read_item_catalog(write(tmp_path / "movies.dat", dat)).to_list() == [7, 8]
    csv = b'movieId,title,genres\n5,"A, B, and ""C"" (2001)",Drama\n6,Plain|Piped (2002),Drama\n'
    assert read_item_catalog(write(tmp_path / "movies.csv", csv)).to_list() == [5, 6]


@pytest.mark.parametrize(
    ("name", "data", "pattern"),
    [
        ("movies.csv", b"", r"movies\.csv: the item catalog lists no items; expected lines 'movieId,title,genres"),
        ("movies.csv", b"movieId,title,genres\n\n", r"lists no items"),
        ("movies.csv", b"id,title\n1,x\n", r"movies\.csv, line 1: expected the header of a MovieLens movies\.csv"),
        ("movies.csv", b"1,Toy Story (1995),Comedy\n", r"line 1: expected the header .* found '1,Toy Story"),
        (
            "movies.dat",
            b"1::A::B\n2::C::D\nx::E::F\n\n4\n",
            r"movies\.dat, line 3: expected an item catalog line 'MovieID::Title::Genres' starting with an "
            r"integer id, found 'x::E::F' \(1 more such line after it\)",
        ),
        ("u.item", b"1|A|x\n2\xe9|B|y\n", r"u\.item, line 2: expected an item catalog line 'movie id\|movie title"),
        ("u.item", b"1|A|x\n2,B,y\n", r"u\.item, line 2: .* found '2,B,y'"),
        (
            "items.csv",
            b"movieId,title\n1,x\n",
            r"items\.csv: not a known item catalog; expected a file named movies\.csv, movies\.dat, u\.item",
        ),
    ],
)
def test_unreadable_catalogs(tmp_path: Path, name: str, data: bytes, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_item_catalog(write(tmp_path / name, data))


def test_missing_catalog_file_and_display_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^ml\.zip:ml/movies\.csv: cannot read the item catalog: No such file"):
        read_item_catalog(tmp_path / "movies.csv", "ml.zip:ml/movies.csv")


# --- ratings checked against a catalog -----------------------------------------------------------


def test_all_items_known_stays_on_the_fast_path(tmp_path: Path, no_diagnostics: None) -> None:
    path = write(tmp_path / "ratings.csv", ml_csv())
    raw = read_ratings(path, known_items=_ids(ML_IDS), catalog_name="movies.csv")
    assert_frame_equal(raw.frame, expected_frame(ML_ROWS))
    assert raw.rejected.height == 0


def _with_dangling(path: Path, eol: str = "\n") -> tuple[Path, list[tuple[int, str]]]:
    """`ML_ROWS` with two ratings of unlisted items, a blank line and no final newline.

    Returns the file and its dangling (line number, line) pairs.
    """
    lines = [ML_HEADER, "1,31,2.5,1260759144", "3,999,4.0,1", "1,1029,3.0,1260759179", "", "2,10,4.0,835355493"]
    lines += ["7,31,0.5,851866703", "999,999999,5.0,1493846415"]
    write(path, eol.join(lines).encode())
    return path, [(3, "3,999,4.0,1"), (8, "999,999999,5.0,1493846415")]


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_dangling_items_error(tmp_path: Path, eol: str) -> None:
    path, dangling = _with_dangling(tmp_path / "ratings.csv", eol)
    with pytest.raises(DataError) as caught:
        read_ratings(
            path, known_items=_ids(ML_IDS), catalog_name="ml.zip:ml/movies.csv", display_name="ml.zip:ml/ratings.csv"
        )
    message = str(caught.value)
    expected = "ml.zip:ml/ratings.csv, line 3: movieId 999 is not in ml.zip:ml/movies.csv: '3,999,4.0,1'"
    assert message.startswith(expected), message
    assert "--on_bad_rows skip" in message


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_dangling_items_skipped_keeps_every_valid_row(tmp_path: Path, eol: str) -> None:
    path, dangling = _with_dangling(tmp_path / "ratings.csv", eol)
    raw = read_ratings(path, known_items=_ids(ML_IDS), catalog_name="movies.csv", on_bad_rows="skip")
    assert_frame_equal(raw.frame, expected_frame(ML_ROWS))
    assert raw.rejected.schema == pl.Schema(bad_rows.REJECTED_SCHEMA)
    assert raw.rejected.select("line_number", "line").rows() == dangling
    assert raw.rejected["file"].to_list() == [str(path)] * 2
    reasons = ["movieId 999 is not in movies.csv", "movieId 999999 is not in movies.csv"]
    assert raw.rejected["reason"].to_list() == reasons


def test_dangling_and_malformed_lines_in_line_order(tmp_path: Path) -> None:
    """The first bad line of any kind is reported; a bad item id is a parse error, not a missing item."""
    data = ml_csv(ML_ROWS[:1]) + b"1,5,3.0,1\n1,x,3.0,1\n1,6,9.0,1\n" + ml_body(ML_ROWS[1:])
    path = write(tmp_path / "ratings.csv", data)
    expected = r"line 3: movieId 5 is not in movies\.csv: '1,5,3\.0,1' \(2 more malformed lines"
    with pytest.raises(DataError, match=expected):
        read_ratings(path, known_items=_ids(ML_IDS), catalog_name="movies.csv")
    raw = read_ratings(path, known_items=_ids(ML_IDS), catalog_name="movies.csv", on_bad_rows="skip")
    assert_frame_equal(raw.frame, expected_frame(ML_ROWS))
    assert raw.rejected.select("line_number", "reason").rows() == [
        (3, "movieId 5 is not in movies.csv"),
        (4, "item id 'x' is not an integer"),
        (5, "rating 9.0 is outside the scale 0.5 to 5 in steps of 0.5"),
    ]


@pytest.mark.parametrize(
    ("name", "data", "known", "line", "reason"),
    [
        ("ratings.dat", ml_dat(), [10, 1029], 1, "MovieID 31 is not in movies.dat"),
        ("u.data", ml100k(), [242, 377], 2, "item id 302 is not in u.item"),
    ],
)
def test_other_movielens_formats(
    tmp_path: Path, name: str, data: bytes, known: list[int], line: int, reason: str
) -> None:
    path = write(tmp_path / name, data)
    catalog = name.replace("ratings.dat", "movies.dat").replace("u.data", "u.item")
    with pytest.raises(DataError, match=rf"line {line}: {reason}"):
        read_ratings(path, known_items=_ids(known), catalog_name=catalog)
    raw = read_ratings(path, known_items=_ids(known), catalog_name=catalog, on_bad_rows="skip")
    assert raw.rejected["line_number"].to_list()[0] == line
    assert set(raw.frame["item"].to_list()) <= set(known)


def test_string_items_and_default_catalog_name(tmp_path: Path) -> None:
    path = write(tmp_path / "BX-Book-Ratings.csv", bookcrossing())
    known = pl.Series([isbn for _, isbn, _ in BX_ROWS if isbn != "0155061224"])
    raw = read_ratings(path, known_items=known, on_bad_rows="skip")
    assert raw.frame.height == len(BX_ROWS) - 1
    assert raw.rejected.select("line_number", "reason").rows() == [(3, "ISBN '0155061224' is not in the item catalog")]


def test_parquet_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pl.DataFrame({"user": [1, 2, 3], "item": [10, 11, 10], "rating": [1.0, 2.0, 3.0]}).write_parquet(path)
    raw = read_ratings(path, known_items=_ids([10]), catalog_name="movies.csv", on_bad_rows="skip")
    assert raw.frame["user"].to_list() == [1, 3]
    assert raw.rejected.select("line_number", "reason").rows() == [(2, "item 11 is not in movies.csv")]


def test_every_item_dangling(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", ml_csv())
    expected = r"no valid ratings; all 4 data lines are malformed, the first at line 2: movieId 31"
    with pytest.raises(DataError, match=expected):
        read_ratings(path, known_items=_ids([1]), catalog_name="movies.csv", on_bad_rows="skip")


def test_chunked_scan_agrees(tmp_path: Path) -> None:
    """Chunk borders change neither rows nor line numbers of dangling lines."""
    rows = [f"{u},{u % 9 + 1},{(u % 10 + 1) / 2},{u}" for u in range(1, 80)]
    path = write(tmp_path / "ratings.csv", ("\n".join([ML_HEADER] + rows) + "\n").encode())
    known = _ids([1, 2, 3, 4, 5, 6, 7, 8])  # item 9 (every 9th user) is missing
    whole = read_ratings(path, known_items=known, catalog_name="movies.csv", on_bad_rows="skip")
    assert whole.rejected["line_number"].to_list() == [u + 1 for u in range(8, 80, 9)]
    layout = bad_rows.LineLayout(",", 4, {"user": 0, "item": 1, "rating": 2, "timestamp": 3}, True, True, False, True)
    check = missing_item_check(known, pl.Int64(), item_label="movieId", catalog_name="movies.csv")
    for chunk_bytes in (7, 100, 10_000):
        scan = bad_rows.scan_file(
            path, layout, ScaleBounds(0.5, 5.0, 0.5), encoding="utf-8", display_name=str(path),
            chunk_bytes=chunk_bytes, extra_checks=[check],
        )  # fmt: skip
        assert_frame_equal(scan.frame, whole.frame)
        assert_frame_equal(scan.rejected, whole.rejected)


# --- real data -----------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_ml_latest_small_with_movies(ml_latest_small_dir: Path) -> None:
    """The published dataset: 100,836 ratings of 9,724 listed movies by 610 users.

    A shared copy may carry extra ratings of unlisted movies; exactly those lines are rejected.
    """
    path, movies = ml_latest_small_dir / "ratings.csv", ml_latest_small_dir / "movies.csv"
    listed = pl.read_csv(movies, columns=["movieId"], schema_overrides={"movieId": pl.Int64})["movieId"]
    # No blank lines in this file, so row i is line i + 2 (after the header).
    ratings = pl.read_csv(path, schema_overrides={"movieId": pl.Int64}).with_row_index("line_number", offset=2)
    dangling = ratings.filter(~pl.col("movieId").is_in(listed.implode()))
    catalog = read_item_catalog(movies)
    assert catalog.len() == listed.n_unique()

    raw = read_ratings(path, known_items=catalog, catalog_name="movies.csv", on_bad_rows="skip")
    assert raw.frame.height == 100_836
    assert raw.frame["user"].n_unique() == 610
    assert raw.frame["item"].n_unique() == 9_724
    assert raw.rejected["line_number"].to_list() == dangling["line_number"].cast(pl.Int64).to_list()
    assert raw.frame.height + raw.rejected.height == ratings.height
    text_lines = path.read_text().splitlines()
    for number, line, reason in raw.rejected.select("line_number", "line", "reason").rows():
        assert line == text_lines[number - 1]
        assert re.fullmatch(r"movieId \d+ is not in movies\.csv", reason)
    if dangling.height:
        first = dangling.row(0, named=True)
        expected = rf"ratings\.csv, line {first['line_number']}: movieId {first['movieId']} is not in movies\.csv"
        with pytest.raises(DataError, match=expected):
            read_ratings(path, known_items=catalog, catalog_name="movies.csv")


@pytest.mark.realdata
def test_real_ml100k_with_u_item(ml100k_dir: Path) -> None:
    catalog = read_item_catalog(ml100k_dir / "u.item")
    assert catalog.len() == 1_682
    raw = read_ratings(ml100k_dir / "u.data", known_items=catalog, catalog_name="u.item")
    assert (raw.frame.height, raw.rejected.height) == (100_000, 0)
    assert (raw.frame["user"].n_unique(), raw.frame["item"].n_unique()) == (943, 1_682)
    fold = read_ratings(ml100k_dir / "u1.test", known_items=catalog, catalog_name="u.item")
    assert fold.frame.height == 20_000
