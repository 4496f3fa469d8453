"""read_ratings: every input format, the Book-Crossing quirks, and each kind of malformed line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from fixtures_raw import (
    BX_ROWS,
    ML100K_ROWS,
    ML_HEADER,
    ML_ROWS,
    bookcrossing,
    expected_frame,
    ml100k,
    ml_body,
    ml_csv,
    ml_dat,
    write,
)
from lightning_mf.prepare import bad_rows
from lightning_mf.prepare.formats import ScaleBounds
from lightning_mf.prepare.readers import read_ratings
from lightning_mf.data.schema import RatingScale
from lightning_mf.errors import DataError


@pytest.fixture
def no_diagnostics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if a read leaves the fast path."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the line diagnostics ran on a clean file")

    monkeypatch.setattr(bad_rows, "scan_file", refuse)


# --- every format, clean -------------------------------------------------------------------------


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_movielens_csv(tmp_path: Path, eol: str, no_diagnostics: None) -> None:
    path = write(tmp_path / "ratings.csv", ml_csv(eol=eol))
    raw = read_ratings(path)
    assert raw.format == "movielens-csv"
    assert raw.scale == RatingScale(0.5, 5.0, 0.5)
    assert raw.files == [path]
    assert raw.rejected.height == 0
    assert_frame_equal(raw.frame, expected_frame(ML_ROWS))


def test_movielens_csv_detected_by_header_not_name(tmp_path: Path) -> None:
    """A byte order mark, no final newline and an unrelated file name still read."""
    data = b"\xef\xbb\xbf" + ml_csv().rstrip(b"\n")
    raw = read_ratings(write(tmp_path / "export.txt", data))
    assert raw.format == "movielens-csv"
    assert_frame_equal(raw.frame, expected_frame(ML_ROWS))


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_movielens_dat(tmp_path: Path, eol: str, no_diagnostics: None) -> None:
    raw = read_ratings(write(tmp_path / "ratings.dat", ml_dat(eol=eol)))
    assert raw.format == "movielens-dat"
    assert raw.scale == RatingScale(0.5, 5.0, 0.5)
    assert_frame_equal(raw.frame, expected_frame(ML_ROWS))


@pytest.mark.parametrize("name", ["u.data", "u1.base", "u1.test", "ub.test", "anything.tsv"])
def test_movielens_100k(tmp_path: Path, name: str, no_diagnostics: None) -> None:
    raw = read_ratings(write(tmp_path / name, ml100k()))
    assert raw.format == "movielens-100k"
    assert raw.scale == RatingScale(1.0, 5.0, 1.0)
    assert_frame_equal(raw.frame, expected_frame(ML100K_ROWS))


BX_VARIANTS = {
    "semicolon-quoted-latin1": {},
    "semicolon-quoted-utf8": {"encoding": "utf-8"},
    "comma-quoted-latin1": {"separator": ","},
    "comma-plain-utf8-lf": {"separator": ",", "quoted": False, "encoding": "utf-8", "eol": "\n"},
}


@pytest.mark.parametrize("variant", list(BX_VARIANTS))
def test_bookcrossing(tmp_path: Path, variant: str, no_diagnostics: None) -> None:
    path = write(tmp_path / "BX-Book-Ratings.csv", bookcrossing(**BX_VARIANTS[variant]))
    raw = read_ratings(path)
    assert raw.format == "bookcrossing"
    assert raw.scale == RatingScale(0.0, 10.0, 1.0)
    assert raw.encoding == BX_VARIANTS[variant].get("encoding", "latin-1")
    expected = expected_frame([(u, isbn, r, None) for u, isbn, r in BX_ROWS], item_dtype=pl.String(), timestamps=False)
    assert_frame_equal(raw.frame, expected)
    items = raw.frame["item"].to_list()
    assert "034545104X" in items and "0155061224" in items and "3404611306°" in items


def test_bookcrossing_detected_under_another_name(tmp_path: Path) -> None:
    """The Kaggle copy is called Ratings.csv: the header decides, not the name."""
    raw = read_ratings(write(tmp_path / "Ratings.csv", bookcrossing(separator=",", quoted=False)))
    assert raw.format == "bookcrossing"
    assert raw.frame.height == len(BX_ROWS)


def test_bookcrossing_quoted_separator_and_escaped_quote(tmp_path: Path) -> None:
    data = '"User-ID";"ISBN";"Book-Rating"\n"1";"12;34";"3"\n"2";"ab""c";"4"\n'.encode("latin-1")
    raw = read_ratings(write(tmp_path / "BX-Book-Ratings.csv", data))
    assert raw.frame["item"].to_list() == ["12;34", 'ab"c']


def test_generic_csv_named_columns(tmp_path: Path, no_diagnostics: None) -> None:
    data = b"ts|score|extra|who|what\n100|4.5|x|07|a\n200|1|y|7|b\n"
    raw = read_ratings(
        write(tmp_path / "mine.csv", data),
        user_col="who",
        item_col="what",
        rating_col="score",
        timestamp_col="ts",
        separator="|",
    )
    assert raw.format == "csv"
    assert raw.scale == RatingScale(1.0, 4.5, None)  # the data's range when no bounds are given
    assert raw.frame["user"].to_list() == ["07", "7"]  # '07' and '7' stay distinct strings
    assert raw.frame["item"].to_list() == ["a", "b"]
    assert raw.frame["timestamp"].to_list() == [100, 200]


def test_generic_csv_integer_ids_and_given_scale(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", b'user,item,rating\n1,20,3\n"2",-5,1\n')
    raw = read_ratings(path, rating_min=0, rating_max=10)
    assert raw.frame.schema["user"] == pl.Int64 and raw.frame.schema["item"] == pl.Int64
    assert raw.frame["item"].to_list() == [20, -5]
    assert raw.frame["timestamp"].null_count() == 2
    assert raw.scale == RatingScale(0.0, 10.0, None)


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pl.DataFrame(
        {"u": [3, 4], "i": ["x", "0y"], "r": [1, 5], "t": pl.Series([0, 86400 * 1000], dtype=pl.Datetime("ms"))}
    ).write_parquet(path)
    raw = read_ratings(path, user_col="u", item_col="i", rating_col="r", timestamp_col="t")
    assert raw.format == "parquet"
    assert raw.frame.rows() == [(3, "x", 1.0, 0), (4, "0y", 5.0, 86400)]
    assert raw.frame.schema["rating"] == pl.Float32


def test_parquet_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pl.DataFrame({"user": [1, None, 3], "item": [1, 2, 3], "rating": [1.0, 2.0, float("nan")]}).write_parquet(path)
    with pytest.raises(DataError, match=r"r\.parquet, line 2: empty user id"):
        read_ratings(path)
    raw = read_ratings(path, on_bad_rows="skip")
    assert raw.frame["user"].to_list() == [1]
    assert raw.rejected["line_number"].to_list() == [2, 3]
    assert raw.rejected["reason"].to_list() == ["empty user id", "rating is NaN"]


def test_format_forced(tmp_path: Path) -> None:
    """A `::` file with an unhelpful name and first line reads when the format is forced."""
    path = write(tmp_path / "data.txt", b"oops\n" + ml_dat())
    with pytest.raises(DataError, match="cannot tell the input format"):
        read_ratings(path)
    raw = read_ratings(path, format="movielens-dat", on_bad_rows="skip")
    assert raw.frame.height == len(ML_ROWS)
    assert raw.rejected["line_number"].to_list() == [1]


def test_name_decides_when_the_first_line_is_malformed(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.dat", b"1::2::5\n" + ml_dat())
    with pytest.raises(DataError, match=r"ratings\.dat, line 1: expected 4 fields separated by '::', found 3: '1::2::5'"):
        read_ratings(path)


# --- malformed lines -----------------------------------------------------------------------------

# (line, reason pattern) for each kind of bad line in a MovieLens ratings.csv.
ML_BAD_LINES = {
    "too few fields": ("3,40,4.0", r"expected 4 fields separated by ',', found 3"),
    "too many fields": ("3,40,4.0,1,9", r"expected 4 fields separated by ',', found 5"),
    "non-numeric rating": ("3,40,good,1", r"rating 'good' is not a number"),
    "NaN rating": ("3,40,NaN,1", r"rating is NaN"),
    "infinite rating": ("3,40,inf,1", r"rating inf is not finite"),
    "rating above scale": ("3,40,5.5,1", r"rating 5\.5 is outside the scale 0\.5 to 5"),
    "rating below scale": ("3,40,0.0,1", r"rating 0\.0 is outside the scale"),
    "rating off the half-star grid": ("3,40,3.7,1", r"rating 3\.7 is not on the scale 0\.5 to 5 in steps of 0\.5"),
    "empty user id": (",40,4.0,1", r"empty user id"),
    "empty item id": ("3, ,4.0,1", r"empty item id"),
    "non-integer user id": ("u3,40,4.0,1", r"user id 'u3' is not an integer"),
    "empty rating": ("3,40,,1", r"empty rating"),
    "non-integer timestamp": ("3,40,4.0,2020-01-01", r"timestamp '2020-01-01' is not an integer"),
}


@pytest.mark.parametrize("kind", list(ML_BAD_LINES))
def test_bad_line_error_names_file_line_and_text(tmp_path: Path, kind: str) -> None:
    bad, reason = ML_BAD_LINES[kind]
    path = write(tmp_path / "ratings.csv", ml_csv(ML_ROWS[:2]) + bad.encode() + b"\n" + ml_body(ML_ROWS[2:]))
    with pytest.raises(DataError) as caught:
        read_ratings(path, display_name="ml.zip:ratings.csv")
    message = str(caught.value)
    assert message.startswith("ml.zip:ratings.csv, line 4: ")
    assert re.search(reason, message), message
    assert repr(bad) in message
    assert "--on_bad_rows skip" in message


@pytest.mark.parametrize("kind", list(ML_BAD_LINES))
def test_bad_line_skipped_keeps_every_valid_row(tmp_path: Path, kind: str) -> None:
    bad, reason = ML_BAD_LINES[kind]
    path = write(tmp_path / "ratings.csv", ml_csv(ML_ROWS[:2]) + bad.encode() + b"\n" + ml_body(ML_ROWS[2:]))
    raw = read_ratings(path, on_bad_rows="skip")
    assert_frame_equal(raw.frame, expected_frame(ML_ROWS))
    assert raw.rejected.schema == pl.Schema(bad_rows.REJECTED_SCHEMA)
    assert raw.rejected.select("file", "line_number", "line").rows() == [(str(path), 4, bad)]
    assert re.match(reason, raw.rejected["reason"][0])


def test_many_bad_lines_with_blank_lines_and_crlf(tmp_path: Path) -> None:
    """Line numbers count the header and blank lines; blank lines are neither rows nor rejects."""
    lines = [ML_HEADER, "1,31,2.5,1", "", "1,x,2.5,1", "  ", "2,10,4.0,2", "2,10", "7,31,0.5,3", ""]
    path = write(tmp_path / "ratings.csv", "\r\n".join(lines).encode() + b"\r\n")
    expected = r"line 4: item id 'x' is not an integer: '1,x,2\.5,1' \(1 more malformed line after it\)"
    with pytest.raises(DataError, match=expected):
        read_ratings(path)
    raw = read_ratings(path, on_bad_rows="skip")
    assert raw.frame.rows() == [(1, 31, 2.5, 1), (2, 10, 4.0, 2), (7, 31, 0.5, 3)]
    assert raw.rejected.select("line_number", "line").rows() == [(4, "1,x,2.5,1"), (7, "2,10")]


def test_chunked_scan_matches_single_chunk(tmp_path: Path) -> None:
    """Chunk borders (tiny chunks here) change neither rows nor line numbers."""
    rows = [f"{u},{u % 7 + 1},{(u % 10 + 1) / 2},{u}" for u in range(1, 60)]
    rows[17], rows[40], rows[58] = "bad", "1,2,9,3", ""
    path = write(tmp_path / "ratings.csv", ("\n".join([ML_HEADER] + rows) + "\n").encode())
    whole = read_ratings(path, on_bad_rows="skip")
    positions = {"user": 0, "item": 1, "rating": 2, "timestamp": 3}
    layout = bad_rows.LineLayout(",", 4, positions, True, True, quoted=False, has_header=True)
    for chunk_bytes in (7, 64, 1000):
        scan = bad_rows.scan_file(
            path, layout, ScaleBounds(0.5, 5.0, 0.5), encoding="utf-8", display_name=str(path), chunk_bytes=chunk_bytes
        )
        assert_frame_equal(scan.frame, whole.frame)
        assert_frame_equal(scan.rejected, whole.rejected)
    assert whole.rejected["line_number"].to_list() == [19, 42]
    early = bad_rows.scan_file(
        path, layout, ScaleBounds(0.5, 5.0, 0.5), encoding="utf-8", display_name="f", chunk_bytes=300, stop_early=True
    )
    assert early.rejected["line_number"].to_list() == [19]
    assert early.stopped_at_line is not None and 19 <= early.stopped_at_line < 42


BX_OK = b'"User-ID";"ISBN";"Book-Rating"\n"1";"0001";"5"\n'


@pytest.mark.parametrize(
    ("name", "data", "line_number", "reason"),
    [
        ("ratings.dat", b"1::2::5::9\n1:2::5::9\n", 2, r"expected 4 fields separated by '::', found 3"),
        ("ratings.dat", b"1::2::5::9\n1::2::5::9::1\n", 2, r"expected 4 fields separated by '::', found 5"),
        ("ratings.dat", b"1::2::5::9\n1::2::6::9\n", 2, r"rating 6\.0 is outside the scale"),
        ("u.data", b"1\t2\t5\t9\n1\t2\t4.5\t9\n", 2, r"rating 4\.5 is not on the scale 1 to 5 in steps of 1"),
        ("u.data", b"1\t2\t5\t9\n1 2 4 9\n", 2, r"expected 4 fields separated by '\\t', found 1"),
        ("BX-Book-Ratings.csv", BX_OK + b'"1";"";"5"\n', 3, "empty item id"),
        ("BX-Book-Ratings.csv", BX_OK + b'"1";"0";"11"\n', 3, r"rating 11\.0 is outside the scale 0 to 10"),
        ("BX-Book-Ratings.csv", BX_OK + b'"1";"0"\n', 3, "expected 3 fields separated by ';', found 2"),
        ("BX-Book-Ratings.csv", BX_OK + b'"a";"0";"1"\n', 3, r"user id 'a' is not an integer"),
        ("BX-Book-Ratings.csv", BX_OK + b'"1";"0"x;"1"\n', 3, "malformed quotes"),
        ("BX-Book-Ratings.csv", BX_OK + b'"1";"0";"1.5"\n', 3, r"rating 1\.5 is not on the scale 0 to 10 in steps of 1"),
    ],
)
def test_bad_lines_other_formats(tmp_path: Path, name: str, data: bytes, line_number: int, reason: str) -> None:
    path = write(tmp_path / name, data)
    with pytest.raises(DataError, match=rf"line {line_number}: {reason}"):
        read_ratings(path)
    assert read_ratings(path, on_bad_rows="skip").rejected["line_number"].to_list() == [line_number]


def test_rating_bounds_override_the_format(tmp_path: Path) -> None:
    path = write(tmp_path / "BX-Book-Ratings.csv", bookcrossing())
    raw = read_ratings(path, rating_min=1, on_bad_rows="skip")
    assert raw.scale == RatingScale(1.0, 10.0, 1.0)
    assert raw.rejected.height == 2  # the two implicit zeros
    with pytest.raises(DataError, match="rating_min .* must not exceed rating_max"):
        read_ratings(path, rating_min=5, rating_max=1)


# --- whole-file errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"", "the file is empty"),
        (ML_HEADER.encode() + b"\n", "no ratings"),
        (ML_HEADER.encode() + b"\n\n  \n", "no ratings"),
    ],
)
def test_empty_inputs(tmp_path: Path, data: bytes, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_ratings(write(tmp_path / "ratings.csv", data))


def test_all_lines_bad_under_skip(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", ML_HEADER.encode() + b"\nx,y,z,w\n")
    with pytest.raises(DataError, match=r"no valid ratings; all 1 data lines are malformed"):
        read_ratings(path, on_bad_rows="skip")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_ratings(tmp_path / "nope.csv")


def test_missing_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", b"user,item,stars\n1,2,3\n")
    with pytest.raises(DataError, match=r"missing rating column 'score'.*\['user', 'item', 'stars'\]"):
        read_ratings(path, format="csv", rating_col="score")
    parquet = tmp_path / "r.parquet"
    pl.DataFrame({"user": [1], "item": [2]}).write_parquet(parquet)
    with pytest.raises(DataError, match=r"missing rating column 'rating'"):
        read_ratings(parquet)


def test_wrong_header_for_forced_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"line 1: expected the MovieLens header 'userId,movieId,rating,timestamp'"):
        read_ratings(write(tmp_path / "r.csv", b"a,b,c,d\n1,2,3,4\n"), format="movielens-csv")
    with pytest.raises(DataError, match="expected the Book-Crossing header"):
        read_ratings(write(tmp_path / "s.csv", b"a;b;c\n"), format="bookcrossing")


def test_unknown_format(tmp_path: Path) -> None:
    path = write(tmp_path / "stuff.txt", b"hello world\n1 2 3\n")
    with pytest.raises(DataError) as caught:
        read_ratings(path)
    message = str(caught.value)
    assert "stuff.txt" in message and "'hello world'" in message
    for name in ("movielens-csv", "movielens-dat", "movielens-100k", "bookcrossing", "csv", "parquet", "--format"):
        assert name in message
    with pytest.raises(DataError, match="unknown format 'tsv'"):
        read_ratings(path, format="tsv")


def test_bad_options(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", ml_csv())
    with pytest.raises(DataError, match="on_bad_rows must be 'error' or 'skip'"):
        read_ratings(path, on_bad_rows="ignore")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="separator must be a single character"):
        read_ratings(path, format="csv", separator="::", user_col="userId", item_col="movieId")


def test_undecodable_bytes(tmp_path: Path) -> None:
    data = ml_csv() + b"9,9,4.0,1\n9,9\xff\xfe,4.0,2\n"
    path = write(tmp_path / "ratings.csv", data)
    offset = data.index(b"\xff")
    for policy in ("error", "skip"):
        with pytest.raises(DataError, match=rf"ratings\.csv: line 7, byte offset {offset} \(column 4\).*not valid utf-8"):
            read_ratings(path, on_bad_rows=policy)  # type: ignore[arg-type]


def test_undecodable_header(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"line 1, byte offset 4"):
        read_ratings(write(tmp_path / "r.csv", b"user\xff,item,rating\n1,2,3\n"), format="csv")


# --- fast path -----------------------------------------------------------------------------------


def test_million_line_file_takes_the_fast_path(tmp_path: Path, no_diagnostics: None) -> None:
    rng = np.random.default_rng(0)
    n = 1_000_000
    frame = pl.DataFrame(
        {
            "userId": rng.integers(1, 10_000, n),
            "movieId": rng.integers(1, 50_000, n),
            "rating": rng.integers(1, 11, n) / 2,
            "timestamp": rng.integers(800_000_000, 1_600_000_000, n),
        }
    )
    path = tmp_path / "ratings.csv"
    frame.write_csv(path)
    raw = read_ratings(path)
    assert raw.frame.height == n
    assert raw.frame["user"].equals(frame["userId"], check_names=False)
    assert raw.frame["rating"].cast(pl.Float64).equals(frame["rating"], check_names=False)


# --- real data -----------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_ml_latest_small(ml_latest_small_dir: Path) -> None:
    """Without its item catalog every syntactically valid line is kept (see test_catalog.py)."""
    path = ml_latest_small_dir / "ratings.csv"
    raw = read_ratings(path)
    assert raw.format == "movielens-csv"
    assert raw.rejected.height == 0
    data_lines = len(path.read_bytes().splitlines()) - 1  # after the header; no final newline needed
    assert raw.frame.height == data_lines, "a valid line was dropped"


@pytest.mark.realdata
def test_real_ml_100k(ml100k_dir: Path) -> None:
    raw = read_ratings(ml100k_dir / "u.data")
    assert (raw.format, raw.frame.height) == ("movielens-100k", 100_000)
    assert (raw.frame["user"].n_unique(), raw.frame["item"].n_unique()) == (943, 1_682)
    for fold in ("u1", "u2", "u3", "u4", "u5"):
        assert read_ratings(ml100k_dir / f"{fold}.base").frame.height == 80_000
        assert read_ratings(ml100k_dir / f"{fold}.test").frame.height == 20_000


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("ratings.csv", ml_csv()),
        ("ratings.dat", ml_dat()),
        ("u.data", ml100k()),
        ("BX-Book-Ratings.csv", bookcrossing()),
        ("BX-Book-Ratings.csv", bookcrossing(separator=",", quoted=False, encoding="utf-8")),
        ("r.csv", b'user;item;rating\n"a;1";0x;1.5\n 2;07;-3\n'),
    ],
)
def test_line_diagnostics_agree_with_fast_path(tmp_path: Path, name: str, data: bytes) -> None:
    """A blank line sends a file through the line checks; they must yield the fast path's rows."""
    options = {"separator": ";"} if name == "r.csv" else {}
    fast = read_ratings(write(tmp_path / "fast" / name, data), **options)
    first_break = data.index(b"\n") + 1
    slow = read_ratings(write(tmp_path / "slow" / name, data[:first_break] + b"\n" + data[first_break:]), **options)
    assert_frame_equal(slow.frame, fast.frame)
    assert slow.rejected.height == 0
