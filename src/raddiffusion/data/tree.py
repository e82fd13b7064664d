"""What every dataset reader returns, and the helpers the readers share.

A reader (``mimic``, ``chexpert``, ``nih``, ``manifest``, ``dicom_export``) turns a dataset folder into an
:class:`ImageTree`: one row per image (its id, subject, study, view, split and path relative to the
root), one row of raw label values per labelled study, the dataset's label names, and the rows it
could not use with the reason. Preprocessing reads nothing else, so a new dataset is one new reader.
No age, sex, name or date leaves a reader.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import first_line
from .labels import apply_label_policy

SPLITS = ("train", "validate", "test")
FRONTAL_VIEWS = ("PA", "AP", "FRONTAL")  # FRONTAL: a CheXpert frontal view without AP/PA
IMAGE_COLUMNS = ["image_id", "subject_id", "study_id", "view", "split", "path"]
SKIPPED_COLUMNS = ["image_id", "path", "reason"]
LABEL_VALUES = (1.0, 0.0, -1.0)  # positive, negative, uncertain; blank (NaN) = not mentioned
HASH_BUCKETS = 2**32


class DataError(Exception):
    """Input data that cannot be used; the message is one line naming the thing and the problem."""


def no_skips() -> pd.DataFrame:
    """An empty table of skipped rows."""
    return pd.DataFrame({column: pd.Series(dtype=str) for column in SKIPPED_COLUMNS})


@dataclass(frozen=True)
class ImageTree:
    """A dataset folder as the preprocessing reads it.

    ``images``: the :data:`IMAGE_COLUMNS` (subject and study ids int64), sorted by subject, study and
    image id. ``labels``: indexed by study_id, with subject_id and one column of raw values per name
    in ``label_names`` (1, 0, -1, NaN = not mentioned). ``skipped``: rows the reader could not use
    (:data:`SKIPPED_COLUMNS`). ``dataset`` names the reader; ``source_format`` the image files.
    ``private_paths``: file paths may name patients (a hospital's DICOM export), so no output lists
    them; skipped files are named by ``image_id`` alone. ``notes``: lines on what the reader's rules
    did, printed by preprocess.
    """

    root: Path
    dataset: str
    label_names: tuple[str, ...]
    images: pd.DataFrame
    labels: pd.DataFrame
    source_format: str
    split_source: str
    skipped: pd.DataFrame = field(default_factory=no_skips)
    private_paths: bool = False
    notes: tuple[str, ...] = ()

    def labelled_images(self, label_policy: str = "ones") -> pd.DataFrame:
        """Images joined with their study's binary labels under ``label_policy``.

        Adds one column per label, ``mask:<label>`` columns (0 where ``ignore`` drops a value) and
        ``labelled`` (False for studies without a label row; their labels are 0 and masked).
        """
        names = list(self.label_names)
        raw = self.labels.reindex(self.images["study_id"])[names].to_numpy(np.float32)
        labelled = self.images["study_id"].isin(self.labels.index).to_numpy()
        targets, mask = apply_label_policy(raw, label_policy)
        mask[~labelled] = 0.0
        out = self.images.copy()
        out[names] = targets
        out[[f"mask:{name}" for name in names]] = mask
        out["labelled"] = labelled
        return out


def find_csv(root: Path, name: str) -> Path | None:
    """The CSV ``name`` at ``root``, plain or gzipped, or None when neither exists."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_csv_text(path: Path) -> pd.DataFrame:
    """Every cell of ``path`` as a string (blank = ""), failing in one line."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({first_line(exc)})") from None


def require_columns(path: Path, frame: pd.DataFrame, columns) -> None:
    """One-line DataError naming the columns of ``columns`` that ``frame`` (read from ``path``) lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")


def read_csv_checked(path: Path, columns: dict[str, str]) -> pd.DataFrame:
    """Read ``path`` keeping ``columns`` (name -> 'int' | 'str' | 'float'), failing in one line."""
    frame = read_csv_text(path)
    require_columns(path, frame, columns)
    frame = frame[list(columns)].copy()
    for column, kind in columns.items():
        frame[column] = convert_column(path, frame[column], column, kind)
    return frame


def convert_column(path: Path, values: pd.Series, column: str, kind: str) -> pd.Series:
    """``values`` (strings) as 'str', 'int' or 'float' (blank = NaN); a bad cell fails naming row and column."""
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


def parse_label_values(frame: pd.DataFrame, names) -> tuple[np.ndarray, pd.Series]:
    """Raw label values of the string columns ``names`` of ``frame`` (float32, blank = NaN), and per row
    the reason it cannot be used ("" when every value is 1, 0, -1 or blank)."""
    raw = np.full((len(frame), len(names)), np.nan, np.float32)
    reasons = pd.Series("", index=frame.index)
    for k, name in enumerate(names):
        text = frame[name].astype(str).str.strip()
        values = pd.to_numeric(text.replace("", np.nan), errors="coerce").to_numpy(np.float32)
        bad = (text.ne("").to_numpy() & np.isnan(values)) | ~(np.isnan(values) | np.isin(values, LABEL_VALUES))
        first_bad = bad & reasons.eq("").to_numpy()
        reasons[first_bad] = [f"column {name!r}: {value!r} is not 1, 0, -1 or blank" for value in text[first_bad]]
        raw[:, k] = values
    return raw, reasons


def check_patient_disjoint(images: pd.DataFrame) -> None:
    """Raise DataError when any subject has images in more than one split."""
    splits_per_subject = images.groupby("subject_id")["split"].nunique()
    crossing = splits_per_subject[splits_per_subject > 1]
    if len(crossing):
        raise DataError(
            f"splits are not patient-disjoint: {len(crossing)} subject(s) appear in several splits "
            f"(first: {crossing.index[0]})"
        )


def subject_hash(subjects: pd.Series) -> np.ndarray:
    """A number in [0, 1) per subject, from a hash of its id: the same on every machine and run."""
    digests = [hashlib.sha256(str(s).encode()).digest()[:4] for s in subjects]
    return np.array([int.from_bytes(d, "big") / HASH_BUCKETS for d in digests], dtype=np.float64)


def hash_split(subjects: pd.Series, validate: float, test: float) -> pd.Series:
    """A patient-disjoint split by subject hash: ``test`` share to test, ``validate`` share to validate."""
    if validate < 0 or test < 0 or validate + test >= 1:
        raise ValueError(f"split shares must be >= 0 and leave some train: validate {validate}, test {test}")
    position = subject_hash(subjects)
    split = np.where(position < test, "test", np.where(position < test + validate, "validate", "train"))
    return pd.Series(split, index=subjects.index)


def sort_images(images: pd.DataFrame) -> pd.DataFrame:
    """The image table in store order (subject, study, image id) with the :data:`IMAGE_COLUMNS`."""
    ordered = images.sort_values(["subject_id", "study_id", "image_id"], kind="stable").reset_index(drop=True)
    return ordered[IMAGE_COLUMNS]


def relative_path(text: str) -> tuple[str, str]:
    """``text`` as a normalised POSIX path relative to a dataset root and ``""``, or ``("", reason)``.

    Empty and ``.`` components are dropped; a blank path, an absolute one (POSIX or Windows drive)
    and one with a ``..`` component (which could leave the root) give the reason instead.
    """
    text = str(text).strip()
    if not text:
        return "", "blank path"
    if text.startswith(("/", "\\")) or (text[0].isalpha() and text[1:2] == ":"):
        return "", f"absolute path {text!r} (paths must be relative to ROOT)"
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        return "", f"path {text!r} escapes ROOT ('..')"
    if not parts:
        return "", f"path {text!r} names no file"
    return "/".join(parts), ""


def skip_table(rows) -> pd.DataFrame:
    """The skipped-rows table (:data:`SKIPPED_COLUMNS`) of ``(image_id, path, reason)`` tuples."""
    rows = list(rows)
    if not rows:
        return no_skips()
    return pd.DataFrame(rows, columns=SKIPPED_COLUMNS).astype(str)


def first_row_labels(study_ids, subject_ids, raw: np.ndarray, names) -> pd.DataFrame:
    """The labels table of a reader: per study (first row wins) its subject_id and ``raw`` label values.

    Indexed by ``study_id``; ``raw`` is ``[rows, len(names)]``; the label columns are float32.
    """
    frame = pd.DataFrame(np.asarray(raw, dtype=np.float32).reshape(len(study_ids), len(names)), columns=list(names))
    frame.insert(0, "subject_id", np.asarray(subject_ids, dtype=np.int64))
    frame.insert(0, "study_id", np.asarray(study_ids, dtype=np.int64))
    frame = frame.drop_duplicates("study_id", keep="first").set_index("study_id").sort_index()
    return frame
