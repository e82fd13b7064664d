"""Reading a CheXpert v1.0 tree (full-size or ``-small``): the image list, splits and study labels.

``ROOT`` holds ``train.csv`` and ``valid.csv`` and, when the test release is present, its labels
(``test_labels.csv`` or ``test.csv``: ``Path`` and the 14 label columns, maybe no view columns).
Each CSV row is one image; ``train.csv`` gives the train split, ``valid.csv`` the validate split and
the test labels the test split. Only ``Path``, the view columns and the 14 labels are read: ``Sex``
and ``Age`` never leave this module.

``Path`` is relative to ``ROOT`` (``train/patient00001/study1/view1_frontal.jpg``) or, as in the
published CSVs, to its parent (``CheXpert-v1.0-small/train/...``): a first component equal to
ROOT's own name or to a release folder name (:data:`RELEASE_FOLDERS`) is dropped, per row.

Ids: a study is one ``patientNNNNN/studyN`` folder with all its views. ``subject_id`` = NNNNN,
``study_id`` = ``subject_id * STUDY_FACTOR + N`` (unique for N < STUDY_FACTOR; larger N is
skipped), ``image_id`` = the path relative to ROOT without its suffix.

Labels are per study in CheXpert (every view of a study carries the report's labels), so a study's
labels are those of its first usable row, in file order train, valid, test. Every study is labelled
(a blank value means "not mentioned").

Image files are not checked here: a missing or unreadable file is reported per file by the
decoder when the tree is preprocessed.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .labels import CHEXPERT_LABELS
from .tree import (
    SPLITS,
    DataError,
    ImageTree,
    check_patient_disjoint,
    first_row_labels,
    hash_split,
    parse_label_values,
    read_csv_text,
    relative_path,
    require_columns,
    skip_table,
    sort_images,
)

TRAIN_CSV = "train.csv"
VALID_CSV = "valid.csv"
TEST_CSVS = ("test_labels.csv", "test.csv")  # the test release's labels, first found wins
SPLIT_OF_CSV = {TRAIN_CSV: "train", VALID_CSV: "validate", **{name: "test" for name in TEST_CSVS}}
RELEASE_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")  # first components of the published Paths
PATH_COLUMN = "Path"
VIEW_COLUMN = "Frontal/Lateral"
PROJECTION_COLUMN = "AP/PA"

STUDY_FACTOR = 1000
"""study_id = subject_id * STUDY_FACTOR + study number; study numbers must be below it."""
FRONTAL, LATERAL, UNKNOWN_VIEW = "FRONTAL", "LATERAL", "UNKNOWN"
STUDY_PATTERN = re.compile(r"patient(\d+)/study(\d+)/[^/]+")  # the last three components of a Path

__all__ = ["RELEASE_FOLDERS", "STUDY_FACTOR", "TEST_CSVS", "TRAIN_CSV", "VALID_CSV", "read_chexpert"]


def read_chexpert(root: str | Path, carve: float | None = None) -> ImageTree:
    """List every image of a CheXpert tree with its study, view, split and the study labels.

    ``carve``: when the validate or the test split is missing (no usable rows, e.g. no test labels
    file), that share of the train patients (chosen by subject hash) becomes each missing split;
    without it a missing split stays absent. Rows that cannot be used (bad path, bad label value,
    study number too large, duplicate path) are returned in ``skipped`` with the reason.
    Image files are not checked for existence (the decoder reports missing files later).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    if carve is not None and not 0 < carve < 1:
        raise ValueError(f"carve must be a share between 0 and 1, not {carve}")
    files = _label_files(root)
    parts, skipped, seen = [], [], {}
    for path in files:
        kept, bad = _read_file(root, path, seen)
        parts.append(kept)
        skipped += bad
    rows = pd.concat(parts, ignore_index=True)
    if rows.empty:
        first = f"; first skipped: {skipped[0][2]}" if skipped else ""
        raise DataError(f"{root}: no usable rows in {', '.join(p.name for p in files)}{first}")
    rows["split"], split_source = _splits(rows, [p.name for p in files], carve)
    images = rows[["image_id", "subject_id", "study_id", "view", "split", "path"]]
    check_patient_disjoint(images)
    labels = first_row_labels(rows["study_id"], rows["subject_id"], np.stack(rows["raw"].to_numpy()), CHEXPERT_LABELS)
    return ImageTree(root, "chexpert", CHEXPERT_LABELS, sort_images(images), labels, "jpg", split_source,
                     skip_table(skipped))


def _label_files(root: Path) -> list[Path]:
    if not (root / TRAIN_CSV).is_file():
        raise DataError(f"{root / TRAIN_CSV}: not found; is {root} the root of a CheXpert tree?")
    files = [root / TRAIN_CSV]
    if (root / VALID_CSV).is_file():
        files.append(root / VALID_CSV)
    test = next((root / name for name in TEST_CSVS if (root / name).is_file()), None)
    return files + ([test] if test is not None else [])


