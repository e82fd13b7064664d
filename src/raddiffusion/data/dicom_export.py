"""A folder of DICOM files, as a hospital's PACS exports it, read as a dataset (layout and dataset ``dicom``).

Files: every file under ROOT whose bytes 128..131 are ``DICM``, whatever its name (exports often
have no extension); other files, names starting with ``.`` and DICOMDIR media directories are
ignored. Headers are read up to the pixel data, never decoding it (``stop_before_pixels``), with a
progress bar. Kept: chest radiographs, images of modality CR, DX, DR or RG whose BodyPartExamined
names the chest as :mod:`.body_parts` decides (CHEST, THORAX, PORT CHEST, CHEST_PA, ..., or a
site's ``--body-part`` words), or is absent while a description names it. Skipped with the reason:
other modalities and body parts, raw detector images (PresentationIntentType FOR PROCESSING),
secondary captures other than digitized film (report pages, screenshots), objects without pixel rows
(reports, key objects), files without PatientID or StudyInstanceUID, unreadable or truncated
headers, a second copy of an instance, a study whose files name two patients. ``ImageTree.notes``
counts the kept images per BodyPartExamined value.

Ids: a subject is a PatientID, a study a StudyInstanceUID; each becomes an integer in
[1, 2**53) (exact as float64, within the store's int64) by HMAC-SHA256 under the id key
(``--id-key``, default :data:`DEFAULT_ID_KEY`). ``image_id`` is 16 hex digits of the keyed hash of
the SOPInstanceUID (of the path for a file without one). The default key is public: anyone holding
a store and a list of PatientIDs can recompute their ids, so a store that leaves the hospital needs
a secret key. Raw PatientIDs, UIDs, accession numbers, names and dates never leave this module;
only ``--id-map FILE`` writes the raw-to-id table, to a file outside the store. Paths can name
patients too, so the tree is marked ``private_paths``: skipped.csv names files by image_id alone
(the id map has their paths).

Views: ViewPosition (LAT becomes LATERAL), else the SNOMED code or meaning of ViewCodeSequence,
else UNKNOWN. Splits: ``--split-file`` (CSV: PatientID or StudyInstanceUID, split) where it says;
else the split given to the patient's other studies; else by hash of the subject id (validate
:data:`MANIFEST_VALIDATE_SHARE`, test :data:`MANIFEST_TEST_SHARE`). Labels are optional:
``--labels`` (CSV keyed by StudyInstanceUID or AccessionNumber, every other column a label with 1 /
0 / -1 / blank); without them the store serves pretraining only.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from tqdm import tqdm

from ..fileio import atomic_path
from .body_parts import DESCRIPTION_KEYWORDS, ChestRule
from .decode import DICOM_MAGIC, DICOM_MAGIC_OFFSET, quiet_pydicom
from .manifest import SPLIT_NAMES, complete_splits
from .tree import (
    DataError,
    ImageTree,
    check_patient_disjoint,
    first_row_labels,
    parse_label_values,
    read_csv_text,
    skip_table,
    sort_images,
)

DATASET = "dicom"
DEFAULT_ID_KEY = "raddiffusion-dicom-ids"
"""The documented default of ``--id-key``: public, so ids made with it are reproducible by anyone."""
ID_SPACE = 2**53 - 1
IMAGE_ID_HEX = 16
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG")
"""Projection radiography as sites label it (DR and RG: DX's names at some sites; never MG, mammography)."""
FOR_PROCESSING = "FOR PROCESSING"
"""PresentationIntentType of raw detector data, which no one reads; its FOR PRESENTATION image is the radiograph."""
FOR_PROCESSING_CLASSES = ("1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.2.1",
                          "1.2.840.10008.5.1.4.1.1.1.3.1")
"""The DX, mammography and intra-oral "For Processing" SOP classes."""
SECONDARY_CAPTURE_CLASSES = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                             "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4")
DIGITIZED_FILM = "DF"
"""The ConversionType of a secondary capture that is a radiograph (a scanned film); any other is a page or a screen."""
NO_BODY_PART = "absent (a description names the chest)"
"""How the kept-images note counts images kept without BodyPartExamined."""
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
"""The SOP class of DICOMDIR files."""
DETECT_FILES = 64
"""Files looked at (in walking order) to recognise a folder of DICOM files."""
MAX_VALUE_CHARS = 16
UNKNOWN_VIEW = "UNKNOWN"
VIEW_POSITIONS = {"LAT": "LATERAL"}
VIEW_CODES = {  # SNOMED CT and SNOMED-RT codes of DICOM CID 4010 (DX View)
    "272479007": "PA", "R-10214": "PA", "399348003": "AP", "R-10206": "AP",
    "399173006": "LL", "R-10236": "LL", "399198007": "RL", "R-10232": "RL", "49370004": "LATERAL",
}
VIEW_MEANINGS = {"postero-anterior": "PA", "antero-posterior": "AP", "left lateral": "LL", "right lateral": "RL",
                 "lateral": "LATERAL"}
