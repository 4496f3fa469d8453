"""MovieLens archives downloaded once into a cache folder, and verified by checksum before use.

A corrupt or partial archive never reaches a reader: the download goes to a temporary file that
is moved into the cache only once its digest matches (the published MD5, the `<url>.md5` GroupLens
serves beside newer releases, or `--checksum`), and a cached archive is checked again before reuse.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

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
DOWNLOAD_TIMEOUT_S = 30.0
_HASH_BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks (archives can be hundreds of MB)."""
    return _hash_file(path, "sha256")


def _hash_file(path: Path, algorithm: str) -> str:
    """Hex digest of a file with `algorithm` (`md5` or `sha256`), read in blocks."""
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
    """How to get the archive by hand when this machine cannot download it."""
    return (
        f"Download {url} yourself (browser, curl) and pass --source /path/to/{name}.zip "
        "(or its extracted folder)."
    )


def _urlopen(url: str, timeout: float) -> http.client.HTTPResponse:
    """Open `url` with a User-Agent (some servers refuse Python's default one)."""
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
    """A network error in a few words: the HTTP status, the URL error's reason, or its text."""
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
