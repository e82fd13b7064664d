"""A hospital's DICOM export, as a PACS or a CD burner writes it: no CSV, nested folders, no file extensions::

    OUT/DICOMDIR                                the media directory (pydicom's FileSet)
    OUT/PT000000/ST000000/SE000000/IM000000     one file per image, SR000000 for a report object
    OUT/RESENT/IM000000                         a second copy of the first view, sent again (not in DICOMDIR)
    OUT/README.TXT                              a text file, as exports carry
    OUT/labels.csv                              labels keyed by AccessionNumber (give it with --labels)

Each chest view is a CR or DX file with the variety of :mod:`.dicom` (photometric interpretation,
bit depth, VOI, modality). A subject's first view is in JPEG Lossless SV1, the usual syntax of CR /
DX archives; its other views take the other syntaxes of :data:`OTHER_TRANSFERS` in turn, subject
``i`` starting at entry ``i``, so a few subjects use them all. BodyPartExamined takes the spellings
of :data:`BODY_PART_VARIANTS` in the same way, subject ``i`` starting at entry ``2i`` (four subjects
use all eight), one of them absent (the study description names the chest) and some not valid DICOM
(lower case), as real files are.
DX files name their view by ViewCodeSequence with an empty ViewPosition, and a subject's first DX
view has a FOR PROCESSING twin (the raw detector image, a series of its own). Headers carry
hospital-style identifiers (PatientID ``MRN-…``, AccessionNumber ``ACC-…``, InstitutionName, names
and birth dates), none of which may reach a store. The first subject also has what a reader must
skip: a CT image, a DX of the hand, a basic text SR (no pixels) and a secondary capture of a dose
report page labelled DX / CHEST. ``labels.csv`` holds the CheXpert labels of the labelled studies,
as a hospital might extract them from its reports; it is not part of the export.
"""
from __future__ import annotations

import datetime as dt
import io
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian

from ..labels import CHEXPERT_LABELS
from .dicom import (
    DX_SOP_CLASS,
    TRANSFERS,
    DicomInfo,
    demo_uid,
    dicom_bytes,
    dicom_dataset,
    synthetic_patient_birth_date,
    synthetic_patient_name,
)
from .output import SynthSummary, atomic_write, csv_text, label_cell
from .render import Radiograph
from .subjects import DICOM_STREAM, FOR_PROCESSING_STREAM, Study, SubjectPlan, View, run_subjects, subject_studies

DICOMDIR = "DICOMDIR"
OWN_DIR = DICOMDIR  # what must not exist yet under OUT
IMAGE_FORMAT = "dicom"
README = "README.TXT"
README_TEXT = "Demo export written by raddiffusion synth: synthetic radiographs, no real patient.\n"
LABELS_CSV = "labels.csv"
ACCESSION_COLUMN = "AccessionNumber"
FILESET_ID = "RADDIFFUSION"
FIRST_VIEW_TRANSFER = "jpeg-lossless"
OTHER_TRANSFERS = tuple(t for t in TRANSFERS if t != FIRST_VIEW_TRANSFER)
PATIENT_ID_PREFIX = "MRN-"
ACCESSION_PREFIX = "ACC-"
INSTITUTION = "Demo General Hospital"
REFERRER = "DEMO^REFERRER"
VIEW_CODES = {  # SNOMED CT codes of DICOM CID 4010 (DX View)
    "PA": ("272479007", "postero-anterior"),
    "AP": ("399348003", "antero-posterior"),
    "LL": ("399173006", "left lateral"),
    "LATERAL": ("49370004", "lateral"),
}
SNOMED = "SCT"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"
REPORT_TITLE = ("18748-4", "LN", "Diagnostic imaging report")
OTHER_IMAGE_SHAPE = (64, 64)
OTHER_IMAGE_GREY = 0.5
REPORT_SERIES_NUMBER = 99
OTHER_STUDY_ID = 0
"""Study number of the first subject's non-chest study (real study ids are far larger)."""
OTHER_IMAGES = (("CT", CT_IMAGE_STORAGE, "HEAD"), ("DX", DX_SOP_CLASS, "HAND"))
"""(modality, SOP class, body part) of the images a reader must skip."""
BODY_PART_VARIANTS = ("CHEST", "THORAX", "PORT CHEST", "CHEST_PA", "chest", None, "CHEST_LAT", "TORAX")
"""BodyPartExamined of the chest views, as sites write it (None: absent)."""
BODY_PART_STRIDE = 2
"""Subject ``i``'s first view takes variant ``BODY_PART_STRIDE * i``."""
DX_FOR_PROCESSING_CLASS = "1.2.840.10008.5.1.4.1.1.1.1.1"
FOR_PROCESSING_SERIES_OFFSET = 50
"""A raw twin's series number is its view's plus this."""
RAW_ATTENUATION = 3.0
"""Detector signal exp(-k·display): bright where little attenuates, the look of unprocessed data."""
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
DOSE_PAGE_SERIES_NUMBER = 98
DOSE_PAGE_LINE_EVERY = 6
"""Every this many pixel rows of the dose report page, a dark line of text."""
DOSE_PAGE_INK = 0.1
RESENT_FOLDER = "RESENT"


