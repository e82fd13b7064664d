"""One file over HTTP(S): resumed where an earlier try stopped, checked, then renamed into place.

The bytes go to ``NAME.part`` beside the target. A later try (or a retry after a dropped connection) asks the server
for the rest with an HTTP range request and appends; a server that ignores ranges sends the whole file again, which
replaces the partial one. A complete file is checked against its published size and SHA-256 (when the table gives
them) before it is renamed to its name, so a file under its own name is always whole and verified.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..tree import DataError

PARTIAL_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60  # seconds without a byte before a connection counts as dropped
RETRIES = 3  # dropped connections resumed within one call
HTTP_PARTIAL = 206
HTTP_RANGE_NOT_SATISFIABLE = 416
USER_AGENT = "raddiffusion-download"


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, target: Path, size: int | None = None, sha256: str | None = None, progress: bool = True) -> str:
    """Download ``url`` to ``target`` (resuming ``target.part``), check it, rename it; returns its SHA-256.

    A ``target`` that already exists was checked when it was made and is only hashed. A size or SHA-256 that does not
    match removes the partial file (the next call starts over) and raises a one-line :class:`DataError`.
    """
    if target.exists():
        return sha256_of(target)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(RETRIES + 1):
        try:
            _download(url, partial, size, progress)
            break
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError) or attempt == RETRIES:
                have = partial.stat().st_size if partial.exists() else 0
                raise DataError(f"{target.name}: download from {url} failed at {have:,} bytes ({_reason(exc)}); "
                                "run the command again to resume") from None
    digest = _verified(partial, target.name, size, sha256)
    os.replace(partial, target)
    return digest


def _download(url: str, partial: Path, size: int | None, progress: bool) -> None:
    """Append the bytes ``partial`` lacks (a range request) or, if the server sends the whole file, rewrite it."""
    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have >= size:
        return
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"}
                                                                             if have else {})})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == HTTP_RANGE_NOT_SATISFIABLE and have:  # nothing after what we hold: it is complete
            return
        raise
    with response:
        resumed = have > 0 and response.status == HTTP_PARTIAL
        length = response.headers.get("Content-Length")
        total = (have if resumed else 0) + int(length) if length is not None else size
        with open(partial, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=have if resumed else 0, unit="B", unit_scale=True, unit_divisor=1024,
                desc=partial.name[: -len(PARTIAL_SUFFIX)], disable=not progress, leave=False) as bar:
            for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                out.write(block)
                bar.update(len(block))
        got = partial.stat().st_size
        if total is not None and got < total:  # the server closed the connection early
            raise http.client.IncompleteRead(b"", total - got)


def _verified(partial: Path, name: str, size: int | None, sha256: str | None) -> str:
    got = partial.stat().st_size
    if size is not None and got != size:
        partial.unlink()
        raise DataError(f"{name}: {got:,} bytes downloaded, the table says {size:,}; the file was removed, "
                        "run the command again to download it anew")
    digest = sha256_of(partial)
    if sha256 is not None and digest != sha256.lower():
        partial.unlink()
        raise DataError(f"{name}: SHA-256 {digest} is not the published {sha256.lower()}: the download is corrupt; "
                        "the file was removed, run the command again to download it anew")
    return digest


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no data for {TIMEOUT_S} s"
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed early"
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")
