"""open_source: files, folders, archives and downloads (against a local HTTP server)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from fixtures_raw import ML_ROWS, bookcrossing, make_zip, ml100k, ml_csv, ml_dat, write
from lightning_mf.prepare import sources
from lightning_mf.prepare.readers import read_ratings
from lightning_mf.prepare.sources import SourceFiles, open_source, sha256_file
from lightning_mf.errors import DataError


def _open(tmp_path: Path, source: str | Path, **kwargs: object) -> AbstractContextManager[SourceFiles]:
    options = {"cache_dir": tmp_path / "cache", "workdir": tmp_path / "work"} | kwargs
    return open_source(str(source), **options)  # type: ignore[arg-type]


def _workdir_is_clean(tmp_path: Path) -> bool:
    work = tmp_path / "work"
    return not work.exists() or not any(work.iterdir())


# --- local files, folders, archives --------------------------------------------------------------


def test_plain_file(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", ml_csv())
    with _open(tmp_path, path) as files:
        assert (files.ratings, files.test, files.archive, files.origin) == (path, None, None, str(path))
        assert files.ratings_name == str(path)


@pytest.mark.parametrize(
    ("member", "data", "fmt", "catalog"),
    [
        ("ml-latest-small/ratings.csv", ml_csv(), "movielens-csv", "ml-latest-small/movies.csv"),
        ("ml-1m/ratings.dat", ml_dat(), "movielens-dat", "ml-1m/movies.dat"),
        ("ml-10M100K/ratings.dat", ml_dat(), "movielens-dat", "ml-10M100K/Movies.DAT"),
        ("ml-100k/u.data", ml100k(), "movielens-100k", "ml-100k/u.item"),
        ("BX-Book-Ratings.csv", bookcrossing(), "bookcrossing", None),
    ],
)
def test_folder_and_zip(tmp_path: Path, member: str, data: bytes, fmt: str, catalog: str | None) -> None:
    """The ratings member and the item catalog beside it are found; nothing else is extracted."""
    folder_part = member.rpartition("/")[0]
    others = {f"{folder_part}/tags.csv".lstrip("/"): b"userId,movieId,tag\n", "__MACOSX/._ratings.csv": b"junk"}
    others |= {"movies.csv": b"decoy one folder up", "__MACOSX/ml-1m/._movies.dat": b"junk"}
    if catalog is not None:
        others[catalog] = b"the catalog"
    folder = tmp_path / "extracted"
    for name, content in {member: data, **others}.items():
        write(folder / name, content)
    archive = make_zip(tmp_path / "dataset.zip", {member: data, **others})

    with _open(tmp_path, folder) as files:
        assert files.ratings == folder / member and files.archive is None
        assert read_ratings(files.ratings).format == fmt
        assert files.catalog == (folder / catalog if catalog else None)
        assert files.catalog_name == (str(folder / catalog) if catalog else None)
    with _open(tmp_path, archive) as files:
        assert files.archive == archive and files.test is None
        assert files.ratings.name == member.rsplit("/", 1)[-1]
        assert files.ratings.read_bytes() == data
        assert files.ratings_name == f"{archive}:{member}"
        assert files.ratings.is_relative_to(tmp_path / "work")
        extracted = sorted(p.name for p in (tmp_path / "work").rglob("*") if p.is_file())
        wanted = [files.ratings.name] + ([catalog.rsplit("/", 1)[-1]] if catalog else [])
        assert extracted == sorted(wanted)  # nothing but the ratings member and its catalog
        if catalog is None:
            assert (files.catalog, files.catalog_name) == (None, None)
        else:
            assert files.catalog is not None and files.catalog.read_bytes() == b"the catalog"
            assert files.catalog.name == catalog.rsplit("/", 1)[-1]
            assert files.catalog_name == f"{archive}:{catalog}"
        assert read_ratings(files.ratings, display_name=files.ratings_name).format == fmt
    assert _workdir_is_clean(tmp_path)


@pytest.mark.parametrize(
    ("ratings", "data", "catalog"),
    [
        ("ratings.csv", ml_csv(), "movies.csv"),
        ("ratings.dat", ml_dat(), "MOVIES.dat"),
        ("u.data", ml100k(), "u.item"),
        ("u3.test", ml100k(), "U.ITEM"),
    ],
)
def test_catalog_beside_a_plain_file(tmp_path: Path, ratings: str, data: bytes, catalog: str) -> None:
    path = write(tmp_path / "d" / ratings, data)
    write(tmp_path / "d" / catalog, b"the catalog")
    with _open(tmp_path, path) as files:
        assert (files.catalog, files.catalog_name) == (tmp_path / "d" / catalog, str(tmp_path / "d" / catalog))


@pytest.mark.parametrize(
    ("ratings", "data", "neighbour"),
    [
        ("ratings.csv", ml_csv(), None),  # no catalog beside it
        ("ratings.csv", ml_csv(), "movies.dat"),  # another dataset's catalog
        ("export.csv", ml_csv(), "movies.csv"),  # not a MovieLens file name: no pairing is guessed
        ("BX-Book-Ratings.csv", bookcrossing(), "BX-Books.csv"),
    ],
)
def test_no_catalog(tmp_path: Path, ratings: str, data: bytes, neighbour: str | None) -> None:
    path = write(tmp_path / "d" / ratings, data)
    if neighbour is not None:
        write(tmp_path / "d" / neighbour, b"x")
    write(tmp_path / "movies.csv", b"one folder up")
    with _open(tmp_path, path) as files:
        assert (files.catalog, files.catalog_name) == (None, None)
    if ratings.lower() in sources.RATINGS_NAMES:
        with _open(tmp_path, tmp_path / "d") as files:
            assert (files.catalog, files.catalog_name) == (None, None)


def test_fold_catalog(tmp_path: Path) -> None:
    """A fold's uN.base / uN.test pair shares the u.item of its folder or archive."""
    members = {"ml-100k/u1.base": ml100k(), "ml-100k/u1.test": ml100k(), "ml-100k/u.item": b"items"}
    archive = make_zip(tmp_path / "ml-100k.zip", members)
    with _open(tmp_path, archive, fold="u1") as files:
        assert files.catalog is not None and files.catalog.read_bytes() == b"items"
        assert files.catalog_name == f"{archive}:ml-100k/u.item"