PATIENT, STUDY, ACCESSION, INSTANCE = "PatientID", "StudyInstanceUID", "AccessionNumber", "SOPInstanceUID"
HEADER_TAGS = [PATIENT, STUDY, ACCESSION, INSTANCE, "SOPClassUID", "Modality", "BodyPartExamined", "ViewPosition",
               "ViewCodeSequence", "Rows", "Columns", "PresentationIntentType", "ConversionType", *DESCRIPTION_KEYWORDS]
"""The only elements parsed: ids, what decides keeping a file, and the view."""
SPLIT_COLUMN = "split"
ID_MAP_COLUMNS = ["path", "image_id", "subject_id", "study_id", PATIENT, STUDY, ACCESSION, INSTANCE, "reason"]

__all__ = ["DATASET", "DEFAULT_ID_KEY", "ExportOptions", "check_id_map", "is_dicom_export", "read_dicom_export"]


@dataclass(frozen=True)
class ExportOptions:
    """How a DICOM export is read: the id key, the optional id map, labels and split files, and a site's own
    BodyPartExamined words for the chest."""

    id_key: str = DEFAULT_ID_KEY
    id_map: Path | None = None
    labels: Path | None = None
    split_file: Path | None = None
    body_parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Header:
    """What one DICOM file says: raw identifiers (never written but to the id map) and its view."""

    path: str
    patient: str = ""
    study: str = ""
    accession: str = ""
    instance: str = ""
    view: str = UNKNOWN_VIEW
    body_part: str = ""  # BodyPartExamined as written (at most MAX_VALUE_CHARS), for the kept-images note
    reason: str = ""  # why the file is skipped; "" = a chest radiograph


def is_dicom_export(root: str | Path) -> bool:
    """Whether any of the first :data:`DETECT_FILES` files under ``root`` is a DICOM file."""
    for count, relative in enumerate(_walk(Path(root))):
        if count >= DETECT_FILES:
            return False
        if _has_dicom_magic(Path(root) / relative):
            return True
    return False


def check_id_map(id_map: str | Path, store: str | Path) -> None:
    """Refuse an id map inside ``store``: the store must never hold raw identifiers."""
    if Path(id_map).resolve().is_relative_to(Path(store).resolve()):
        raise DataError(f"{id_map}: the id map holds raw patient identifiers; write it outside the store {store}")


