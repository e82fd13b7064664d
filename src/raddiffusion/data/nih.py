"""Reading an NIH ChestX-ray14 tree: the image list, splits and per-image labels.

``ROOT`` holds ``Data_Entry_2017_v2020.csv`` (or the older ``Data_Entry_2017.csv``), the official
``train_val_list.txt`` and ``test_list.txt``, and the PNGs flat in ``ROOT/images/`` or in the
mirror layout ``ROOT/images_001/images/`` ... ``images_012/images/``. Only ``Image Index``,
``Finding Labels``, ``Patient ID`` and ``View Position`` are read: age and gender never leave this
module.

Ids: each image is a one-view study. ``subject_id`` = ``Patient ID``; ``study_id`` =
``subject_id * STUDY_FACTOR + FFF``, FFF the follow-up number of the image name
``NNNNNNNN_FFF.png`` (whose NNNNNNNN must be the Patient ID); ``image_id`` = the name without
``.png``. Labels: 1 for each finding of ``Finding Labels`` (``|``-separated), 0 for the others,
never uncertain; ``No Finding`` is the 15th label.

Splits: ``test_list.txt`` -> test; ``train_val_list.txt`` -> train, of which a patient-disjoint
``validate_share`` of the patients (by subject hash) -> validate. When only one list is present,
the images it does not name belong to the other. When both are absent every patient is split by
hash (:data:`HASH_VALIDATE_SHARE`, :data:`HASH_TEST_SHARE`).

The image folders are listed once (``os.scandir``); an image whose file is not on disk is skipped.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import first_line
from .tree import (
    DataError,
    ImageTree,
    check_patient_disjoint,
    first_row_labels,
    hash_split,
    require_columns,
    skip_table,
    sort_images,
)

NIH_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
    "No Finding",
)
DATA_ENTRY_CSVS = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")  # first found wins
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
IMAGE_DIR = "images"
MIRROR_DIR_PATTERN = re.compile(r"images_\d{3}")  # ROOT/images_001/images/ ... images_012/images/
IMAGE_NAME_PATTERN = re.compile(r"(\d{8})_(\d{3})\.png")

NIH_VALIDATE_SHARE = 0.1
"""Share of the train_val_list patients carved out (by subject hash) as the validate split."""
HASH_VALIDATE_SHARE = 0.1
"""Without both split lists: share of all patients put in validate (by subject hash)."""
HASH_TEST_SHARE = 0.2
"""Without both split lists: share of all patients put in test (by subject hash), like the official ~23 %."""
UNKNOWN_VIEW = "UNKNOWN"  # a blank View Position
UNLISTED, LISTED_TWICE = "unlisted", "listed twice"  # split markers of images no split can take
STUDY_FACTOR = 1000
"""study_id = subject_id * STUDY_FACTOR + follow-up number (three digits, so below the factor)."""

IMAGE_COLUMN, FINDINGS_COLUMN = "Image Index", "Finding Labels"
PATIENT_COLUMN, VIEW_COLUMN = "Patient ID", "View Position"
READ_COLUMNS = (IMAGE_COLUMN, FINDINGS_COLUMN, PATIENT_COLUMN, VIEW_COLUMN)

__all__ = [
    "DATA_ENTRY_CSVS", "HASH_TEST_SHARE", "HASH_VALIDATE_SHARE", "NIH_LABELS", "NIH_VALIDATE_SHARE", "STUDY_FACTOR",
    "TEST_LIST", "TRAIN_VAL_LIST", "find_data_entry", "read_nih",
]


def find_data_entry(root: Path) -> Path | None:
    """The Data_Entry CSV at ``root`` (the 2020 version first), or None."""
    return next((root / name for name in DATA_ENTRY_CSVS if (root / name).is_file()), None)


def read_nih(root: str | Path, validate_share: float = NIH_VALIDATE_SHARE) -> ImageTree:
    """List every image of an NIH ChestX-ray14 tree with its patient, view, split and labels.

    Rows that cannot be used (bad image name, unknown finding, in no split list, file not on disk,
    a list naming an image the CSV lacks, ...) are returned in ``skipped`` with the reason.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    if not 0 <= validate_share < 1:
        raise ValueError(f"validate_share must be in [0, 1), not {validate_share}")
    csv = find_data_entry(root)
    if csv is None:
        raise DataError(f"{root / DATA_ENTRY_CSVS[1]}: not found (nor {DATA_ENTRY_CSVS[0]}); "
                        f"is {root} the root of an NIH ChestX-ray14 tree?")
    entries = _read_data_entry(csv)
    on_disk = _list_images(root)
    if not on_disk:
        raise DataError(f"{root}: no PNG files in {IMAGE_DIR}/ or images_NNN/{IMAGE_DIR}/")
    rows, skipped = _parse_rows(csv, entries, on_disk)
    split, split_source, list_skips = _splits(root, csv, rows, entries[IMAGE_COLUMN], validate_share)
    rows["split"] = split
    unusable = {
        UNLISTED: f"in neither {TRAIN_VAL_LIST} nor {TEST_LIST}",
        LISTED_TWICE: f"listed in both {TRAIN_VAL_LIST} and {TEST_LIST}",
    }
    reasons = rows["split"].map(unusable).where(rows["split"].isin(list(unusable)), "")
    reasons = reasons.mask(reasons.eq("") & rows["path"].eq(""), "file not found")
    bad = reasons.ne("")
    skipped += [(i, p or f"{i}.png", f"{csv.name} row {r}: {reason}")
                for i, p, r, reason in zip(rows["image_id"][bad], rows["path"][bad], rows["row"][bad], reasons[bad])]
    rows = rows[~bad]
    if rows.empty:
        first = (skipped + list_skips)[0][2] if skipped + list_skips else "no rows"
        raise DataError(f"{root}: no usable images ({len(skipped) + len(list_skips)} rows skipped; first: {first})")
    images = rows[["image_id", "subject_id", "study_id", "view", "split", "path"]]
    check_patient_disjoint(images)
    labels = first_row_labels(rows["study_id"], rows["subject_id"], np.stack(rows["raw"].to_numpy()), NIH_LABELS)
    return ImageTree(root, "nih", NIH_LABELS, sort_images(images), labels, "png", split_source,
                     skip_table(skipped + list_skips))


