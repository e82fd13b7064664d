"""Reading a MIMIC-CXR (DICOM) or MIMIC-CXR-JPG tree: the image list, splits and study labels.

The tree is ``ROOT/files/p1X/p<subject_id>/s<study_id>/<dicom_id>.{dcm,jpg}`` with three CSVs at
``ROOT`` (plain or ``.gz``). The metadata CSV lists the images and their view; the split CSV gives
the official split (else the folder rule p10–p17 / p18 / p19); the CheXpert CSV gives study labels
(studies without a row are unlabelled). Only ids, the view and the split are read from the metadata:
no other header-like field (dates, procedure text) leaves this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import first_line
from .labels import LABELS, apply_label_policy

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
SPLITS = ("train", "validate", "test")
FRONTAL_VIEWS = ("PA", "AP")
IMAGE_EXTENSIONS = {"dicom": ".dcm", "jpg": ".jpg"}
FORMAT_PROBE_ROWS = 50  # metadata rows looked at to tell a DICOM tree from a JPG tree

FOLDER_SPLITS = {**{folder: "train" for folder in range(10, 18)}, 18: "validate", 19: "test"}  # p10..p19


class DataError(Exception):
    """Input data that cannot be used; the message is one line naming the thing and the problem."""


@dataclass(frozen=True)
class MimicTree:
    """What a MIMIC tree holds: one row per image and one label row per labelled study.

    ``images``: dicom_id, subject_id, study_id, view, split, path (relative to ``root``), sorted by
    subject, study and dicom id. ``labels``: indexed by study_id, with subject_id and the 14 raw
    CheXpert values (1, 0, -1, NaN = not mentioned).
    """

    root: Path
    image_format: str
    split_source: str
    images: pd.DataFrame
    labels: pd.DataFrame

    def labelled_images(self, label_policy: str = "ones") -> pd.DataFrame:
        """Images joined with their study's binary labels under ``label_policy``.

        Adds the 14 label columns, ``mask:<label>`` columns (0 where ``ignore`` drops a value) and
        ``labelled`` (False for studies without a CheXpert row; their labels are 0 and masked).
        """
        raw = self.labels.reindex(self.images["study_id"])[list(LABELS)].to_numpy(np.float32)
        labelled = self.images["study_id"].isin(self.labels.index).to_numpy()
        targets, mask = apply_label_policy(raw, label_policy)
        mask[~labelled] = 0.0
        out = self.images.copy()
        out[list(LABELS)] = targets
        out[[f"mask:{name}" for name in LABELS]] = mask
        out["labelled"] = labelled
        return out


def find_csv(root: Path, name: str) -> Path | None:
    """The CSV ``name`` at ``root``, plain or gzipped, or None when neither exists."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_csv_checked(path: Path, columns: dict[str, str]) -> pd.DataFrame:
    """Read ``path`` keeping ``columns`` (name -> 'int' | 'str' | 'float'), failing in one line."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({first_line(exc)})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    frame = frame[list(columns)].copy()
    for column, kind in columns.items():
        frame[column] = _convert_column(path, frame[column], column, kind)
    return frame


def _convert_column(path: Path, values: pd.Series, column: str, kind: str) -> pd.Series:
    values = values.str.strip()
    if kind == "str":
        return values
    converted = pd.to_numeric(values.replace("", np.nan), errors="coerce")
    bad = converted.isna() & values.ne("") if kind == "float" else converted.isna()
    if kind == "int":
        bad |= converted.notna() & (converted != converted.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: row {row + 2}, column {column!r}: {values.iloc[row]!r} is not a valid {kind}")
    return converted.astype(np.int64) if kind == "int" else converted.astype(np.float32)


def folder_split(subject_ids: pd.Series) -> pd.Series:
    """The original method's split by folder: p10–p17 train, p18 validate, p19 test."""
    return subject_ids.astype(str).str[:2].astype(int).map(FOLDER_SPLITS)


def image_path(subject_id: int, study_id: int, dicom_id: str, extension: str) -> str:
    """Relative path of one image in the MIMIC layout."""
    subject = str(subject_id)
    return f"files/p{subject[:2]}/p{subject}/s{study_id}/{dicom_id}{extension}"


def check_patient_disjoint(images: pd.DataFrame) -> None:
    """Raise DataError when any subject has images in more than one split."""
    splits_per_subject = images.groupby("subject_id")["split"].nunique()
    crossing = splits_per_subject[splits_per_subject > 1]
    if len(crossing):
        raise DataError(
            f"splits are not patient-disjoint: {len(crossing)} subject(s) appear in several splits "
            f"(first: {crossing.index[0]})"
        )


def read_mimic(root: str | Path) -> MimicTree:
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
    images = images.sort_values(["subject_id", "study_id", "dicom_id"], kind="stable").reset_index(drop=True)
    columns = ["dicom_id", "subject_id", "study_id", "view", "split", "path"]
    return MimicTree(root, image_format, split_source, images[columns], labels)


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
    columns = {"subject_id": "int", "study_id": "int"} | {name: "float" for name in LABELS}
    table = read_csv_checked(path, columns)
    values = table[list(LABELS)].to_numpy()
    invalid = ~(np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0)))
    if invalid.any():
        row, col = map(int, np.argwhere(invalid)[0])
        raise DataError(f"{path}: row {row + 2}, column {LABELS[col]!r}: {values[row, col]} is not 1, 0, -1 or blank")
    if table["study_id"].duplicated().any():
        raise DataError(f"{path}: study_id {table['study_id'][table['study_id'].duplicated()].iloc[0]} has two rows")
    return table.set_index("study_id")