@dataclass
class _SubjectFiles:
    files: list[bytes] = field(default_factory=list)  # the chest views
    raw: list[bytes] = field(default_factory=list)  # FOR PROCESSING twins
    labels: list[tuple] = field(default_factory=list)
    studies: int = 0
    first_study: tuple[int, dt.date, float, str] | None = None  # id, date, time, sex


def write(out: Path, plans: list[SubjectPlan], workers: int, progress: bool) -> SynthSummary:
    """Write the export: every subject's views, the files to skip, DICOMDIR, a text file and labels.csv."""
    records = list(run_subjects(_subject_files, plans, workers, progress))
    fileset = FileSet()
    fileset.ID, fileset.UID = FILESET_ID, demo_uid(plans[0].seed, "fileset")
    for data in [d for r in records for d in (*r.files, *r.raw)] + _files_to_skip(plans[0], records[0].first_study):
        fileset.add(pydicom.dcmread(io.BytesIO(data)))
    atomic_write(out / RESENT_FOLDER / "IM000000", records[0].files[0])
    _write_fileset(fileset, out)
    atomic_write(out / README, README_TEXT.encode())
    labels = [row for r in records for row in r.labels]
    atomic_write(out / LABELS_CSV, csv_text((ACCESSION_COLUMN, *CHEXPERT_LABELS), labels).encode())
    return SynthSummary(subjects=len(plans), studies=sum(r.studies for r in records),
                        images=sum(len(r.files) for r in records), labelled_studies=len(labels), out=out,
                        layout="dicom-export", image_format=IMAGE_FORMAT)


def accession_number(study_id: int) -> str:
    """The AccessionNumber of a demo study."""
    return f"{ACCESSION_PREFIX}{study_id}"


def _subject_files(plan: SubjectPlan) -> _SubjectFiles:
    rng = plan.rng(DICOM_STREAM)
    record = _SubjectFiles()
    for study in subject_studies(plan):
        record.studies += 1
        record.first_study = record.first_study or _study_key(study)
        for series, (view, image) in enumerate(zip(study.views, study.images)):
            info = DicomInfo(plan.subject_id, study.study_id, view, series, study.date, study.time, plan.seed,
                             study.sex)
            number = len(record.files)
            dataset = dicom_dataset(image, info, rng, _transfer(plan.index, number))
            _hospital_header(dataset, plan, study.study_id)
            _body_part(dataset, BODY_PART_VARIANTS[(BODY_PART_STRIDE * plan.index + number) % len(BODY_PART_VARIANTS)])
            if dataset.Modality == "DX":
                _view_by_code(dataset, view)
                if not record.raw:
                    record.raw.append(dicom_bytes(_for_processing_twin(image, info, dataset, plan)))
            record.files.append(dicom_bytes(dataset))
        if study.labelled:
            record.labels.append((accession_number(study.study_id), *map(label_cell, study.labels)))
    return record


def _transfer(subject_index: int, view_number: int) -> str:
    """The transfer syntax of a subject's ``view_number``-th view (from 0)."""
    if view_number == 0:
        return FIRST_VIEW_TRANSFER
    return OTHER_TRANSFERS[(subject_index + view_number - 1) % len(OTHER_TRANSFERS)]


def _study_key(study: Study) -> tuple[int, dt.date, float, str]:
    return study.study_id, study.date, study.time, study.sex


def _hospital_header(dataset: Dataset, plan: SubjectPlan, study_id: int) -> None:
    """The identifiers a hospital's files carry (all must stay out of every output)."""
    dataset.PatientID = f"{PATIENT_ID_PREFIX}{plan.subject_id}"
    dataset.AccessionNumber = accession_number(study_id)
    dataset.InstitutionName = INSTITUTION
    dataset.ReferringPhysicianName = REFERRER


def _body_part(dataset: Dataset, value: str | None) -> None:
    """Set BodyPartExamined to ``value`` as a site writes it, lower case too (None: remove it)."""
    del dataset.BodyPartExamined  # an element keeps the validation mode it was made with: make a new one
    if value is not None:
        with disable_value_validation():  # lower case is no valid CS value: written on purpose
            dataset.BodyPartExamined = value


