"""Public chest X-ray datasets: downloaded, verified and laid out as their reader expects.

The table of sets (:data:`CATALOG`, ``catalog.json``: data, not code) gives each set's files with URL, size and,
where the publisher gives one, SHA-256; its licence, citation and page; and how it is laid out after unpacking
(``arrange``: ``as-is`` when the archives already give the reader's layout, ``tuberculosis`` when a manifest is
written); ``manual``: files the reader needs that the publisher offers on its page without a direct link (the user
puts them in ROOT). A set that needs a user agreement has an ``agreement`` page and no files: it is listed, never
fetched.

``download(name, root)`` fetches every file into ``root`` (archives into ``root/.downloads``, resumable), checks each,
unpacks each archive atomically into its folder, writes what the reader needs, and records every file's SHA-256 in
``root/download.json``. Re-running it skips what is done and resumes what is not.
"""
from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...fileio import read_json, write_json
from ..layouts import DEFAULT_MANIFEST
from ..tree import DataError
from .transfer import fetch
from .tuberculosis import write_manifest
from .unpack import unpack

CATALOG = Path(__file__).with_name("catalog.json")
RECORD = "download.json"
ARCHIVES = ".downloads"
ARRANGEMENTS = ("as-is", "tuberculosis")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")

__all__ = ["CATALOG", "Downloaded", "download", "format_catalog", "read_catalog"]


@dataclass(frozen=True)
class Downloaded:
    """What one download call left in ``root``."""

    name: str
    root: Path
    files: int
    fetched: int  # files this call downloaded (the others were there already)
    bytes: int
    images: int
    page: str
    missing: tuple[str, ...]  # ``manual`` files not yet in root


def read_catalog(path: str | Path | None = None) -> dict[str, dict]:
    """The table of sets (``path``: a table of the same shape, e.g. a site's mirror), checked; name -> entry."""
    path = Path(path) if path is not None else CATALOG
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such table of datasets") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON table of datasets ({exc})") from None
    for name, entry in table.items():
        _check_entry(path, name, entry)
    return table


def format_catalog(catalog: dict[str, dict]) -> str:
    """The table as text for ``download --list``: each set's size, images, licence, citation and how to get it."""
    blocks = []
    for name, entry in catalog.items():
        known = [item.get("bytes") for item in entry.get("files", [])]
        size = f"{sum(known) / 1e9:.1f} GB to download" if known and all(known) else "size: not in the table"
        count = len(entry.get("files", []))
        how = (f"needs a user agreement: {entry['agreement']} (never downloaded here)" if "agreement" in entry
               else f"raddiffusion download {name} ROOT ({count} file{'s' if count != 1 else ''})")
        if entry.get("manual"):
            how += f"; then put {', '.join(entry['manual'])} from its page into ROOT (no direct link published)"
        images = f"{entry['images']:,} images, " if entry.get("images") else ""
        blocks.append(f"{name}: {entry['title']}\n  {images}{size}\n  licence: {entry['licence']}\n"
                      f"  cite: {entry['citation']}\n  page: {entry['page']}\n  {how}")
    return "\n\n".join(blocks)


def download(name: str, root: str | Path, table: str | Path | None = None, keep_archives: bool = False,
             progress: bool = True, echo: Callable[[str], None] = print) -> Downloaded:
    """Fetch, verify and lay out the set ``name`` in ``root`` so that ``raddiffusion preprocess ROOT STORE`` reads it."""
    catalog = read_catalog(table)
    if name not in catalog:
        raise DataError(f"no dataset {name!r} in the table; one of: {', '.join(catalog)} (see download --list)")
    entry = catalog[name]
    if "agreement" in entry:
        raise DataError(f"{entry['title']} needs a user agreement: get it at {entry['agreement']}, unpack it into a "
                        f"folder, then run `raddiffusion preprocess FOLDER STORE`")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    record = _read_record(root)
    _check_space(root, entry, record)
    fetched = 0
    for item in entry["files"]:
        if item["name"] in record and _in_place(root, item):
            continue
        size, digest = _fetch_one(root, item, keep_archives, progress)
        record[item["name"]] = {"url": item["url"], "bytes": size, "sha256": digest, "checked_against": _check(item),
                                "date": datetime.date.today().isoformat()}
        write_json(root / RECORD, record)
        echo(f"{item['name']}: {size:,} bytes, SHA-256 {digest} ({_check(item)})")
        fetched += 1
    if entry["arrange"] == "tuberculosis":
        write_manifest(root, root / DEFAULT_MANIFEST)
    if not keep_archives:
        shutil.rmtree(root / ARCHIVES, ignore_errors=True)
    missing = tuple(file for file in entry.get("manual", []) if not (root / file).is_file())
    return Downloaded(name, root, len(entry["files"]), fetched, sum(r["bytes"] for r in record.values()),
                      _count_images(root), entry["page"], missing)