def read_dicom_export(root: str | Path, options: ExportOptions | None = None, progress: bool = False) -> ImageTree:
    """List the chest radiographs of a folder of DICOM files with keyed-hash ids, views, splits and labels."""
    root, options = Path(root), options or ExportOptions()
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    if not options.id_key:
        raise ValueError("--id-key must not be empty")
    rule = ChestRule(options.body_parts)
    files = list(_walk(root))
    bar = tqdm(files, unit="file", desc="read headers", disable=not progress, dynamic_ncols=True)
    headers = [h for h in (_read_header(root, relative, rule) for relative in bar) if h is not None]
    frame = pd.DataFrame([asdict(h) for h in headers], columns=[f.name for f in fields(_Header)])
    table = _checked(_with_ids(frame, options.id_key.encode()))
    if options.id_map is not None:
        _write_id_map(Path(options.id_map), table)
    usable = table["reason"].eq("")
    if not usable.any():
        first = f" (first: {table['reason'].iloc[0]})" if len(table) else ""
        raise DataError(f"{root}: no chest radiograph ({' / '.join(RADIOGRAPH_MODALITIES)}) among {len(table)} DICOM "
                        f"files{first}")
    images = table[usable].copy()
    given = _given_splits(options.split_file, images) if options.split_file else pd.Series("", index=images.index)
    images["split"], split_source = complete_splits(images["subject_id"], given, _name(options.split_file))
    check_patient_disjoint(images)
    label_names, labels = _labels(options.labels, images) if options.labels else ((), _no_labels())
    skipped = skip_table(zip(table["image_id"][~usable], [""] * int((~usable).sum()), table["reason"][~usable]))
    return ImageTree(root, DATASET, label_names, sort_images(images), labels, "dicom",
                     f"{split_source}; subjects and studies by keyed hash", skipped, private_paths=True,
                     notes=(_kept_by_body_part(images["body_part"]),))


def _walk(root: Path):
    """Paths relative to ``root`` (POSIX) of its files, in sorted order, hidden names left out."""
    for folder, folders, names in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        base = Path(folder).relative_to(root)
        for name in sorted(n for n in names if not n.startswith(".")):
            yield (base / name).as_posix()


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            file.seek(DICOM_MAGIC_OFFSET)
            return file.read(len(DICOM_MAGIC)) == DICOM_MAGIC
    except OSError:
        return False


def _read_header(root: Path, relative: str, rule: ChestRule) -> _Header | None:
    """The header of one file; None for a file that is not DICOM or is a DICOMDIR."""
    path = root / relative
    try:
        with open(path, "rb") as file:
            file.seek(DICOM_MAGIC_OFFSET)
            if file.read(len(DICOM_MAGIC)) != DICOM_MAGIC:
                return None
            file.seek(0)
            with quiet_pydicom():  # values are parsed (and checked, with warnings) when read: all inside
                dataset = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=HEADER_TAGS)
                if _text(dataset.file_meta, "MediaStorageSOPClassUID") == MEDIA_DIRECTORY:
                    return None
                return _Header(relative, _text(dataset, PATIENT), _text(dataset, STUDY), _text(dataset, ACCESSION),
                               _text(dataset, INSTANCE), _view(dataset),
                               _text(dataset, "BodyPartExamined")[:MAX_VALUE_CHARS], _skip_reason(dataset, rule))
    except OSError as error:
        return _Header(relative, reason=f"cannot read file ({error.strerror or type(error).__name__})")
    except Exception as error:  # noqa: BLE001 - any parse failure of one file skips that file
        return _Header(relative, reason=f"unreadable DICOM header ({type(error).__name__})")


def _text(dataset: Dataset, keyword: str) -> str:
    return str(dataset.get(keyword) or "").strip()