def _for_processing_twin(image: Radiograph, info: DicomInfo, presented: Dataset, plan: SubjectPlan) -> Dataset:
    """The raw detector image of a DX view: same study, its own series and instance, FOR PROCESSING."""
    raw = Radiograph(np.exp(-RAW_ATTENUATION * image.display))
    twin_info = replace(info, view=View(f"{info.view.dicom_id}-raw", info.view.position),
                        series=info.series + FOR_PROCESSING_SERIES_OFFSET)
    twin = dicom_dataset(raw, twin_info, plan.rng(FOR_PROCESSING_STREAM), "explicit")
    twin.SOPClassUID = twin.file_meta.MediaStorageSOPClassUID = DX_FOR_PROCESSING_CLASS
    twin.Modality, twin.PresentationIntentType = "DX", "FOR PROCESSING"
    twin.ImageType = ["ORIGINAL", "PRIMARY"]
    _hospital_header(twin, plan, info.study_id)
    _body_part(twin, presented.get("BodyPartExamined"))
    _view_by_code(twin, info.view)
    return twin


def _view_by_code(dataset: Dataset, view: View) -> None:
    code = Dataset()
    code.CodeValue, code.CodeMeaning = VIEW_CODES[view.position]
    code.CodingSchemeDesignator = SNOMED
    dataset.ViewCodeSequence = [code]
    dataset.ViewPosition = ""


def _files_to_skip(plan: SubjectPlan, first_study: tuple[int, dt.date, float, str]) -> list[bytes]:
    """The first subject's CT and hand DX (another study), and a text SR and a dose report page in its first chest
    study."""
    study_id, date, time, sex = first_study
    rng = plan.rng(DICOM_STREAM)
    files = []
    for series, (modality, sop_class, body_part) in enumerate(OTHER_IMAGES):
        info = DicomInfo(plan.subject_id, OTHER_STUDY_ID, View(f"other-{series}", "PA"), series, date, time,
                         plan.seed, sex)
        grey = Radiograph(np.full(OTHER_IMAGE_SHAPE, OTHER_IMAGE_GREY, np.float32))
        dataset = dicom_dataset(grey, info, rng, "explicit")
        _hospital_header(dataset, plan, OTHER_STUDY_ID)
        dataset.Modality, dataset.BodyPartExamined = modality, body_part
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = sop_class
        files.append(dicom_bytes(dataset))
    return files + [dicom_bytes(_text_report(plan, study_id, date, time)),
                    dicom_bytes(_dose_page(plan, first_study, rng))]


def _dose_page(plan: SubjectPlan, first_study: tuple[int, dt.date, float, str], rng: np.random.Generator) -> Dataset:
    """A secondary capture of a dose report page, labelled as the modality labels its images (DX, CHEST)."""
    study_id, date, time, sex = first_study
    page = np.ones(OTHER_IMAGE_SHAPE, np.float32)
    page[::DOSE_PAGE_LINE_EVERY] = DOSE_PAGE_INK
    info = DicomInfo(plan.subject_id, study_id, View("dose-page", "PA"), DOSE_PAGE_SERIES_NUMBER, date, time,
                     plan.seed, sex)
    dataset = dicom_dataset(Radiograph(page), info, rng, "explicit")
    _hospital_header(dataset, plan, study_id)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE_STORAGE
    dataset.Modality, dataset.BodyPartExamined, dataset.ConversionType = "DX", "CHEST", "WSD"
    dataset.ImageType = ["DERIVED", "SECONDARY"]
    return dataset


def _text_report(plan: SubjectPlan, study_id: int, date: dt.date, time: float) -> Dataset:
    """A basic text SR of a study: a DICOM file without pixel data."""
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR_STORAGE
    report.SOPInstanceUID = report.file_meta.MediaStorageSOPInstanceUID = demo_uid(plan.seed, study_id, "report")
    report.StudyInstanceUID = demo_uid(plan.seed, study_id)
    report.SeriesInstanceUID = demo_uid(plan.seed, study_id, "report-series")
    report.PatientName = synthetic_patient_name(plan.subject_id)
    report.PatientBirthDate = synthetic_patient_birth_date(plan.subject_id)
    report.StudyID, report.SeriesNumber, report.InstanceNumber = str(study_id), REPORT_SERIES_NUMBER, 1
    report.StudyDate = report.ContentDate = date.strftime("%Y%m%d")
    report.StudyTime = report.ContentTime = f"{time:013.6f}"
    report.Modality, report.ValueType = "SR", "CONTAINER"
    report.CompletionFlag, report.VerificationFlag = "COMPLETE", "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = REPORT_TITLE
    report.ConceptNameCodeSequence = [title]
    _hospital_header(report, plan, study_id)
    return report


def _write_fileset(fileset: FileSet, out: Path) -> None:
    """Write the file-set beside OUT, then move its folders in and DICOMDIR last (the completion mark)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".fileset-") as staging:
        fileset.write(staging)
        names = sorted(os.listdir(staging), key=lambda name: name == DICOMDIR)
        for name in names:
            os.replace(Path(staging) / name, out / name)
