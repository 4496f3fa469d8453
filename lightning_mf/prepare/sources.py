"""Resolve `--source` to the ratings file(s) to read: a file, a folder, a `.zip`, or a MovieLens name.

MovieLens names are downloaded once into a cache folder and verified against a checksum before
anything reads them (downloads.py). Archives are never extracted whole (ml-25m.zip holds a 400 MB
genome file nobody asked for): only the ratings members and the item catalog next to them
(`movies.csv`, `movies.dat`, `u.item`; found by locate.py) are copied out, into a temporary folder
that is removed when the `open_source` block ends.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lightning_mf.errors import DataError
from lightning_mf.prepare.downloads import (
    DOWNLOAD_TIMEOUT_S,
    MOVIELENS_MD5,
    MOVIELENS_NAMES,
    MOVIELENS_URL,
    download_movielens,
    parse_checksum,
    sha256_file,
)
from lightning_mf.prepare.locate import (
    RATINGS_NAMES,
    catalog_member,
    choose_files,
    extract_member,
    folder_files,
    sibling_catalog,
)

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "ML100K_FOLDS",
    "MOVIELENS_MD5",
    "MOVIELENS_NAMES",
    "MOVIELENS_URL",
    "RATINGS_NAMES",
    "SourceFiles",
    "download_movielens",
    "open_source",
    "parse_checksum",
    "sha256_file",
]

ML100K_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


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


def _check_options(fold: str | None, test_source: str | None) -> None:
    """Refuse an unknown fold, and a fold given together with a test file."""
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
            paths = folder_files(local)
            train, test = choose_files(paths, str(local), fold)
            ratings, ratings_name = local / train, str(local / train)
            if test is not None:
                test_path, test_name = local / test, str(local / test)
            if (member := catalog_member(paths, train)) is not None:
                catalog, catalog_name = local / member, str(local / member)
        elif zipfile.is_zipfile(local):
            archive = local
            try:
                with zipfile.ZipFile(local) as zf:
                    names = [info.filename for info in zf.infolist() if not info.is_dir()]
            except (zipfile.BadZipFile, OSError) as error:
                raise DataError(f"{local}: cannot read the zip archive: {error}") from None
            train, test = choose_files(names, str(local), fold)
            Path(workdir).mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=".source-", dir=workdir))
            members = {"ratings": train, "test": test, "catalog": catalog_member(names, train)}
            extracted: dict[str, Path] = {}
            for role, member in members.items():
                if member is None:
                    continue
                try:
                    extracted[role] = extract_member(local, member, scratch)
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
            if (catalog := sibling_catalog(local)) is not None:
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