def _read_file(root: Path, path: Path, seen: dict[str, str]) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """The usable rows of one label CSV (ids, view, path, raw labels) and the skipped ones.

    ``seen`` maps each relative path already kept to where it was listed, across files.
    """
    frame = read_csv_text(path)
    require_columns(path, frame, [PATH_COLUMN, *CHEXPERT_LABELS])
    raw, label_reasons = parse_label_values(frame, CHEXPERT_LABELS)
    columns = {c: frame[c].astype(str).str.strip().tolist() if c in frame else None
               for c in (VIEW_COLUMN, PROJECTION_COLUMN)}
    kept, skipped = [], []
    for i, text in enumerate(frame[PATH_COLUMN].tolist()):
        where = f"{path.name} row {i + 2}"
        relative, reason = _relative_to_root(root, text)
        image_id = relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative
        ids = None
        if not reason:
            ids, reason = _study_ids(relative)
        if not reason and label_reasons.iloc[i]:
            reason = label_reasons.iloc[i]
        if not reason and relative in seen:
            reason = f"path listed twice (first at {seen[relative]})"
        if reason:
            skipped.append((image_id, relative or str(text).strip(), f"{where}: {reason}"))
            continue
        seen[relative] = where
        view = _view(relative, columns[VIEW_COLUMN], columns[PROJECTION_COLUMN], i)
        kept.append((image_id, *ids, view, relative, i))
    table = pd.DataFrame(kept, columns=["image_id", "subject_id", "study_id", "view", "path", "row"])
    table = table.astype({"subject_id": np.int64, "study_id": np.int64})
    table["raw"] = list(raw[table["row"].to_numpy(np.int64)]) if len(table) else []
    table["csv"] = path.name
    return table.drop(columns="row"), skipped


def _relative_to_root(root: Path, text: str) -> tuple[str, str]:
    """A CSV ``Path`` relative to ROOT: a first component naming ROOT or a release folder is dropped."""
    relative, reason = relative_path(text)
    if reason:
        return "", reason
    first, _, rest = relative.partition("/")
    if first in (root.name, *RELEASE_FOLDERS) and re.fullmatch(r"[^/]+/" + STUDY_PATTERN.pattern, rest):
        return rest, ""  # PREFIX/SPLIT/patientN/studyN/FILE: relative to ROOT's parent
    return relative, ""


def _study_ids(relative: str) -> tuple[tuple[int, int] | None, str]:
    match = re.search(r"(?:^|/)" + STUDY_PATTERN.pattern + "$", relative)
    if match is None:
        return None, "path does not end in patientNNNNN/studyN/FILE"
    subject, study = int(match.group(1)), int(match.group(2))
    if study >= STUDY_FACTOR:
        return None, f"study number {study} is not below {STUDY_FACTOR} (study ids would collide)"
    return (subject, subject * STUDY_FACTOR + study), ""


def _view(relative: str, frontal_lateral: list[str] | None, projection: list[str] | None, row: int) -> str:
    """``Frontal/Lateral`` + ``AP/PA`` when given, else from the file name (``view1_frontal.jpg``)."""
    kind = frontal_lateral[row].lower() if frontal_lateral is not None else ""
    if kind == "frontal":
        return (projection[row].upper() if projection is not None else "") or FRONTAL
    if kind == "lateral":
        return LATERAL
    name = relative.rsplit("/", 1)[-1].lower()
    if "frontal" in name:
        return FRONTAL
    if "lateral" in name:
        return LATERAL
    return UNKNOWN_VIEW


def _splits(rows: pd.DataFrame, files: list[str], carve: float | None) -> tuple[pd.Series, str]:
    """Each row's split from its CSV, plus carved validate/test parts of train; and how it was decided."""
    split = rows["csv"].map(SPLIT_OF_CSV)
    present = set(split)
    source = "official files: " + ", ".join(f"{name} -> {SPLIT_OF_CSV[name]}" for name in files)
    missing = [s for s in SPLITS[1:] if s not in present]
    if not missing:
        return split, source
    if carve is None:
        return split, source + f"; no {' or '.join(missing)} split (no usable rows; pass carve to carve one from train)"
    train = split.eq("train")
    carved = hash_split(rows.loc[train, "subject_id"], carve if "validate" in missing else 0.0,
                        carve if "test" in missing else 0.0)
    split[train] = carved
    shares = " and ".join(f"{s} ({carve:g} of train patients by subject hash)" for s in missing)
    return split, source + f"; carved from train: {shares}"