def _read_data_entry(path: Path) -> pd.DataFrame:
    """The four columns we use, as strings. The bracketed header names split into two fields, and some
    copies end every line with a comma: ``index_col=False`` keeps pandas from taking a column as index."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False,
                                usecols=lambda column: column.strip() in READ_COLUMNS)
    except (OSError, EOFError, UnicodeDecodeError, ValueError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({first_line(exc)})") from None
    frame.columns = [column.strip() for column in frame.columns]
    require_columns(path, frame, READ_COLUMNS)
    return frame.apply(lambda column: column.str.strip())


def _list_images(root: Path) -> dict[str, str]:
    """Image name -> path relative to ROOT, for the PNGs in ``images/`` and ``images_NNN/images/``."""
    folders = [IMAGE_DIR] if (root / IMAGE_DIR).is_dir() else []
    with os.scandir(root) as entries:
        mirrors = sorted(e.name for e in entries if e.is_dir() and MIRROR_DIR_PATTERN.fullmatch(e.name))
    folders += [f"{m}/{IMAGE_DIR}" for m in mirrors if (root / m / IMAGE_DIR).is_dir()]
    found: dict[str, str] = {}
    for folder in folders:
        with os.scandir(root / folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(".png") and entry.name not in found and entry.is_file():
                    found[entry.name] = f"{folder}/{entry.name}"
    return found


def _parse_rows(csv: Path, entries: pd.DataFrame, on_disk: dict[str, str]):
    """Ids, view, path ("" when not on disk) and labels of the usable CSV rows; the skipped ones."""
    label_index = {name: k for k, name in enumerate(NIH_LABELS)}
    kept, skipped, seen = [], [], {}
    columns = zip(entries[IMAGE_COLUMN], entries[FINDINGS_COLUMN], entries[PATIENT_COLUMN], entries[VIEW_COLUMN])
    for i, (name, findings, patient, view) in enumerate(columns):
        where = f"{csv.name} row {i + 2}"
        image_id = name[:-4] if name.lower().endswith(".png") else name
        match = IMAGE_NAME_PATTERN.fullmatch(name)
        raw = np.zeros(len(NIH_LABELS), np.float32)
        unknown = [f for f in findings.split("|") if f.strip() not in label_index]
        reason = ""
        if match is None:
            reason = f"image name {name!r} is not NNNNNNNN_FFF.png"
        elif not patient.isdigit():
            reason = f"Patient ID {patient!r} is not a whole number"
        elif int(match.group(1)) != int(patient):
            reason = f"image name {name!r} does not belong to Patient ID {patient}"
        elif name in seen:
            reason = f"image listed twice (first at row {seen[name]})"
        elif not findings:
            reason = "blank Finding Labels"
        elif unknown:
            reason = f"unknown finding {unknown[0].strip()!r} in Finding Labels"
        if reason:
            skipped.append((image_id, on_disk.get(name, name), f"{where}: {reason}"))
            continue
        seen[name] = i + 2
        raw[[label_index[f.strip()] for f in findings.split("|")]] = 1.0
        subject = int(patient)
        kept.append((image_id, subject, subject * STUDY_FACTOR + int(match.group(2)), view.upper() or UNKNOWN_VIEW,
                     on_disk.get(name, ""), raw, name, i + 2))
    columns = ["image_id", "subject_id", "study_id", "view", "path", "raw", "name", "row"]
    rows = pd.DataFrame(kept, columns=columns).astype({"subject_id": np.int64, "study_id": np.int64})
    return rows, skipped


def _read_list(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({first_line(exc)})") from None


def _splits(root: Path, csv: Path, rows: pd.DataFrame, csv_names: pd.Series, validate_share: float):
    """Each row's split (or UNLISTED / LISTED_TWICE), how it was decided, and the list lines naming no CSV image."""
    lists = {name: root / name for name in (TRAIN_VAL_LIST, TEST_LIST) if (root / name).is_file()}
    if not lists:
        split = hash_split(rows["subject_id"], HASH_VALIDATE_SHARE, HASH_TEST_SHARE)
        return split, (f"no {TRAIN_VAL_LIST} or {TEST_LIST}: patients split by subject hash "
                       f"(validate {HASH_VALIDATE_SHARE:g}, test {HASH_TEST_SHARE:g})"), []
    known = set(csv_names)
    listed: dict[str, str] = {}
    skipped = []
    for list_name, path in lists.items():
        target = "test" if list_name == TEST_LIST else "train"
        for line_number, name in enumerate(_read_list(path), start=1):
            if not name:
                continue
            image_id = name[:-4] if name.lower().endswith(".png") else name
            where = f"{list_name} line {line_number}"
            if name not in known:
                skipped.append((image_id, name, f"{where}: image not in {csv.name}"))
            elif name in listed and listed[name] != target:
                listed[name] = LISTED_TWICE
            else:
                listed[name] = target
    split = rows["name"].map(listed)
    # with one list only, the images it does not name belong to the other
    other = UNLISTED if len(lists) == 2 else "train" if TEST_LIST in lists else "test"
    split = split.fillna(other)
    train = split.eq("train")
    split[train] = hash_split(rows.loc[train, "subject_id"], validate_share, 0.0)
    source = " + ".join(lists) + (f" (the images {next(iter(lists))} does not name -> the other split)"
                                  if len(lists) == 1 else "")
    return split, (f"official lists {source}; validate = {validate_share:g} of the {TRAIN_VAL_LIST} patients "
                   "by subject hash"), skipped
