"""One pass from a dataset folder (MIMIC-CXR, CheXpert, NIH ChestX-ray14, a DICOM export or a CSV manifest) to a store shard: decode, crop, resize, uint8 — resumable and parallel.

Work is cut into fixed chunks of the (sorted) image list. Each finished chunk is saved as
``chunks/chunk-NNNNNN.npy`` then ``.json`` (its completion mark), both written then renamed, so an
interrupted run re-run with the same arguments decodes only the chunks it had not finished. When all
chunks exist they are concatenated in order into the shard's files and ``done.json`` is written
last: the result does not depend on interruptions or on the number of workers.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..fileio import TEMPORARY_GLOB, atomic_path, read_json, write_json
from .decode import read_image
from .dicom_export import ExportOptions, check_id_map
from .layouts import read_tree
from .tree import DataError, ImageTree
from .store import (
    DONE_FILE,
    IMAGES_FILE,
    INDEX_COLUMNS,
    INDEX_FILE,
    LABELS_FILE,
    SKIPPED_COLUMNS,
    SKIPPED_FILE,
    STORE_FORMAT,
    shard_dirname,
)

DEFAULT_IMAGE_SIZE = 256
DEFAULT_CHUNK_SIZE = 64
CHUNKS_DIR = "chunks"
PARAMS_FILE = "params.json"


@dataclass(frozen=True)
class PreprocessSummary:
    """What one preprocess run did."""

    shard_dir: Path
    listed: int
    stored: int
    skipped: int
    decoded: int
    reused: int
    seconds: float
    notes: tuple[str, ...] = ()  # what the reader's rules did (ImageTree.notes), printed before the summary line

    def line(self) -> str:
        """The one-line summary printed at the end of the command."""
        rate = self.decoded / self.seconds if self.seconds > 0 else 0.0
        skipped = f"{self.skipped} skipped (reasons in {self.shard_dir / SKIPPED_FILE})" if self.skipped else "none skipped"
        return (
            f"preprocess: stored {self.stored} of {self.listed} images in {self.shard_dir}; {skipped}; "
            f"decoded {self.decoded}, reused {self.reused} from an earlier run; "
            f"{self.seconds:.1f}s ({rate:.0f} images/s)"
        )


@dataclass(frozen=True)
class _Chunk:
    number: int
    root: Path
    paths: tuple[str, ...]
    image_size: int
    out_dir: Path


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``I/N`` (1-based shard I of N) into ``(I, N)``."""
    try:
        shard, total = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 1/4), not {text!r}") from None
    if not 1 <= shard <= total:
        raise ValueError(f"--shard {text}: I must be between 1 and N")
    return shard, total


def preprocess(
    root: str | Path,
    store: str | Path,
    image_size: int = DEFAULT_IMAGE_SIZE,
    workers: int | None = None,
    shard: tuple[int, int] = (1, 1),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    layout: str | None = None,
    manifest: str | Path | None = None,
    carve: float | None = None,
    export: ExportOptions | None = None,
) -> PreprocessSummary:
    """Decode shard ``shard = (I, N)`` of the dataset at ``root`` into ``store``.

    The layout (MIMIC, CheXpert, NIH, a DICOM export or a CSV ``manifest``) is detected from what
    ``root`` holds unless ``layout`` names it; ``carve`` is the share of train patients moved into a
    split the dataset lacks (CheXpert); ``export`` the options of a DICOM export (its id map must lie
    outside ``store``). Subjects are dealt to shards in turn, so each shard holds whole
    subjects. Re-running after an interruption resumes; re-running a finished shard does nothing.
    """
    if image_size < 8:
        raise ValueError(f"image size must be at least 8 pixels, not {image_size}")
    started = time.perf_counter()
    if export is not None and export.id_map is not None:
        check_id_map(export.id_map, store)
    tree = read_tree(root, layout, Path(manifest) if manifest else None, carve, export, progress)
    images = select_shard(tree.images, *shard)
    shard_dir = Path(store) / shard_dirname(*shard)
    params = _params(tree, images, image_size, chunk_size, shard)
    _check_or_write_params(shard_dir, params)
    remove_stale_temporaries(shard_dir)
    if (shard_dir / DONE_FILE).is_file():
        shutil.rmtree(shard_dir / CHUNKS_DIR, ignore_errors=True)  # left if killed right after done.json
        done = read_json(shard_dir / DONE_FILE)
        return PreprocessSummary(shard_dir, done["images"] + done["skipped"], done["images"], done["skipped"], 0,
                                 len(images), 0.0, tree.notes)
    chunks = _chunks(tree.root, images, image_size, chunk_size, shard_dir / CHUNKS_DIR)
    pending = [c for c in chunks if not _chunk_done(c)]
    reused = sum(len(c.paths) for c in chunks) - sum(len(c.paths) for c in pending)
    _run_chunks(pending, workers or available_cpus(), len(images), reused, progress)
    stored, skipped = _assemble(shard_dir, tree, images, chunks, image_size, shard)
    seconds = time.perf_counter() - started
    return PreprocessSummary(shard_dir, stored + skipped, stored, skipped, len(images) - reused, reused, seconds,
                             tree.notes)


def available_cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def select_shard(images: pd.DataFrame, shard: int, num_shards: int) -> pd.DataFrame:
    """The images of the subjects dealt to shard ``shard`` (1-based) of ``num_shards``."""
    subjects = np.sort(images["subject_id"].unique())
    mine = subjects[shard - 1 :: num_shards]
    return images[images["subject_id"].isin(mine)].reset_index(drop=True)


