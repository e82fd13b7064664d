"""Reading a MIMIC-CXR (DICOM) or MIMIC-CXR-JPG tree: the image list, splits and study labels.

The tree is ``ROOT/files/p1X/p<subject_id>/s<study_id>/<dicom_id>.{dcm,jpg}`` with three CSVs at
``ROOT`` (plain or ``.gz``). The metadata CSV lists the images and their view; the split CSV gives
the official split (else the folder rule p10–p17 / p18 / p19); the CheXpert CSV gives study labels
(studies without a row are unlabelled). Only ids, the view and the split are read from the metadata:
no other header-like field (dates, procedure text) leaves this module.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .labels import CHEXPERT_LABELS
from .tree import (
    FRONTAL_VIEWS,
    SPLITS,
    DataError,
    ImageTree,
    check_patient_disjoint,
    find_csv,
    read_csv_checked,
    sort_images,
)

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
IMAGE_EXTENSIONS = {"dicom": ".dcm", "jpg": ".jpg"}
FORMAT_PROBE_ROWS = 50  # metadata rows looked at to tell a DICOM tree from a JPG tree

FOLDER_SPLITS = {**{folder: "train" for folder in range(10, 18)}, 18: "validate", 19: "test"}  # p10..p19
__all__ = ["CHEXPERT_CSV", "FOLDER_SPLITS", "FRONTAL_VIEWS", "METADATA_CSV", "SPLITS", "SPLIT_CSV", "read_mimic"]


def folder_split(subject_ids: pd.Series) -> pd.Series:
    """The original method's split by folder: p10–p17 train, p18 validate, p19 test."""
    return subject_ids.astype(str).str[:2].astype(int).map(FOLDER_SPLITS)


def image_path(subject_id: int, study_id: int, dicom_id: str, extension: str) -> str:
    """Relative path of one image in the MIMIC layout."""
    subject = str(subject_id)
    return f"files/p{subject[:2]}/p{subject}/s{study_id}/{dicom_id}{extension}"


def read_mimic(root: str | Path) -> ImageTree:
    """List every image of a MIMIC-CXR or MIMIC-CXR-JPG tree with its study, view, split and labels."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    images = _read_metadata(root)
    image_format = _detect_format(root, images)
    images["path"] = [
        image_path(s, st, d, IMAGE_EXTENSIONS[image_format])
        for s, st, d in zip(images["subject_id"], images["study_id"], images["dicom_id"])
    ]
    images["split"], split_source = _read_splits(root, images)
    check_patient_disjoint(images)
    labels = _read_labels(root)
    images = sort_images(images.rename(columns={"dicom_id": "image_id"}))
    return ImageTree(root, "mimic", CHEXPERT_LABELS, images, labels, image_format, split_source)


def _read_metadata(root: Path) -> pd.DataFrame:
    path = find_csv(root, METADATA_CSV)
    if path is None:
        raise DataError(f"{root / METADATA_CSV}(.gz): not found; is {root} the root of a MIMIC-CXR tree?")
    frame = read_csv_checked(path, {"dicom_id": "str", "subject_id": "int", "study_id": "int", "ViewPosition": "str"})
    frame = frame.rename(columns={"ViewPosition": "view"})
    frame["view"] = frame["view"].str.upper()
    duplicated = frame["dicom_id"].duplicated()
    if duplicated.any():
        raise DataError(f"{path}: dicom_id {frame['dicom_id'][duplicated].iloc[0]!r} listed twice")
    bad_subject = ~frame["subject_id"].astype(str).str.fullmatch(r"1\d{7}")
    if bad_subject.any():
        raise DataError(f"{path}: subject_id {frame['subject_id'][bad_subject].iloc[0]} is not an 8-digit MIMIC id")
    return frame


def _detect_format(root: Path, images: pd.DataFrame) -> str:
    if not (root / "files").is_dir():
        raise DataError(f"{root / 'files'}: not found; is {root} the root of a MIMIC-CXR tree?")
    for row in images.head(FORMAT_PROBE_ROWS).itertuples():
        for image_format, extension in IMAGE_EXTENSIONS.items():
            if (root / image_path(row.subject_id, row.study_id, row.dicom_id, extension)).exists():
                return image_format
    raise DataError(f"{root / 'files'}: none of the first images listed in the metadata CSV exist (.dcm or .jpg)")


def _read_splits(root: Path, images: pd.DataFrame) -> tuple[pd.Series, str]:
    by_folder = folder_split(images["subject_id"])
    path = find_csv(root, SPLIT_CSV)
    if path is None:
        return by_folder, "folder rule (p10-p17 train, p18 validate, p19 test)"
    table = read_csv_checked(path, {"dicom_id": "str", "split": "str"})
    unknown = ~table["split"].isin(SPLITS)
    if unknown.any():
        raise DataError(f"{path}: split {table['split'][unknown].iloc[0]!r} is not one of {', '.join(SPLITS)}")
    official = images["dicom_id"].map(table.drop_duplicates("dicom_id").set_index("dicom_id")["split"])
    return official.fillna(by_folder), f"official split file {path.name}"


def _read_labels(root: Path) -> pd.DataFrame:
    path = find_csv(root, CHEXPERT_CSV)
    if path is None:
        raise DataError(f"{root / CHEXPERT_CSV}(.gz): not found; is {root} the root of a MIMIC-CXR tree?")
    columns = {"subject_id": "int", "study_id": "int"} | {name: "float" for name in CHEXPERT_LABELS}
    table = read_csv_checked(path, columns)
    values = table[list(CHEXPERT_LABELS)].to_numpy()
    invalid = ~(np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0)))
    if invalid.any():
        row, col = map(int, np.argwhere(invalid)[0])
        raise DataError(
            f"{path}: row {row + 2}, column {CHEXPERT_LABELS[col]!r}: {values[row, col]} is not 1, 0, -1 or blank"
        )
    if table["study_id"].duplicated().any():
        raise DataError(f"{path}: study_id {table['study_id'][table['study_id'].duplicated()].iloc[0]} has two rows")
    return table.set_index("study_id")
