"""The MIMIC-CXR layout: ``files/p1X/p<subject>/s<study>/<dicom_id>.{jpg,dcm}``, one report per
study (``s<study>.txt``) and the three gzipped ``mimic-cxr-2.0.0-*.csv.gz`` files.

About 5 % of the studies have no CheXpert row, as in the real distribution.
"""
from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..labels import CHEXPERT_LABELS
from ..mimic import CHEXPERT_CSV, METADATA_CSV, SPLIT_CSV
from .dicom import DicomInfo, write_dicom
from .output import SynthSummary, atomic_write, csv_text, image_bytes, label_cell
from .render import Radiograph
from .report import report
from .subjects import DICOM_STREAM, PROCEDURE, Study, SubjectPlan, View, run_subjects, subject_studies

FORMATS = ("dicom", "jpg")
IMAGE_SUFFIX = {"dicom": ".dcm", "jpg": ".jpg"}
FILES_DIR = "files"
OWN_DIR = FILES_DIR  # what must not exist yet under OUT
METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
CHEXPERT_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


@dataclass
class _SubjectRows:
    metadata: list[tuple] = field(default_factory=list)
    split: list[tuple] = field(default_factory=list)
    chexpert: list[tuple] = field(default_factory=list)
    unlabelled: int = 0


def write(out: Path, plans: list[SubjectPlan], fmt: str, workers: int, progress: bool) -> SynthSummary:
    """Write the subjects' images (``fmt`` "jpg" or "dicom") and reports, then the three CSVs."""
    worker = functools.partial(_write_subject, out=out, fmt=fmt)
    records = list(run_subjects(worker, plans, workers, progress))
    _write_csvs(out, records)
    labelled = sum(len(r.chexpert) for r in records)
    return SynthSummary(
        subjects=len(plans),
        studies=labelled + sum(r.unlabelled for r in records),
        images=sum(len(r.metadata) for r in records),
        labelled_studies=labelled,
        out=out,
        layout="mimic",
        image_format=fmt,
    )


def _write_subject(plan: SubjectPlan, out: Path, fmt: str) -> _SubjectRows:
    dicom_rng = plan.rng(DICOM_STREAM)
    folder = out / FILES_DIR / f"p{plan.folder}" / f"p{plan.subject_id}"
    rows = _SubjectRows()
    for study in subject_studies(plan):
        for series, (view, image) in enumerate(zip(study.views, study.images)):
            path = folder / f"s{study.study_id}" / f"{view.dicom_id}{IMAGE_SUFFIX[fmt]}"
            if fmt == "jpg":
                atomic_write(path, image_bytes(image.picture(), "jpg"))
            else:
                info = DicomInfo(plan.subject_id, study.study_id, view, series, study.date, study.time,
                                 plan.seed, study.sex)
                write_dicom(path, image, info, dicom_rng)
            rows.metadata.append(_metadata_row(plan.subject_id, study, view, image))
            rows.split.append((view.dicom_id, study.study_id, plan.subject_id, plan.split))
        atomic_write(folder / f"s{study.study_id}.txt", report(study).encode())
        if study.labelled:
            rows.chexpert.append((plan.subject_id, study.study_id, *study.labels))
        else:
            rows.unlabelled += 1
    return rows


def _metadata_row(subject_id: int, study: Study, view: View, image: Radiograph) -> tuple:
    procedure = PROCEDURE[study.views[0].position]
    rows, columns = image.values.shape
    return (view.dicom_id, subject_id, study.study_id, procedure, view.position, rows, columns,
            study.date.strftime("%Y%m%d"), repr(study.time), procedure, VIEW_MEANING[view.position],
            study.orientation)


def _gzipped_csv(columns: tuple[str, ...], rows: Iterable[tuple]) -> bytes:
    return gzip.compress(csv_text(columns, rows).encode(), mtime=0)


def _write_csvs(out: Path, records: list[_SubjectRows]) -> None:
    metadata = sorted((row for r in records for row in r.metadata), key=lambda row: (row[1], row[2]))
    split = sorted((row for r in records for row in r.split), key=lambda row: (row[2], row[1]))
    chexpert = sorted(row for r in records for row in r.chexpert)
    chexpert_cells = [(s, st, *map(label_cell, values)) for s, st, *values in chexpert]
    atomic_write(out / f"{METADATA_CSV}.gz", _gzipped_csv(METADATA_COLUMNS, metadata))
    atomic_write(out / f"{SPLIT_CSV}.gz", _gzipped_csv(SPLIT_COLUMNS, split))
    atomic_write(out / f"{CHEXPERT_CSV}.gz", _gzipped_csv(CHEXPERT_COLUMNS, chexpert_cells))