def _fetch_one(root: Path, item: dict, keep_archives: bool, progress: bool) -> tuple[int, str]:
    """Download one file (an archive: unpack it into its folder) -> (bytes, SHA-256)."""
    folder = item.get("unpack_to")
    target = (root / ARCHIVES / item["name"]) if folder else (root / item["name"])
    digest = fetch(item["url"], target, item.get("bytes"), item.get("sha256"), progress)
    size = target.stat().st_size
    if folder:
        if not (root / folder).exists():
            try:
                unpack(target, root / folder, progress)
            except DataError as exc:
                target.unlink()
                raise DataError(f"{exc}; refused: nothing of it was kept and the archive was removed") from None
        if not keep_archives:
            target.unlink()
    return size, digest


def _check(item: dict) -> str:
    if item.get("sha256"):
        return "matches the published SHA-256"
    if item.get("bytes"):
        return "size as published; no checksum published, this one is kept in download.json"
    return "nothing published to check against; this SHA-256 is kept in download.json"


def _in_place(root: Path, item: dict) -> bool:
    return (root / item["unpack_to"]).is_dir() if item.get("unpack_to") else (root / item["name"]).is_file()


def _read_record(root: Path) -> dict:
    path = root / RECORD
    if not path.exists():
        return {}
    try:
        return read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}: not readable JSON; delete it to check every file again") from None


def _check_space(root: Path, entry: dict, record: dict) -> None:
    """Refuse at once when the known sizes of what is still to fetch (twice for archives) exceed the free space."""
    need = sum(item.get("bytes") or 0 for item in entry["files"] if item["name"] not in record)
    need += sum(item.get("bytes") or 0 for item in entry["files"] if item["name"] not in record and item.get("unpack_to"))
    free = shutil.disk_usage(root).free
    if need > free:
        raise DataError(f"{root}: {entry['title']} needs about {need / 1e9:.1f} GB (archives and their contents), "
                        f"{free / 1e9:.1f} GB are free")


def _count_images(root: Path) -> int:
    return sum(1 for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES
               and not any(part.startswith(".") for part in path.relative_to(root).parts))


def _check_entry(path: Path, name: str, entry: dict) -> None:
    where = f"{path}: dataset {name!r}"
    for key in ("title", "licence", "citation", "page"):
        if not isinstance(entry.get(key), str):
            raise DataError(f"{where} lacks its {key!r}")
    if "agreement" in entry:
        return
    if entry.get("arrange") not in ARRANGEMENTS:
        raise DataError(f"{where}: 'arrange' must be one of {', '.join(ARRANGEMENTS)}")
    files = entry.get("files")
    if not isinstance(files, list) or not files:
        raise DataError(f"{where} lists no files")
    for item in files:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("url"), str):
            raise DataError(f"{where}: every file needs a 'name' and a 'url'")
    manual = entry.get("manual", [])
    if not isinstance(manual, list) or not all(isinstance(file, str) and file and "/" not in file for file in manual):
        raise DataError(f"{where}: 'manual' must list plain file names")
    for item in files:
        for key in ("name", "unpack_to"):
            value = item.get(key, "x")
            if not isinstance(value, str) or not value or "/" in value or "\\" in value or value.startswith("."):
                raise DataError(f"{where}: {key} {value!r} must be a plain file or folder name")
