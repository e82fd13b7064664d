"""The preprocessed store: uint8 images memory-mapped from disk, an index table and study labels.

A store is a directory of one or more shards, each written by one ``preprocess`` run:

    STORE/shard-001-of-002/images.u8     raw uint8 [n, size, size], C order
                          /index.csv     image_id, subject_id, study_id, view, split (row = image)
                          /labels.csv    study_id, subject_id, one raw value per label (labelled studies)
                          /skipped.csv   image_id, path, reason (rows and files that could not be used)
                          /done.json     written last: the shard is complete; names the dataset
                                         ("mimic", "chexpert", "nih", "csv") and its label names

Shards hold disjoint subjects and are read as one store, in shard order. Stores of the first format
(MIMIC only, before stores knew their labels) open as MIMIC stores with the 14 CheXpert labels.
"""
from __future__ import annotations

import mmap
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import first_line
from ..fileio import read_json
from .labels import CHEXPERT_LABELS
from .tree import IMAGE_COLUMNS, SKIPPED_COLUMNS, DataError, check_patient_disjoint

IMAGES_FILE = "images.u8"
INDEX_FILE = "index.csv"
LABELS_FILE = "labels.csv"
SKIPPED_FILE = "skipped.csv"
DONE_FILE = "done.json"
STORE_FORMAT = "raddiffusion-store-v2"
FIRST_FORMAT = "raddiffusion-store-v1"  # MIMIC only, the 14 CheXpert labels, ids in a "dicom_id" column
FIRST_FORMAT_ID = "dicom_id"
INDEX_COLUMNS = IMAGE_COLUMNS[:-1]  # the image table without its source path
SHARD_PATTERN = re.compile(r"shard-(\d+)-of-(\d+)")


def shard_dirname(shard: int, num_shards: int) -> str:
    """Directory name of shard ``shard`` (1-based) of ``num_shards``."""
    return f"shard-{shard:03d}-of-{num_shards:03d}"