def remove_stale_temporaries(shard_dir: Path) -> None:
    """Delete temporary files an interrupted run left behind (one run per shard at a time)."""
    for leftover in shard_dir.glob(f"**/{TEMPORARY_GLOB}"):
        leftover.unlink(missing_ok=True)


def _params(tree: ImageTree, images: pd.DataFrame, image_size: int, chunk_size: int, shard: tuple[int, int]) -> dict:
    listing = hashlib.sha256("\n".join(images["path"]).encode()).hexdigest()
    return {
        "format": STORE_FORMAT,
        "dataset": tree.dataset,
        "label_names": list(tree.label_names),
        "image_size": image_size,
        "chunk_size": chunk_size,
        "shard": shard[0],
        "num_shards": shard[1],
        "images_listed": len(images),
        "listing_sha256": listing,
    }


def _check_or_write_params(shard_dir: Path, params: dict) -> None:
    path = shard_dir / PARAMS_FILE
    if not path.is_file():
        write_json(path, params)
        return
    earlier = read_json(path)
    differing = [k for k in params if earlier.get(k) != params[k]]
    if differing:
        what = ", ".join(f"{k} {earlier.get(k)} (now {params[k]})" for k in differing if k != "listing_sha256")
        if "listing_sha256" in differing:
            what = f"{what}; the image list differs" if what else "the image list differs"
        raise DataError(
            f"{shard_dir}: was started with other arguments or data: {what}. "
            "Re-run with the same arguments, or write to a new STORE"
        )


def _chunks(root: Path, images: pd.DataFrame, image_size: int, chunk_size: int, out_dir: Path) -> list[_Chunk]:
    paths = images["path"].tolist()
    return [
        _Chunk(n, root, tuple(paths[start : start + chunk_size]), image_size, out_dir)
        for n, start in enumerate(range(0, len(paths), chunk_size))
    ]


def _chunk_files(chunk: _Chunk) -> tuple[Path, Path]:
    stem = chunk.out_dir / f"chunk-{chunk.number:06d}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def _chunk_done(chunk: _Chunk) -> bool:
    array_file, mark_file = _chunk_files(chunk)
    return mark_file.is_file() and array_file.is_file()


def _decode_chunk(chunk: _Chunk) -> int:
    """Decode one chunk and save its images and per-file reasons (empty = stored)."""
    stored, reasons = [], []
    for rel in chunk.paths:
        image, reason = read_image(chunk.root / rel, chunk.image_size)
        if image is not None:
            stored.append(image)
        reasons.append(reason)
    array = np.stack(stored) if stored else np.empty((0, chunk.image_size, chunk.image_size), np.uint8)
    array_file, mark_file = _chunk_files(chunk)
    array_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(array_file) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)
    write_json(mark_file, {"reasons": reasons})
    return len(chunk.paths)


def _run_chunks(pending: list[_Chunk], workers: int, total: int, reused: int, progress: bool) -> None:
    bar = tqdm(total=total, initial=reused, unit="img", desc="preprocess", disable=not progress, dynamic_ncols=True)
    with bar:
        if workers <= 1 or len(pending) <= 1:
            for chunk in pending:
                bar.update(_decode_chunk(chunk))
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for future in as_completed([pool.submit(_decode_chunk, c) for c in pending]):
                bar.update(future.result())


def _assemble(
    shard_dir: Path, tree: ImageTree, images: pd.DataFrame, chunks: list[_Chunk], image_size: int, shard: tuple[int, int]
) -> tuple[int, int]:
    """Concatenate the chunks into the shard's files; ``done.json`` last. Returns (stored, skipped).

    The rows the reader could not use are listed in the first shard's ``skipped.csv``."""
    reasons = []
    with atomic_path(shard_dir / IMAGES_FILE) as tmp, open(tmp, "wb") as out:
        for chunk in chunks:
            array_file, mark_file = _chunk_files(chunk)
            reasons += read_json(mark_file)["reasons"]
            out.write(np.load(array_file).tobytes())
    ok = np.array([r == "" for r in reasons], dtype=bool)
    kept = images[ok]
    skipped = images[~ok].assign(reason=[r for r in reasons if r])[SKIPPED_COLUMNS]
    if tree.private_paths:
        skipped = skipped.assign(path="")
    if shard[0] == 1:
        skipped = pd.concat([tree.skipped[SKIPPED_COLUMNS], skipped], ignore_index=True)
    labels = tree.labels[tree.labels.index.isin(kept["study_id"])].reset_index()
    _write_csv(shard_dir / INDEX_FILE, kept[INDEX_COLUMNS])
    _write_csv(shard_dir / LABELS_FILE, labels[["study_id", "subject_id", *tree.label_names]])
    _write_csv(shard_dir / SKIPPED_FILE, skipped)
    write_json(
        shard_dir / DONE_FILE,
        {
            "format": STORE_FORMAT,
            "image_size": image_size,
            "shard": shard[0],
            "num_shards": shard[1],
            "dataset": tree.dataset,
            "label_names": list(tree.label_names),
            "images": int(ok.sum()),
            "skipped": len(skipped),
            "studies": int(kept["study_id"].nunique()),
            "labelled_studies": len(labels),
            "source_format": tree.source_format,
            "split_source": tree.split_source,
        },
    )
    shutil.rmtree(shard_dir / CHUNKS_DIR, ignore_errors=True)
    return int(ok.sum()), len(skipped)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
