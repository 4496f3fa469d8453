"""Finding the ratings file, an ml-100k fold and the item catalog inside a folder or a `.zip`.

Files are matched by name ignoring case, at most one folder down (archives wrap their files in
one), skipping macOS resource forks; two equally good ratings files are an error rather than a
guess. From an archive only the members asked for are copied out, never the whole archive.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from lightning_mf.errors import DataError
from lightning_mf.prepare.formats import catalog_file_for

# Ratings file names inside a dataset folder or archive, most specific first (matched ignoring case).
RATINGS_NAMES = ("ratings.csv", "ratings.dat", "u.data", "bx-book-ratings.csv")
_SEARCH_DEPTH = 2  # archives hold the files at most one folder down (ml-10m.zip: ml-10M100K/)
_COPY_BLOCK = 1 << 20


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


def folder_files(folder: Path) -> list[str]:
    """Paths (relative, `/`-separated) of the files in `folder`, at most `_SEARCH_DEPTH` levels deep."""
    found = []
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        if depth + 1 >= _SEARCH_DEPTH:
            dirs.clear()
        found.extend((Path(root, f).relative_to(folder)).as_posix() for f in files)
    return found


def choose_files(paths: list[str], where: str, fold: str | None) -> tuple[str, str | None]:
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


def catalog_member(paths: list[str], ratings: str) -> str | None:
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


def sibling_catalog(ratings: Path) -> Path | None:
    """The item catalog beside a plain ratings file, matched ignoring case."""
    wanted = catalog_file_for(ratings.name)
    if wanted is None:
        return None
    try:
        found = [p for p in ratings.parent.iterdir() if p.name.lower() == wanted and p.is_file()]
    except OSError:
        return None
    return min(found) if found else None


def extract_member(archive: Path, member: str, folder: Path) -> Path:
    """Copy one archive member into a new subfolder of `folder`, keeping only its base name.

    The base name matters (format detection falls back on it); the member's folders are dropped,
    so no `..` in an archive can write outside `folder`.
    """
    subfolder = Path(tempfile.mkdtemp(dir=folder))
    target = subfolder / member.rsplit("/", 1)[-1]
    with zipfile.ZipFile(archive) as zf, zf.open(member) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, _COPY_BLOCK)
    return target