class ImageArray:
    """uint8 images ``[N, H, W]`` of one or more memory-mapped shard files, indexed as one array.

    Supports ``len``, ``.shape``, and indexing with an int, a slice or an int array (returning a
    copy in memory). Pickles without its data: worker processes reopen the files.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, files: list[Path], counts: list[int], image_size: int):
        self.files, self.counts, self.image_size = list(files), list(counts), image_size
        self.offsets = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])
        self._maps: list[np.ndarray] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.offsets[-1]), self.image_size, self.image_size)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}

    def _open(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [self._map(path, count) for path, count in zip(self.files, self.counts)]
        return self._maps

    def _map(self, path: Path, count: int) -> np.ndarray:
        shape = (count, self.image_size, self.image_size)
        if count == 0:
            return np.empty(shape, np.uint8)
        expected = count * self.image_size**2
        if path.stat().st_size != expected:
            raise DataError(f"{path}: {path.stat().st_size} bytes, expected {expected}: the store is damaged")
        return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)

    def release_pages(self) -> None:
        """Drop the pages read so far from this process's resident memory; they stay in the OS page
        cache, so reading them again is cheap. Lets one pass over a store larger than memory keep a
        bounded footprint."""
        for array in self._maps or []:
            if isinstance(array.base, mmap.mmap):
                array.base.madvise(mmap.MADV_DONTNEED)

    def __getitem__(self, key) -> np.ndarray:
        maps = self._open()
        if len(maps) == 1:
            return np.asarray(maps[0][key])
        if isinstance(key, slice):
            key = np.arange(len(self))[key]
        rows = np.asarray(key)
        scalar = rows.ndim == 0
        rows = np.atleast_1d(rows).astype(np.int64)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"image index out of range for a store of {len(self)} images")
        rows = np.where(rows < 0, rows + len(self), rows)
        out = np.empty((rows.size, self.image_size, self.image_size), np.uint8)
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        for p in np.unique(part):
            where = part == p
            out[where] = maps[p][rows[where] - self.offsets[p]]
        return out[0] if scalar else out


@dataclass(frozen=True)
class Store:
    """A preprocessed store opened for reading (see :func:`open_store`)."""

    root: Path
    image_size: int
    dataset: str
    label_names: tuple[str, ...]
    images: ImageArray
    index: pd.DataFrame
    labels: pd.DataFrame
    skipped: pd.DataFrame
    shards: tuple[dict, ...]

    def __len__(self) -> int:
        return len(self.images)

    def require_labels(self, purpose: str) -> None:
        """Raise a one-line ValueError, naming ``purpose``, when the store has no label columns."""
        if not self.label_names:
            raise ValueError(f"{self.root} has no labels, so it serves pretraining only; to {purpose}, preprocess "
                             "the data again with its labels (a DICOM export: --labels FILE.csv)")

    def summary(self) -> str:
        """One line: images, studies, subjects and images per split."""
        per_split = self.index["split"].value_counts()
        splits = ", ".join(f"{s} {int(per_split.get(s, 0))}" for s in ("train", "validate", "test"))
        return (
            f"{len(self.index)} images of {self.index['study_id'].nunique()} studies from "
            f"{self.index['subject_id'].nunique()} subjects at {self.image_size}px ({splits}); "
            f"{len(self.labels)} labelled studies ({len(self.label_names)} {self.dataset} labels); "
            f"{len(self.skipped)} skipped files"
        )


def open_store(path: str | Path) -> Store:
    """Open a store directory written by ``raddiffusion preprocess`` (all its shards, as one)."""
    root = Path(path)
    shard_dirs = _complete_shard_dirs(root)
    done = [read_json(d / DONE_FILE) for d in shard_dirs]
    sizes = {d["image_size"] for d in done}
    if len(sizes) != 1:
        raise DataError(f"{root}: shards were written at different image sizes {sorted(sizes)}")
    dataset, label_names = _dataset_and_labels(root, done)
    first_format = done[0]["format"] == FIRST_FORMAT
    index = pd.concat([_read_table(d / INDEX_FILE, INDEX_COLUMNS, label_names, first_format) for d in shard_dirs],
                      ignore_index=True)
    labels = pd.concat([_read_table(d / LABELS_FILE, ["study_id", "subject_id", *label_names], label_names)
                        for d in shard_dirs])
    skipped = pd.concat([_read_table(d / SKIPPED_FILE, SKIPPED_COLUMNS, label_names, first_format)
                         for d in shard_dirs], ignore_index=True)
    counts = [d["images"] for d in done]
    if sum(counts) != len(index):
        raise DataError(f"{root}: index tables list {len(index)} images, done.json files say {sum(counts)}")
    check_patient_disjoint(index)
    images = ImageArray([d / IMAGES_FILE for d in shard_dirs], counts, sizes.pop())
    images._open()
    return Store(root, images.image_size, dataset, label_names, images, index, labels.set_index("study_id"),
                 skipped, tuple(done))


def _dataset_and_labels(root: Path, done: list[dict]) -> tuple[str, tuple[str, ...]]:
    """The dataset kind and label names every shard agrees on (a first-format store: MIMIC, CheXpert labels)."""
    found = set()
    for shard in done:
        if shard.get("format") == FIRST_FORMAT:
            found.add(("mimic", CHEXPERT_LABELS))
        elif shard.get("format") == STORE_FORMAT:
            found.add((shard["dataset"], tuple(shard["label_names"])))
        else:
            raise DataError(f"{root}: unknown store format {shard.get('format')!r}; rebuild it with "
                            "`raddiffusion preprocess ROOT STORE` into a new STORE")
    if len(found) != 1:
        raise DataError(f"{root}: shards were written from different datasets or label sets")
    return found.pop()


def _complete_shard_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"{root}: store not found")
    found = {}
    for child in root.iterdir():
        match = SHARD_PATTERN.fullmatch(child.name)
        if match and child.is_dir():
            found[(int(match[1]), int(match[2]))] = child
    if not found:
        raise DataError(f"{root}: not a store (no shard-*-of-* directories; write one with `raddiffusion preprocess`)")
    totals = {n for _, n in found}
    if len(totals) != 1:
        raise DataError(f"{root}: shards of different splittings are mixed: {sorted(p.name for p in found.values())}")
    total = totals.pop()
    unfinished = [i for i in range(1, total + 1) if (i, total) not in found or not (found[i, total] / DONE_FILE).is_file()]
    if unfinished:
        raise DataError(
            f"{root}: shard(s) {', '.join(f'{i}/{total}' for i in unfinished)} missing or unfinished; "
            "run `raddiffusion preprocess` for them (an interrupted run resumes)"
        )
    return [found[i, total] for i in range(1, total + 1)]


def _read_table(path: Path, columns: list[str], label_names: tuple[str, ...], first_format: bool = False) -> pd.DataFrame:
    dtypes = {c: str for c in ("image_id", FIRST_FORMAT_ID, "view", "split", "path", "reason")}
    try:
        table = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values={name: [""] for name in label_names})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot be read ({first_line(exc)})") from None
    if first_format:
        table = table.rename(columns={FIRST_FORMAT_ID: "image_id"})
    if list(table.columns) != columns:
        raise DataError(f"{path}: expected columns {columns}, found {list(table.columns)}")
    numeric = {c: np.int64 for c in ("subject_id", "study_id") if c in columns}
    numeric |= {name: np.float32 for name in label_names if name in columns}
    return table.astype(numeric)
