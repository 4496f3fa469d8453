"""Resolve `--source` to the ratings file(s) to read: a file, a folder, a `.zip`, or a MovieLens name.

MovieLens names are downloaded once into a cache folder and verified against a checksum before
anything reads them. Archives are never extracted whole (ml-25m.zip holds a 400 MB genome file
nobody asked for): only the ratings members and the item catalog next to them (`movies.csv`,
`movies.dat`, `u.item`) are copied out, into a temporary folder that is removed when the
`open_source` block ends.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lightning_mf.prepare.formats import catalog_file_for
from lightning_mf.errors import DataError

log = logging.getLogger(__name__)

MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens"
MOVIELENS_NAMES = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small", "ml-latest")
# Published by GroupLens; the others (ml-32m, ml-latest*) change or are newer: their `<url>.md5`
# is fetched instead.
MOVIELENS_MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-10m": "ce571fd55effeba0271552578f2648bd",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
}
# Ratings file names inside a dataset folder or archive, most specific first (matched ignoring case).
RATINGS_NAMES = ("ratings.csv", "ratings.dat", "u.data", "bx-book-ratings.csv")
ML100K_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
DOWNLOAD_TIMEOUT_S = 30.0
_SEARCH_DEPTH = 2  # archives hold the files at most one folder down (ml-10m.zip: ml-10M100K/)
_HASH_BLOCK = 1 << 20


@dataclass
class SourceFiles:
    """The files behind one `--source`.

    Attributes:
        ratings: The ratings file (the train file of a predefined pair).
        test: The predefined test file (an ml-100k fold's `uN.test`, or `test_source`), else None.
        origin: What the user asked for (a name or a path), for meta.json.
        archive: The `.zip` the files came from, if any (meta.json records its sha256).
        ratings_name: How to name the ratings file in messages (`archive.zip:member` for members).
        test_name: As `ratings_name` for the test file.
        catalog: The dataset's item list next to the ratings file (`movies.csv` beside
            `ratings.csv`, `movies.dat` beside `ratings.dat`, `u.item` beside ml-100k files), in
            the same folder or archive folder; None when the source ships none.
        catalog_name: As `ratings_name` for the catalog.
    """

    ratings: Path
    test: Path | None
    origin: str
    archive: Path | None
    ratings_name: str = ""
    test_name: str | None = None
    catalog: Path | None = None
    catalog_name: str | None = None


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks (archives can be hundreds of MB)."""
    return _hash_file(path, "sha256")


def _hash_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def parse_checksum(checksum: str) -> tuple[str, str]:
    """`(algorithm, hex digest)` of a user-given checksum: MD5 (32 hex digits) or SHA-256 (64)."""
    value = checksum.strip().lower()
    if re.fullmatch(r"[0-9a-f]{32}", value):
        return "md5", value
    if re.fullmatch(r"[0-9a-f]{64}", value):
        return "sha256", value
    raise DataError(f"checksum {checksum!r} is neither an MD5 (32 hex digits) nor a SHA-256 (64 hex digits)")


def _offline_hint(name: str, url: str) -> str:
    return (
        f"Download {url} yourself (browser, curl) and pass --source /path/to/{name}.zip "
        "(or its extracted folder)."
    )


def _urlopen(url: str, timeout: float) -> http.client.HTTPResponse:
    return urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "lightning_mf"}), timeout=timeout)


def _fetch_md5(name: str, url: str, timeout: float) -> str:
    """The MD5 GroupLens publishes next to an archive (`<url>.md5`)."""
    try:
        with _urlopen(url + ".md5", timeout) as response:
            text = response.read(4096).decode("ascii", errors="replace")
    except (urllib.error.URLError, OSError) as error:
        raise DataError(
            f"could not fetch the checksum {url}.md5 to verify {name}.zip: {_reason(error)}. "
            f"{_offline_hint(name, url)} Or pass --checksum with the archive's MD5 or SHA-256."
        ) from None
    found = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if found is None:
        raise DataError(f"{url}.md5 holds no MD5 digest (got {text[:80]!r}); pass --checksum to verify {name}.zip")
    return found.group(0).lower()


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


