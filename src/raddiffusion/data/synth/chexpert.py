"""The CheXpert-v1.0-small layout, as the small release and the later test release ship it::

    CheXpert-v1.0-small/train.csv  valid.csv  test_labels.csv
    CheXpert-v1.0-small/{train,valid,test}/patient00001/study1/view1_frontal.jpg

A subject keeps the synth's MIMIC folder split (p10-p17 train, p18 valid, p19 test). Patients are
numbered patient00001... in subject order, studies study1... in date order and views view1... within
their study (the frontal view first); every study keeps all its views and its labels repeat on each
view's row. ``train.csv`` and ``valid.csv`` have the release header and a ``Path`` that starts with
``CheXpert-v1.0-small/``; ``test_labels.csv`` has ``Path`` (relative to the dataset folder) and the 14
labels. train.csv keeps the raw values (1.0, 0.0, -1.0, blank); valid.csv and test_labels.csv are
radiologist-style, 0.0 / 1.0 only: uncertain becomes 1.0 (U-ones) and blank 0.0. Sex and Age are
synthetic. Images are 8-bit grey JPEGs scaled to a short side of 320 pixels (the small release is
about 390 x 320).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..labels import CHEXPERT_LABELS
from .label_sampling import is_present
from .output import SynthSummary, atomic_write, csv_text, image_bytes, label_cell
from .subjects import Study, SubjectPlan, View, run_subjects, subject_studies

DATASET_DIR = "CheXpert-v1.0-small"
OWN_DIR = DATASET_DIR  # what must not exist yet under OUT
IMAGE_FORMAT = "jpg"
SPLIT_DIRS = {"train": "train", "validate": "valid", "test": "test"}
CSV_FILES = {"train": "train.csv", "validate": "valid.csv", "test": "test_labels.csv"}
LABEL_COLUMNS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
CSV_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABEL_COLUMNS)
TEST_COLUMNS = ("Path", *LABEL_COLUMNS)
SEX = {"F": "Female", "M": "Male"}
SHORT_SIDE = 320
RESAMPLE = Image.Resampling.LANCZOS
_LABEL_ORDER = tuple(CHEXPERT_LABELS.index(name) for name in LABEL_COLUMNS)


@dataclass(frozen=True)
class _SubjectRows:
    split: str
    studies: int
    rows: list[tuple]


def write(out: Path, plans: list[SubjectPlan], workers: int, progress: bool) -> SynthSummary:
    """Write the subjects' images, then ``train.csv``, ``valid.csv`` and ``test_labels.csv``."""
    root = out / DATASET_DIR
    records = list(run_subjects(functools.partial(_write_subject, root=root), plans, workers, progress))
    for split, name in CSV_FILES.items():
        columns = TEST_COLUMNS if split == "test" else CSV_COLUMNS
        rows = [row for record in records if record.split == split for row in record.rows]
        atomic_write(root / name, csv_text(columns, rows).encode())
    studies = sum(record.studies for record in records)
    return SynthSummary(subjects=len(plans), studies=studies, images=sum(len(r.rows) for r in records),
                        labelled_studies=studies, out=out, layout="chexpert", image_format=IMAGE_FORMAT)


def _write_subject(plan: SubjectPlan, root: Path) -> _SubjectRows:
    rows = []
    for study in subject_studies(plan):
        for number, (view, image) in enumerate(zip(study.views, study.images), start=1):
            path = (f"{SPLIT_DIRS[plan.split]}/patient{plan.patient_number:05d}/study{study.number + 1}/"
                    f"view{number}_{'frontal' if view.frontal else 'lateral'}.{IMAGE_FORMAT}")
            picture = image.picture()
            small = picture.resize(_small_size(*picture.size), RESAMPLE)
            atomic_write(root / path, image_bytes(small, IMAGE_FORMAT))
            rows.append(_row(plan.split, path, study, view))
    return _SubjectRows(plan.split, len(plan.study_ids), rows)


def _small_size(width: int, height: int) -> tuple[int, int]:
    scale = SHORT_SIDE / min(width, height)
    return round(width * scale), round(height * scale)


def _row(split: str, path: str, study: Study, view: View) -> tuple:
    """One CSV row; the labels in release column order."""
    values = [study.labels[i] for i in _LABEL_ORDER]
    if split == "train":
        cells = [label_cell(value) for value in values]
    else:
        cells = [label_cell(float(is_present(value))) for value in values]
    if split == "test":
        return (path, *cells)
    ap_pa = view.position if view.frontal else ""
    frontal_lateral = "Frontal" if view.frontal else "Lateral"
    return (f"{DATASET_DIR}/{path}", SEX[study.sex], study.age, frontal_lateral, ap_pa, *cells)