def test_ml100k_fold(tmp_path: Path) -> None:
    members = {"ml-100k/u.data": ml100k(), "ml-100k/u1.base": ml100k()[:40], "ml-100k/u1.test": ml100k()[40:]}
    archive = make_zip(tmp_path / "ml-100k.zip", members)
    with _open(tmp_path, archive) as files:
        assert files.ratings.name == "u.data" and files.test is None
    with _open(tmp_path, archive, fold="u1") as files:
        assert (files.ratings.name, files.test.name) == ("u1.base", "u1.test")
        assert files.test.read_bytes() == ml100k()[40:]
        assert files.test_name == f"{archive}:ml-100k/u1.test"
    with pytest.raises(DataError, match=r"fold 'u2' needs u2\.base and u2\.test"):
        with _open(tmp_path, archive, fold="u2"):
            pass
    assert _workdir_is_clean(tmp_path)


def test_cleanup_when_the_block_fails(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"ratings.csv": ml_csv()})
    with pytest.raises(RuntimeError):
        with _open(tmp_path, archive):
            raise RuntimeError("prepare crashed")
    assert _workdir_is_clean(tmp_path)


def test_test_source_pair(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", ml_csv(ML_ROWS[:3]))
    test = write(tmp_path / "test.csv", ml_csv(ML_ROWS[3:]))
    with _open(tmp_path, train, test_source=str(test)) as files:
        assert (files.ratings, files.test) == (train, test)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"fold": "u9"}, r"fold must be one of u1, u2, u3, u4, u5, ua, ub"),
        ({"fold": "u1", "test_source": "x"}, "either fold .* or test_source"),
        ({"test_source": "missing.csv"}, r"--test_source 'missing.csv': no such file"),
        ({"fold": "u1"}, "fold 'u1' needs the ml-100k folder or zip"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    path = write(tmp_path / "ratings.csv", ml_csv())
    with pytest.raises(DataError, match=pattern):
        with _open(tmp_path, path, **kwargs):
            pass


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such file or folder, and not a dataset name to download \(ml-100k, "):
        with _open(tmp_path, tmp_path / "nowhere.csv"):
            pass


def test_archive_without_ratings_file(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"movies.csv": b"x", "deep/er/ratings.csv": ml_csv()})
    with pytest.raises(DataError, match=r"no ratings file in .*a\.zip: expected one of ratings\.csv, ratings\.dat"):
        with _open(tmp_path, archive):
            pass


def test_ambiguous_folder(tmp_path: Path) -> None:
    write(tmp_path / "d" / "a" / "ratings.csv", ml_csv())
    write(tmp_path / "d" / "b" / "ratings.csv", ml_csv())
    with pytest.raises(DataError, match="several ratings files"):
        with _open(tmp_path, tmp_path / "d"):
            pass


def test_damaged_zip(tmp_path: Path) -> None:
    good = make_zip(tmp_path / "good.zip", {"ratings.csv": ml_csv() * 50})
    damaged = write(tmp_path / "ml-25m.zip", good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="not a valid zip archive"):
        with _open(tmp_path, damaged):
            pass


def test_sha256_file(tmp_path: Path) -> None:
    path = write(tmp_path / "x.bin", b"abc" * 1_000_000)
    assert sha256_file(path) == hashlib.sha256(b"abc" * 1_000_000).hexdigest()


# --- downloads -----------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class name
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1, and its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/datasets/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _publish(root: Path, name: str, *, md5_file: bool = True) -> bytes:
    members = {f"{name}/ratings.csv": ml_csv(), f"{name}/tags.csv": b"t"}
    data = make_zip(root / "datasets" / f"{name}.zip", members).read_bytes()
    if md5_file:
        digest = hashlib.md5(data).hexdigest()
        (root / "datasets" / f"{name}.zip.md5").write_text(f"{digest}  {name}.zip\n")
    return data


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _cache_files(tmp_path: Path) -> list[str]:
    cache = tmp_path / "cache"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_verifies_published_md5_and_caches(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    root, url = mirror
    data = _publish(root, "ml-latest-small")
    with _open(tmp_path, "ml-latest-small", mirror=url) as files:
        assert files.archive == tmp_path / "cache" / "ml-latest-small.zip"
        assert files.archive.read_bytes() == data
        assert files.origin == "ml-latest-small"
        assert read_ratings(files.ratings).frame.height == len(ML_ROWS)
    assert _cache_files(tmp_path) == ["ml-latest-small.zip", "ml-latest-small.zip.md5"]
    # Cached and verified against the stored digest: no server needed any more.
    with _open(tmp_path, "ml-latest-small", mirror=_closed_port_url()) as files:
        assert files.archive.read_bytes() == data


def test_download_with_known_md5_mismatch(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    """The served ml-100k.zip is not GroupLens's, so the published MD5 rejects it."""
    root, url = mirror
    _publish(root, "ml-100k")
    expected = r"checksum mismatch for .*ml-100k\.zip: expected md5 0e33842e24a9c977be4e0107933c0723"
    with pytest.raises(DataError, match=expected):
        with _open(tmp_path, "ml-100k", mirror=url):
            pass
    assert _cache_files(tmp_path) == []  # neither the archive nor a .part survives


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_download_with_checksum_override(tmp_path: Path, mirror: tuple[Path, str], algorithm: str) -> None:
    root, url = mirror
    data = _publish(root, "ml-100k")
    checksum = hashlib.new(algorithm, data).hexdigest().upper()
    with _open(tmp_path, "ml-100k", mirror=url, checksum=checksum) as files:
        assert files.archive.read_bytes() == data
    assert _cache_files(tmp_path) == ["ml-100k.zip"]


def test_download_with_wrong_override(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    root, url = mirror
    _publish(root, "ml-32m")
    with pytest.raises(DataError, match="checksum mismatch"):
        with _open(tmp_path, "ml-32m", mirror=url, checksum="0" * 64):
            pass
    with pytest.raises(DataError, match="neither an MD5"):
        with _open(tmp_path, "ml-32m", mirror=url, checksum="abc"):
            pass
    assert _cache_files(tmp_path) == []


def test_download_without_published_md5(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    root, url = mirror
    _publish(root, "ml-32m", md5_file=False)
    expected = r"could not fetch the checksum .*ml-32m\.zip\.md5 to verify ml-32m\.zip: HTTP 404.*--checksum"
    with pytest.raises(DataError, match=expected):
        with _open(tmp_path, "ml-32m", mirror=url):
            pass


def test_download_missing_archive(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    with pytest.raises(DataError, match=r"could not download .*ml-1m\.zip: HTTP 404"):
        with _open(tmp_path, "ml-1m", mirror=mirror[1]):
            pass


def test_download_unreachable(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        with _open(tmp_path, "ml-25m", mirror=_closed_port_url()):
            pass
    message = str(caught.value)
    assert "could not download" in message and "ml-25m.zip" in message
    assert "--source /path/to/ml-25m.zip (or its extracted folder)" in message
    assert _cache_files(tmp_path) == []


def test_local_path_wins_over_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An extracted `ml-25m` folder in the working directory is read, not downloaded."""
    write(tmp_path / "ml-25m" / "ratings.csv", ml_csv())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "download_movielens", lambda *a, **k: pytest.fail("downloaded"))
    with _open(tmp_path, "ml-25m") as files:
        assert files.ratings == Path("ml-25m") / "ratings.csv"


# --- real data -----------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_ml100k_folds(tmp_path: Path, ml100k_dir: Path) -> None:
    for fold in ("u1", "u2", "u3", "u4", "u5"):
        with _open(tmp_path, ml100k_dir, fold=fold) as files:
            assert files.test is not None
            assert read_ratings(files.ratings).frame.height == 80_000
            assert read_ratings(files.test).frame.height == 20_000
    with _open(tmp_path, ml100k_dir) as files:
        assert files.ratings.name == "u.data"
        assert files.catalog == ml100k_dir / "u.item"


@pytest.mark.realdata
def test_real_ml_latest_small_zip(tmp_path: Path, ml_latest_small_dir: Path) -> None:
    members = {f"ml-latest-small/{p.name}": p.read_bytes() for p in ml_latest_small_dir.iterdir()}
    archive = make_zip(tmp_path / "ml-latest-small.zip", members)
    with _open(tmp_path, archive) as files:
        raw = read_ratings(files.ratings, display_name=files.ratings_name)
        assert raw.frame.height == read_ratings(ml_latest_small_dir / "ratings.csv").frame.height
        assert files.catalog is not None
        assert files.catalog.read_bytes() == (ml_latest_small_dir / "movies.csv").read_bytes()
    with _open(tmp_path, ml_latest_small_dir) as files:
        assert files.catalog == ml_latest_small_dir / "movies.csv"
    with _open(tmp_path, ml_latest_small_dir / "ratings.csv") as files:
        assert files.catalog == ml_latest_small_dir / "movies.csv"