def _stream_to(response: http.client.HTTPResponse, part: Path, algorithm: str, url: str) -> str:
    """Copy a response body into `part`, logging progress; returns the body's digest."""
    digest = hashlib.new(algorithm)
    total = int(response.headers.get("Content-Length") or 0)
    done, last_log = 0, time.monotonic()
    size = f"{total / 1e6:.1f} MB" if total else "unknown size"
    log.info("downloading %s (%s) to %s", url, size, part.parent)
    with open(part, "wb") as out:
        while block := response.read(_HASH_BLOCK):
            out.write(block)
            digest.update(block)
            done += len(block)
            if time.monotonic() - last_log > 5.0:
                last_log = time.monotonic()
                share = f" ({100 * done / total:.0f}%)" if total else ""
                log.info("  %.1f MB%s", done / 1e6, share)
    if total and done != total:
        raise OSError(f"connection closed after {done} of {total} bytes")
    return digest.hexdigest()


def download_movielens(
    name: str,
    *,
    cache_dir: Path,
    mirror: str | None = None,
    checksum: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """The verified archive `<cache_dir>/<name>.zip`, downloaded first unless already cached.

    Args:
        name: A MovieLens name (`MOVIELENS_NAMES`).
        cache_dir: Folder keeping downloaded archives.
        mirror: Base URL serving `<name>.zip` instead of files.grouplens.org.
        checksum: Expected MD5 or SHA-256, overriding the published one.
        timeout: Seconds without progress before the download is abandoned.

    Raises:
        DataError: Unknown name, server unreachable, or checksum mismatch (the file is deleted).
    """
    if name not in MOVIELENS_NAMES:
        raise DataError(f"unknown dataset name {name!r}; expected one of {', '.join(MOVIELENS_NAMES)}")
    url = f"{(mirror or MOVIELENS_URL).rstrip('/')}/{name}.zip"
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{name}.zip"
    sidecar = cache_dir / f"{name}.zip.md5"
    if checksum is not None:
        algorithm, expected = parse_checksum(checksum)
    elif name in MOVIELENS_MD5:
        algorithm, expected = "md5", MOVIELENS_MD5[name]
    elif target.is_file() and sidecar.is_file():
        algorithm, expected = "md5", sidecar.read_text().strip()
    else:
        algorithm, expected = "md5", _fetch_md5(name, url, timeout)

    if target.is_file():
        if _hash_file(target, algorithm) == expected:
            return target
        log.warning("cached %s does not match its %s %s; downloading it again", target, algorithm, expected)
        target.unlink()

    handle, part_name = tempfile.mkstemp(prefix=f"{name}.", suffix=".zip.part", dir=cache_dir)
    os.close(handle)
    part = Path(part_name)
    try:
        try:
            with _urlopen(url, timeout) as response:
                actual = _stream_to(response, part, algorithm, url)
        except (urllib.error.URLError, OSError) as error:
            raise DataError(f"could not download {url}: {_reason(error)}. {_offline_hint(name, url)}") from None
        if actual != expected:
            raise DataError(
                f"checksum mismatch for {url}: expected {algorithm} {expected}, got {actual}. The "
                "download was deleted; it is corrupt or not the published archive. Retry, or pass "
                "--checksum with the digest of the archive you trust."
            )
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    if name not in MOVIELENS_MD5 and checksum is None:
        sidecar.write_text(expected + "\n")
    log.info("verified %s (%s %s)", target, algorithm, expected)
    return target


def _candidates(paths: list[str]) -> list[str]:
    """Files worth looking at: no macOS resource forks, at most `_SEARCH_DEPTH` levels deep."""
    kept = []
    for path in paths:
        parts = path.strip("/").split("/")
        if parts[0] == "__MACOSX" or parts[-1].startswith("._") or len(parts) > _SEARCH_DEPTH:
            continue
        kept.append(path.strip("/"))
    return kept


def _pick(paths: list[str], wanted: tuple[str, ...], where: str) -> str | None:
    """The shallowest file whose name is in `wanted` (earlier names win at equal depth)."""
    best: list[tuple[int, int, str]] = []
    for path in _candidates(paths):
        base = path.rsplit("/", 1)[-1].lower()
        if base in wanted:
            best.append((path.count("/"), wanted.index(base), path))
    if not best:
        return None
    best.sort()
    ties = [path for depth, rank, path in best if (depth, rank) == best[0][:2]]
    if len(ties) > 1:
        raise DataError(f"{where} holds several ratings files {ties}; pass the one you want as --source")
    return best[0][2]


def _folder_files(folder: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        if depth + 1 >= _SEARCH_DEPTH:
            dirs.clear()
        found.extend((Path(root, f).relative_to(folder)).as_posix() for f in files)
    return found


def _choose(paths: list[str], where: str, fold: str | None) -> tuple[str, str | None]:
    """The ratings path (and fold test path) among the files of a folder or archive."""
    if fold is not None:
        train = _pick(paths, (f"{fold}.base",), where)
        test = _pick(paths, (f"{fold}.test",), where)
        if train is None or test is None:
            raise DataError(f"fold {fold!r} needs {fold}.base and {fold}.test in {where} (an ml-100k folder or zip)")
        return train, test
    found = _pick(paths, RATINGS_NAMES, where)
    if found is None:
        raise DataError(
            f"no ratings file in {where}: expected one of {', '.join(RATINGS_NAMES)} (any case) at most "
            f"{_SEARCH_DEPTH - 1} folder down. Pass the ratings file itself as --source."
        )
    return found, None


def _catalog_member(paths: list[str], ratings: str) -> str | None:
    """The item catalog in the same folder as the `ratings` path among `paths`, matched ignoring case."""
    wanted = catalog_file_for(ratings.rsplit("/", 1)[-1])
    if wanted is None:
        return None
    folder = ratings.rpartition("/")[0]
    found = []
    for path in _candidates(paths):
        head, _, base = path.rpartition("/")
        if head == folder and base.lower() == wanted:
            found.append(path)
    return min(found) if found else None


def _sibling_catalog(ratings: Path) -> Path | None:
    """The item catalog beside a plain ratings file, matched ignoring case."""
    wanted = catalog_file_for(ratings.name)
    if wanted is None:
        return None
    try:
        found = [p for p in ratings.parent.iterdir() if p.name.lower() == wanted and p.is_file()]
    except OSError:
        return None
    return min(found) if found else None


def _extract(archive: Path, member: str, folder: Path) -> Path:
    """Copy one archive member into a new subfolder of `folder`, keeping only its base name.

    The base name matters (format detection falls back on it); the member's folders are dropped,
    so no `..` in an archive can write outside `folder`.
    """
    subfolder = Path(tempfile.mkdtemp(dir=folder))
    target = subfolder / member.rsplit("/", 1)[-1]
    with zipfile.ZipFile(archive) as zf, zf.open(member) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, _HASH_BLOCK)
    return target


def _check_options(fold: str | None, test_source: str | None) -> None:
    if fold is not None and fold not in ML100K_FOLDS:
        raise DataError(f"fold must be one of {', '.join(ML100K_FOLDS)} (ml-100k), got {fold!r}")
    if fold is not None and test_source is not None:
        raise DataError("give either fold (an ml-100k fold) or test_source (a test file), not both")


@contextmanager
def open_source(
    source: str,
    *,
    fold: str | None = None,
    test_source: str | None = None,
    cache_dir: Path,
    mirror: str | None = None,
    checksum: str | None = None,
    workdir: Path,
) -> Iterator[SourceFiles]:
    """Resolve a source to its ratings file(s); extracted archive members live until the block ends.

    Args:
        source: A ratings file, a folder or `.zip` holding one (`ratings.csv`, `ratings.dat`,
            `u.data`, `BX-Book-Ratings.csv`), or a MovieLens name to download when no such
            local path exists. The item catalog beside the ratings file, if any, comes too.
        fold: An ml-100k fold (`u1`..`u5`, `ua`, `ub`): read `<fold>.base` and `<fold>.test`.
        test_source: A test file paired with `source` as the train file.
        cache_dir: Folder keeping downloaded archives.
        mirror: Base URL serving MovieLens archives instead of files.grouplens.org.
        checksum: Expected MD5 or SHA-256 of a downloaded archive.
        workdir: Folder for extracted members; a private subfolder is created and removed.

    Raises:
        DataError: Nothing found at `source`, no ratings file inside it, a bad archive, or a
            failed download.
    """
    _check_options(fold, test_source)
    local = Path(source).expanduser()
    archive: Path | None = None
    if not local.exists():
        if source not in MOVIELENS_NAMES:
            raise DataError(
                f"--source {source!r}: no such file or folder, and not a dataset name to download "
                f"({', '.join(MOVIELENS_NAMES)})"
            )
        local = download_movielens(source, cache_dir=Path(cache_dir), mirror=mirror, checksum=checksum)
    test_path: Path | None = None
    test_name: str | None = None
    if test_source is not None:
        test_path = Path(test_source).expanduser()
        if not test_path.is_file():
            raise DataError(f"--test_source {test_source!r}: no such file")
        test_name = str(test_path)

    scratch: Path | None = None
    catalog: Path | None = None
    catalog_name: str | None = None
    try:
        if local.is_dir():
            paths = _folder_files(local)
            train, test = _choose(paths, str(local), fold)
            ratings, ratings_name = local / train, str(local / train)
            if test is not None:
                test_path, test_name = local / test, str(local / test)
            if (member := _catalog_member(paths, train)) is not None:
                catalog, catalog_name = local / member, str(local / member)
        elif zipfile.is_zipfile(local):
            archive = local
            try:
                with zipfile.ZipFile(local) as zf:
                    names = [info.filename for info in zf.infolist() if not info.is_dir()]
            except (zipfile.BadZipFile, OSError) as error:
                raise DataError(f"{local}: cannot read the zip archive: {error}") from None
            train, test = _choose(names, str(local), fold)
            Path(workdir).mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=".source-", dir=workdir))
            members = {"ratings": train, "test": test, "catalog": _catalog_member(names, train)}
            extracted: dict[str, Path] = {}
            for role, member in members.items():
                if member is None:
                    continue
                try:
                    extracted[role] = _extract(local, member, scratch)
                except (zipfile.BadZipFile, OSError) as error:
                    raise DataError(f"{local}: cannot extract {member}: {error}; the archive looks damaged") from None
            ratings, ratings_name = extracted["ratings"], f"{local}:{train}"
            if test is not None:
                test_path, test_name = extracted["test"], f"{local}:{test}"
            if members["catalog"] is not None:
                catalog, catalog_name = extracted["catalog"], f"{local}:{members['catalog']}"
        elif local.suffix.lower() == ".zip":
            raise DataError(f"{local}: not a valid zip archive (damaged or partial download?)")
        else:
            if fold is not None:
                raise DataError(f"fold {fold!r} needs the ml-100k folder or zip as --source, got the file {local}")
            ratings, ratings_name = local, str(local)
            if (catalog := _sibling_catalog(local)) is not None:
                catalog_name = str(catalog)
        yield SourceFiles(
            ratings=ratings,
            test=test_path,
            origin=source,
            archive=archive,
            ratings_name=ratings_name,
            test_name=test_name,
            catalog=catalog,
            catalog_name=catalog_name,
        )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
