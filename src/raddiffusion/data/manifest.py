"""Reading any image folder described by a manifest CSV (dataset "csv").

Columns: ``path`` (relative to ROOT), ``subject``, and optionally ``study`` (default: one study per
image), ``view`` (default ``UNKNOWN``) and ``split`` (train / validate / test; also ``valid``,
``val``, ``validation``). Every other column is a label, in header order, with values 1, 0, -1 or
blank (not mentioned).

Ids: when every subject value is a whole number it is the ``subject_id``; otherwise the distinct
subject values are numbered 1..n in sorted (string) order. The distinct (subject, study) pairs are
numbered 1..m in sorted order; without a study value each image is its own study. ``image_id`` is
the path relative to ROOT without its suffix. Numbering uses every row with a subject, usable or
not, so ids do not move when a file goes missing.

Splits: a blank or absent split takes the subject's split given on its other rows, else a
patient-disjoint split by subject hash (:data:`MANIFEST_VALIDATE_SHARE`, :data:`MANIFEST_TEST_SHARE`).

Labels: a study's labels are those of its first usable row with any non-blank label value; a study
whose rows are all blank has no label row (unlabelled, e.g. pretraining-only images).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

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

PATH_COLUMN, SUBJECT_COLUMN, STUDY_COLUMN, VIEW_COLUMN, SPLIT_COLUMN = "path", "subject", "study", "view", "split"
RESERVED_COLUMNS = (PATH_COLUMN, SUBJECT_COLUMN, STUDY_COLUMN, VIEW_COLUMN, SPLIT_COLUMN)
SPLIT_NAMES = {"train": "train", "validate": "validate", "valid": "validate", "val": "validate",
               "validation": "validate", "test": "test"}
MANIFEST_VALIDATE_SHARE = 0.1
"""Share of the patients without a given split put in validate (by subject hash)."""
MANIFEST_TEST_SHARE = 0.1
"""Share of the patients without a given split put in test (by subject hash)."""
UNKNOWN_VIEW = "UNKNOWN"
FORMATS = {".dcm": "dicom", ".dicom": "dicom", ".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}
INTEGER = re.compile(r"\d+")

__all__ = ["MANIFEST_TEST_SHARE", "MANIFEST_VALIDATE_SHARE", "RESERVED_COLUMNS", "SPLIT_NAMES", "complete_splits",
           "read_manifest"]


def read_manifest(root: str | Path, manifest: str | Path) -> ImageTree:
    """List the images a manifest CSV names under ``root`` with their subject, study, view, split and labels.

    Rows that cannot be used (absolute or escaping path, file not found, blank subject, unknown
    split, bad label value, duplicate path) are returned in ``skipped`` with the reason.
    """
    root, manifest = Path(root), Path(manifest)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    frame = read_csv_text(manifest)
    require_columns(manifest, frame, [PATH_COLUMN, SUBJECT_COLUMN])
    if frame.empty:
        raise DataError(f"{manifest}: no rows")
    label_names = tuple(c for c in frame.columns if c not in RESERVED_COLUMNS)
    if not label_names:
        raise DataError(f"{manifest}: no label column (every column but {', '.join(RESERVED_COLUMNS)} is a label)")
    unnamed = [c for c in label_names if str(c).startswith("Unnamed:")]
    if unnamed:
        raise DataError(f"{manifest}: a column has no name (pandas calls it {unnamed[0]!r})")
    frame = frame.apply(lambda column: column.astype(str).str.strip())
    raw, label_reasons = parse_label_values(frame, label_names)

    relative = [relative_path(text) for text in frame[PATH_COLUMN]]
    paths = pd.Series([p for p, _ in relative], index=frame.index)
    image_ids = paths.map(_without_suffix)
    subjects, subject_rule = _subject_ids(frame[SUBJECT_COLUMN])
    studies = _study_ids(frame, subjects, paths)
    given = frame[SPLIT_COLUMN].str.lower() if SPLIT_COLUMN in frame else pd.Series("", index=frame.index)
    views = frame[VIEW_COLUMN].str.upper().replace("", UNKNOWN_VIEW) if VIEW_COLUMN in frame else UNKNOWN_VIEW

    reasons, seen = [], {}
    for i in range(len(frame)):
        reason = relative[i][1]
        if not reason and subjects.iloc[i] < 0:
            reason = f"column {SUBJECT_COLUMN!r}: blank"
        if not reason and given.iloc[i] and given.iloc[i] not in SPLIT_NAMES:
            reason = f"column {SPLIT_COLUMN!r}: {frame[SPLIT_COLUMN].iloc[i]!r} is not {', '.join(SPLITS)} or blank"
        if not reason:
            reason = label_reasons.iloc[i]
        if not reason and paths.iloc[i] in seen:
            reason = f"path listed twice (first at row {seen[paths.iloc[i]]})"
        if not reason and not (root / paths.iloc[i]).is_file():
            reason = "file not found"
        if not reason:
            seen[paths.iloc[i]] = i + 2
        reasons.append(f"{manifest.name} row {i + 2}: {reason}" if reason else "")
    reasons = pd.Series(reasons, index=frame.index)
    bad = reasons.ne("").to_numpy()
    skipped = zip(image_ids[bad], paths[bad].where(paths[bad].ne(""), frame[PATH_COLUMN][bad]), reasons[bad])
    if bad.all():
        raise DataError(f"{manifest}: no usable rows (first problem: {reasons.iloc[0]})")

    images = pd.DataFrame({"image_id": image_ids, "subject_id": subjects, "study_id": studies, "view": views,
                           "path": paths})[~bad]
    images["split"], split_source = complete_splits(images["subject_id"], given[~bad].map(SPLIT_NAMES).fillna(""),
                                                    manifest.name)
    check_patient_disjoint(images)
    kept_raw = raw[~bad]
    has_value = ~np.isnan(kept_raw).all(axis=1)
    labels = first_row_labels(images["study_id"][has_value], images["subject_id"][has_value], kept_raw[has_value],
                              label_names)
    return ImageTree(root, "csv", label_names, sort_images(images), labels, _source_format(images["path"]),
                     f"{split_source}; {subject_rule}", skip_table(skipped))


def _without_suffix(path: str) -> str:
    head, _, name = path.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{stem}" if head else stem


def _subject_ids(values: pd.Series) -> tuple[pd.Series, str]:
    """Subject ids (-1 for a blank subject) and the rule used."""
    given = values.ne("")
    if given.any() and values[given].str.fullmatch(INTEGER).all():
        return values.where(given, "-1").astype(np.int64), "subject ids as given"
    number = {subject: k for k, subject in enumerate(sorted(set(values[given])), start=1)}
    return values.map(number).fillna(-1).astype(np.int64), "subjects numbered 1..n in sorted order"


def _study_ids(frame: pd.DataFrame, subjects: pd.Series, paths: pd.Series) -> pd.Series:
    """(subject, study) pairs numbered 1..m in sorted order; a row without a study value is its own study."""
    study = frame[STUDY_COLUMN] if STUDY_COLUMN in frame else pd.Series("", index=frame.index)
    own = study.eq("")
    keys = list(zip(subjects, own, study.where(~own, paths.where(paths.ne(""), frame[PATH_COLUMN]))))
    number = {key: k for k, key in enumerate(sorted(set(keys)), start=1)}
    return pd.Series([number[key] for key in keys], index=frame.index, dtype=np.int64)


def complete_splits(subjects: pd.Series, given: pd.Series, manifest_name: str) -> tuple[pd.Series, str]:
    """The given split (blank: none); else the subject's split given on its other rows; else by subject hash
    (:data:`MANIFEST_VALIDATE_SHARE`, :data:`MANIFEST_TEST_SHARE`). Returns the splits and how they were made."""
    by_hash = f"by subject hash (validate {MANIFEST_VALIDATE_SHARE:g}, test {MANIFEST_TEST_SHARE:g})"
    blank = given.eq("")
    if not blank.any():
        return given, f"split column of {manifest_name}"
    subject_split = given[~blank].groupby(subjects[~blank]).agg(lambda s: s.iloc[0] if s.nunique() == 1 else "")
    subject_split = subject_split.to_dict()
    split = given.mask(blank, subjects.map(lambda subject: subject_split.get(subject, "")))
    hashed = split.eq("")
    split[hashed] = hash_split(subjects[hashed], MANIFEST_VALIDATE_SHARE, MANIFEST_TEST_SHARE)
    if blank.all():
        return split, f"no split given: patients split {by_hash}"
    return split, f"split column of {manifest_name}; rows without one: their subject's split, else {by_hash}"


def _source_format(paths: pd.Series) -> str:
    formats = set(paths.map(lambda p: FORMATS.get(Path(p).suffix.lower(), "other")))
    return formats.pop() if len(formats) == 1 else "mixed"