def _skip_reason(dataset: Dataset, rule: ChestRule) -> str:
    """Why a file is not a chest radiograph to keep ("" when it is one); the reason names the value that decided."""
    if "SOPClassUID" not in dataset:
        return "damaged or truncated DICOM header (no SOPClassUID)"
    if "Rows" not in dataset or "Columns" not in dataset:
        return f"not an image ({_sop_class(dataset)})"
    modality = _text(dataset, "Modality").upper()
    if modality not in RADIOGRAPH_MODALITIES:
        return f"modality {modality[:MAX_VALUE_CHARS]!r} is not {_either(RADIOGRAPH_MODALITIES)}"
    sop_class = _text(dataset, "SOPClassUID")
    conversion = _text(dataset, "ConversionType").upper()
    if sop_class in SECONDARY_CAPTURE_CLASSES and conversion != DIGITIZED_FILM:
        return f"a secondary capture (ConversionType {conversion[:MAX_VALUE_CHARS]!r}), not an acquired radiograph"
    intent = _text(dataset, "PresentationIntentType").upper()
    if intent == FOR_PROCESSING or sop_class in FOR_PROCESSING_CLASSES:
        return f"raw detector data (PresentationIntentType {FOR_PROCESSING!r}), not an image for reading"
    body_part = _text(dataset, "BodyPartExamined")
    if body_part and not rule.is_chest(body_part):
        return f"body part {body_part[:MAX_VALUE_CHARS]!r} is not the chest (a site's own word: --body-part)"
    if not body_part and not rule.describes_chest(_text(dataset, k) for k in DESCRIPTION_KEYWORDS):
        return "no BodyPartExamined, and no study, series or protocol description names the chest"
    if not _text(dataset, PATIENT):
        return "no PatientID: its patient could not be kept within one split"
    if not _text(dataset, STUDY):
        return "no StudyInstanceUID: its study is unknown"
    return ""


def _either(values: tuple[str, ...]) -> str:
    return f"{', '.join(values[:-1])} or {values[-1]}"


def _kept_by_body_part(body_parts: pd.Series) -> str:
    """The note that counts kept images per BodyPartExamined value, most frequent first (absent last)."""
    counts = body_parts.value_counts(sort=False)
    ordered = sorted(counts.items(), key=lambda item: (not item[0], -item[1], item[0]))  # absent last
    parts = [f"{repr(value) if value else NO_BODY_PART} {count}" for value, count in ordered]
    return f"kept {len(body_parts)} chest radiographs by BodyPartExamined: {', '.join(parts)}"


def _sop_class(dataset: Dataset) -> str:
    """The SOP class by its standard name (a non-standard UID is not shown)."""
    text = _text(dataset, "SOPClassUID")
    name = UID(text).name if text else ""
    return name if name and name != text else "no standard SOP class"


def _view(dataset: Dataset) -> str:
    position = _text(dataset, "ViewPosition").upper()[:MAX_VALUE_CHARS]
    if position:
        return VIEW_POSITIONS.get(position, position)
    for item in dataset.get("ViewCodeSequence") or []:
        view = VIEW_CODES.get(_text(item, "CodeValue")) or VIEW_MEANINGS.get(_text(item, "CodeMeaning").lower())
        if view:
            return view
    return UNKNOWN_VIEW


def _keyed_hash(key: bytes, kind: str, value: str) -> bytes:
    return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()


def _keyed_id(key: bytes, kind: str, value: str) -> int:
    """An integer in [1, 2**53) for ``value`` of ``kind`` (subject or study) under ``key``."""
    return int.from_bytes(_keyed_hash(key, kind, value)[:8], "big") % ID_SPACE + 1


def _with_ids(table: pd.DataFrame, key: bytes) -> pd.DataFrame:
    """The header table with subject, study and image ids added."""
    table = table.copy()
    table["subject_id"] = [_keyed_id(key, "subject", p) if p else 0 for p in table["patient"]]
    table["study_id"] = [_keyed_id(key, "study", s) if s else 0 for s in table["study"]]
    table["image_id"] = [_keyed_hash(key, "image" if i else "file", i or p).hex()[:IMAGE_ID_HEX]
                         for i, p in zip(table["instance"], table["path"])]
    return table.astype({"subject_id": np.int64, "study_id": np.int64})


def _checked(table: pd.DataFrame) -> pd.DataFrame:
    """Skip second copies of an instance and studies naming two patients; fail on an id collision."""
    usable = table["reason"].eq("")
    copies = usable & table["instance"].ne("") & table.duplicated("instance")
    table.loc[copies, "reason"] = "a copy of another file (same SOPInstanceUID)"
    usable &= ~copies
    patients = table[usable].groupby("study")["patient"].nunique()
    mixed = usable & table["study"].isin(patients.index[patients > 1])
    table.loc[mixed, "reason"] = "its study (StudyInstanceUID) has files of several PatientIDs"
    for column, raw in (("subject_id", "patient"), ("study_id", "study")):
        named = table[table[raw].ne("")]
        if (named.groupby(column)[raw].nunique() > 1).any():
            raise DataError(f"two different {raw} values share one {column} under this id key; choose another --id-key")
    return table


