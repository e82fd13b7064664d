"""Unpacking a downloaded archive (tar, tar.gz, zip) into one folder, all or nothing.

Members are written into a temporary folder beside the destination, which is renamed to it only when every member
is out; a failure leaves nothing under the destination's name. A member whose path is absolute, climbs out with
``..``, or is a link or a device file is refused before anything of it is written.
"""
from __future__ import annotations

import gzip
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ...errors import first_line
from ...fileio import atomic_folder
from ..tree import DataError

CHUNK_BYTES = 1 << 20


def unpack(archive: Path, destination: Path, progress: bool = True) -> int:
    """Unpack ``archive`` into the new folder ``destination``; returns the number of files written."""
    try:
        with atomic_folder(destination) as folder:
            if zipfile.is_zipfile(archive):
                return _unzip(archive, folder, progress)
            return _untar(archive, folder, progress)
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise DataError(f"{archive.name}: not a readable tar or zip archive ({first_line(exc)})") from None


def safe_member(archive: Path, name: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside the destination, or a one-line DataError."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DataError(f"{archive.name}: member {name!r} would be written outside the destination folder")
    return path


def _untar(archive: Path, folder: Path, progress: bool) -> int:
    written = 0
    with tarfile.open(archive) as tar, tqdm(desc=f"unpack {archive.name}", unit=" files", disable=not progress,
                                             leave=False) as bar:
        for member in tar:
            path = safe_member(archive, member.name)
            if member.isdir():
                (folder / path).mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                raise DataError(f"{archive.name}: member {member.name!r} is a link or a special file")
            _write(tar.extractfile(member), folder / path)
            written += 1
            bar.update()
    return written


def _unzip(archive: Path, folder: Path, progress: bool) -> int:
    written = 0
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        for info in tqdm(members, desc=f"unpack {archive.name}", unit=" files", disable=not progress, leave=False):
            path = safe_member(archive, info.filename)
            if info.is_dir():
                (folder / path).mkdir(parents=True, exist_ok=True)
                continue
            if (info.external_attr >> 16) & 0o170000 not in (0, 0o100000):  # a symlink or special file (Unix mode)
                raise DataError(f"{archive.name}: member {info.filename!r} is a link or a special file")
            with bundle.open(info) as source:
                _write(source, folder / path)
            written += 1
    return written


def _write(source, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK_BYTES)