def _write_id_map(path: Path, table: pd.DataFrame) -> None:
    """The raw-to-id table (every DICOM file, skipped or not), written atomically."""
    columns = {"patient": PATIENT, "study": STUDY, "accession": ACCESSION, "instance": INSTANCE}
    frame = table.rename(columns=columns)
    for column in ("subject_id", "study_id"):
        frame[column] = frame[column].astype(str).where(frame[column] > 0, "")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame[ID_MAP_COLUMNS].to_csv(tmp, index=False)


def _name(path: Path | None) -> str:
    return Path(path).name if path else ""


def _key_column(path: Path, frame: pd.DataFrame, keys: tuple[str, ...]) -> str:
    found = [k for k in keys if k in frame.columns]
    if len(found) != 1:
        raise DataError(f"{path}: needs exactly one key column, {' or '.join(keys)} (found {len(found)})")
    return found[0]


def _rows_by_key(path: Path, frame: pd.DataFrame, key: str) -> dict[str, int]:
    """Row position of each key value; a blank or repeated key fails naming the row (never the value)."""
    rows: dict[str, int] = {}
    for position, value in enumerate(frame[key].str.strip()):
        if not value:
            raise DataError(f"{path}: row {position + 2}: blank {key}")
        if value in rows:
            raise DataError(f"{path}: row {position + 2}: {key} listed twice (first at row {rows[value] + 2})")
        rows[value] = position
    return rows


def _given_splits(path: Path, images: pd.DataFrame) -> pd.Series:
    """Each image's split from the split file ("" where the file does not list it)."""
    frame = read_csv_text(path)
    key = _key_column(path, frame, (PATIENT, STUDY))
    if SPLIT_COLUMN not in frame.columns:
        raise DataError(f"{path}: missing column {SPLIT_COLUMN!r}")
    rows = _rows_by_key(path, frame, key)
    splits = frame[SPLIT_COLUMN].str.strip().str.lower()
    bad = ~splits.isin(list(SPLIT_NAMES))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: row {row + 2}: split {frame[SPLIT_COLUMN].iloc[row]!r} is not train, validate or test")
    by_key = {value: SPLIT_NAMES[splits.iloc[row]] for value, row in rows.items()}
    given = images["patient" if key == PATIENT else "study"].map(by_key)
    if given.isna().all():
        raise DataError(f"{path}: no row names a {'patient' if key == PATIENT else 'study'} of the export")
    return given.fillna("")


def _no_labels() -> pd.DataFrame:
    return first_row_labels([], [], np.zeros((0, 0), np.float32), ())


def _labels(path: Path, images: pd.DataFrame) -> tuple[tuple[str, ...], pd.DataFrame]:
    """Label names and the labels table of the studies the labels CSV names (by study UID or accession)."""
    frame = read_csv_text(path)
    key = _key_column(path, frame, (STUDY, ACCESSION))
    names = tuple(c for c in frame.columns if c != key)
    if not names or any(str(c).startswith("Unnamed:") for c in names):
        raise DataError(f"{path}: every column but {key} must be a named label column (and there must be one)")
    raw, reasons = parse_label_values(frame, names)
    if reasons.ne("").any():
        row = int(np.flatnonzero(reasons.ne("").to_numpy())[0])
        raise DataError(f"{path}: row {row + 2}: {reasons.iloc[row]}")
    rows = _rows_by_key(path, frame, key)
    position = images["study" if key == STUDY else "accession"].map(rows)
    found = position.notna().to_numpy()
    if not found.any():
        raise DataError(f"{path}: no row names a study of the export (compared by {key})")
    matched = position[found].astype(np.int64).to_numpy()
    return names, first_row_labels(images["study_id"][found], images["subject_id"][found], raw[matched], names)
