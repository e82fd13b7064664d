"""Built-in demo data: a procedurally generated MIMIC-CXR-shaped tree.

``synthesize`` writes ``files/p1X/p<subject>/s<study>/<dicom_id>.{jpg,dcm}``, one free-text report
per study and the three ``mimic-cxr-2.0.0-*.csv.gz`` files, exactly as the real distributions lay
them out, so the reading and preprocessing code runs on it unchanged. Images are smooth, upright
chest radiographs (frontal PA/AP and lateral views) whose appearance follows the study's CheXpert
labels; labels follow the real joint distribution shipped in ``chexpert_label_stats.json``.
Everything is drawn from per-subject random streams, so a seed gives byte-identical output for any
number of worker processes.
"""
from __future__ import annotations

import csv
import datetime as dt
import functools
import gzip
import io
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid
from tqdm import tqdm

from ..fileio import atomic_path
from .labels import LABELS
from .mimic import CHEXPERT_CSV, FOLDER_SPLITS, METADATA_CSV, SPLIT_CSV

__all__ = [
    "EXPECTED_IMAGES_PER_SUBJECT", "FORMATS", "SYNTHETIC_PATIENT_NAME_PREFIX", "SynthSummary",
    "synthesize", "synthetic_patient_birth_date", "synthetic_patient_name",
]

# --------------------------------------------------------------------------------------------
# Layout and formats
# --------------------------------------------------------------------------------------------
FORMATS = ("dicom", "jpg")
IMAGE_SUFFIX = {"dicom": ".dcm", "jpg": ".jpg"}
FILES_DIR = "files"
METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
CHEXPERT_COLUMNS = ("subject_id", "study_id", *LABELS)
LABEL_STATS_RESOURCE = "chexpert_label_stats.json"
JPEG_QUALITY = 90

# --------------------------------------------------------------------------------------------
# Identifiers and the folder split rule (p10-p17 train, p18 validate, p19 test)
# --------------------------------------------------------------------------------------------
FOLDER_DIGITS = tuple(FOLDER_SPLITS)
SUBJECTS_PER_FOLDER_ID_SPACE = 10**6
STUDY_ID_BASE = 5 * 10**7
STUDY_ID_SPACE = 10**7
DICOM_ID_GROUPS = 5
DICOM_ID_GROUP_HEX = 8
SYNTHETIC_PATIENT_NAME_PREFIX = "DEMO^SUBJECT"
SYNTHETIC_BIRTH_YEARS = (2040, 2110)
STUDY_YEARS = (2110, 2190)
DAYS_PER_YEAR = 365
MAX_DAYS_BETWEEN_STUDIES = 400
SECONDS_PER_DAY = 86_400
DEMO_UID_ENTROPY = "raddiffusion-demo"

# --------------------------------------------------------------------------------------------
# Study structure
# --------------------------------------------------------------------------------------------
STUDIES_PER_SUBJECT = {1: 0.6, 2: 0.3, 3: 0.1}
VIEWS_PER_STUDY = {1: 0.45, 2: 0.45, 3: 0.08, 4: 0.02}
AP_PROBABILITY_WITH_DEVICES = 0.75
AP_PROBABILITY_WITHOUT_DEVICES = 0.3
LL_PROBABILITY = 0.2
RECUMBENT_PROBABILITY_AP = 0.4
EXPECTED_IMAGES_PER_SUBJECT = (
    sum(k * p for k, p in STUDIES_PER_SUBJECT.items()) * sum(k * p for k, p in VIEWS_PER_STUDY.items())
)

# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------
NOT_MENTIONED = -9
UNLABELLED_FRACTION = 0.05
TOP_VECTOR_PROBABILITY = 0.8
NEGATIVE_MENTION_PROBABILITY = 0.12
UNCERTAIN_VISIBLE_PROBABILITY = 0.5
INVISIBLE_POSITIVE_PROBABILITY = 0.12
POSITIVE_SEVERITY = (0.15, 1.0)
UNCERTAIN_SEVERITY = (0.2, 0.55)
OPACITY_LABELS = ("Atelectasis", "Consolidation", "Edema", "Pneumonia", "Lung Lesion")
DEVICE_PROBABILITY = {"ett": 0.5, "ng": 0.5, "cvc": 0.55, "ecg": 0.6, "pacemaker": 0.12}

# --------------------------------------------------------------------------------------------
# Rendering (lengths in units of the image height; y grows downwards, x to the image right)
# --------------------------------------------------------------------------------------------
IMAGE_HEIGHT_RANGE = (496, 577)
IMAGE_WIDTH_RANGE = (448, 545)
EDGE = 0.0025
LUNG_AIR = 0.72
BONE = 0.2
METAL = 0.9
FILM_GAIN = 0.9
DISPLAY_PERCENTILES = (0.5, 99.7)
PERCENTILE_STRIDE = 4
GRAIN_PIXELS = 4
MOTTLE_CELLS = 10
MOTTLE = 0.02
AP_HEART_MAGNIFICATION = 1.08
CARDIOMEGALY_CTR_GAIN = (0.07, 0.13)
MEDIASTINUM_WIDENING = 0.7
LEAD_RADIUS = 0.013
TRACHEA_AIR = 0.3
# How much of the lung's air each finding replaces at full severity (the learnability knobs)
EDEMA_FILL = 0.45
CONSOLIDATION_FILL = 1.1
NODULE_FILL = 0.9
ATELECTASIS_FILL = 0.8
THICKENING_FILL = 1.2
EFFUSION_FILL = 1.0
LUNG_OPACITY_ONLY_STRENGTH = 0.8

# --------------------------------------------------------------------------------------------
# DICOM variety
# --------------------------------------------------------------------------------------------
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
MONOCHROME1_PROBABILITY = 0.3
BITS_STORED_CHOICES = (12, 14, 15, 16)
BITS_STORED_WEIGHTS = (0.5, 0.2, 0.15, 0.15)
VOI_MODES = ("none", "window", "rescale", "rescale+window")
VOI_MODE_WEIGHTS = (0.4, 0.3, 0.15, 0.15)
TRANSFER_CHOICES = ("explicit", "jpeg2000", "rle")
TRANSFER_WEIGHTS = (0.83, 0.12, 0.05)
DX_PROBABILITY = 0.4
RESCALE_SLOPES = (0.5, 1.0, 2.0)
RESCALE_INTERCEPTS = (0.0, -1024.0)
WINDOW_LOW_FRACTION = (0.02, 0.12)
WINDOW_HIGH_FRACTION = (0.85, 0.98)
DETECTOR_HEIGHT_MM = 430.0

RENDER_STREAM = 0
DICOM_STREAM = 1


# ============================================================================================
# Public API
# ============================================================================================
@dataclass(frozen=True)
class SynthSummary:
    """What ``synthesize`` wrote."""

    subjects: int
    studies: int
    images: int
    labelled_studies: int
    out: Path

    def __str__(self) -> str:
        return (f"{self.subjects} subjects, {self.studies} studies ({self.labelled_studies} labelled), "
                f"{self.images} images in {self.out}")


def synthetic_patient_name(subject_id: int) -> str:
    """The PatientName written into a demo subject's DICOM files (must never reach outputs)."""
    return f"{SYNTHETIC_PATIENT_NAME_PREFIX}{subject_id}"


def synthetic_patient_birth_date(subject_id: int) -> str:
    """The PatientBirthDate (YYYYMMDD) written into a demo subject's DICOM files."""
    first, last = SYNTHETIC_BIRTH_YEARS
    year = first + subject_id % (last - first)
    day = (subject_id // 7) % DAYS_PER_YEAR
    return (dt.date(year, 1, 1) + dt.timedelta(days=day)).strftime("%Y%m%d")


def synthesize(out: str | Path, subjects: int = 200, fmt: str = "jpg", seed: int = 0,
               workers: int = 1, progress: bool = True) -> SynthSummary:
    """Write a MIMIC-CXR-shaped demo tree with ``subjects`` patients under ``out``.

    ``fmt`` is ``"jpg"`` (MIMIC-CXR-JPG) or ``"dicom"`` (MIMIC-CXR). The same ``seed`` gives
    byte-identical files whatever ``workers`` is. Raises ``FileExistsError`` if ``out/files``
    already exists.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if subjects < 1:
        raise ValueError(f"subjects must be at least 1, not {subjects}")
    out = Path(out)
    if (out / FILES_DIR).exists():
        raise FileExistsError(f"{out / FILES_DIR} already exists; choose an empty output directory "
                              "(demo data is never mixed into an existing tree)")
    jobs = _plan_subjects(out, subjects, fmt, seed)
    records = list(_run_jobs(jobs, workers, progress))
    _write_csvs(out, records)
    return SynthSummary(
        subjects=subjects,
        studies=sum(len(r.chexpert) + r.unlabelled for r in records),
        images=sum(len(r.metadata) for r in records),
        labelled_studies=sum(len(r.chexpert) for r in records),
        out=out,
    )


# ============================================================================================
# Planning and running
# ============================================================================================
@dataclass(frozen=True)
class _SubjectJob:
    index: int
    subject_id: int
    study_ids: tuple[int, ...]
    out: Path
    fmt: str
    seed: int


@dataclass
class _SubjectRecords:
    metadata: list[tuple] = field(default_factory=list)
    split: list[tuple] = field(default_factory=list)
    chexpert: list[tuple] = field(default_factory=list)
    unlabelled: int = 0


def _plan_subjects(out: Path, subjects: int, fmt: str, seed: int) -> list[_SubjectJob]:
    """Assign folders (balanced over p10..p19), unique subject ids and unique study ids."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    folders = rng.permutation(np.arange(subjects) % len(FOLDER_DIGITS)) + FOLDER_DIGITS[0]
    subject_ids = np.empty(subjects, dtype=np.int64)
    for digit in FOLDER_DIGITS:
        members = np.flatnonzero(folders == digit)
        numbers = rng.choice(SUBJECTS_PER_FOLDER_ID_SPACE, size=members.size, replace=False)
        subject_ids[members] = digit * SUBJECTS_PER_FOLDER_ID_SPACE + numbers
    counts = _draw(rng, STUDIES_PER_SUBJECT, subjects)
    study_ids = STUDY_ID_BASE + rng.choice(STUDY_ID_SPACE, size=int(counts.sum()), replace=False)
    starts = np.concatenate([[0], np.cumsum(counts)])
    return [
        _SubjectJob(i, int(subject_ids[i]), tuple(int(s) for s in study_ids[starts[i]:starts[i + 1]]),
                    out, fmt, seed)
        for i in range(subjects)
    ]


def _draw(rng: np.random.Generator, distribution: dict, size: int | None = None):
    values = np.array(list(distribution))
    return rng.choice(values, size=size, p=np.array(list(distribution.values())))


def _run_jobs(jobs: list[_SubjectJob], workers: int, progress: bool) -> Iterator[_SubjectRecords]:
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        with tqdm(total=len(jobs), unit="subject", desc="synth", disable=not progress) as bar:
            for job in jobs:
                yield _synthesize_subject(job)
                bar.update()
        return
    chunk = max(1, len(jobs) // (workers * 16))
    with ProcessPoolExecutor(max_workers=workers, mp_context=_process_context()) as pool:
        results = pool.map(_synthesize_subject, jobs, chunksize=chunk)
        with tqdm(total=len(jobs), unit="subject", desc="synth", disable=not progress) as bar:
            for records in results:
                yield records
                bar.update()


def _process_context():
    """Fork where the platform has it (no ``__main__`` guard needed in user scripts)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _subject_rng(job: _SubjectJob, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(job.index, stream)))


# ============================================================================================
# One subject: labels, views, images, report, CSV rows
# ============================================================================================
@dataclass(frozen=True)
class _View:
    dicom_id: str
    position: str  # PA, AP, LATERAL or LL

    @property
    def frontal(self) -> bool:
        return self.position in ("PA", "AP")


def _synthesize_subject(job: _SubjectJob) -> _SubjectRecords:
    rng = _subject_rng(job, RENDER_STREAM)
    dicom_rng = _subject_rng(job, DICOM_STREAM)
    anatomy = _sample_anatomy(rng)
    records = _SubjectRecords()
    folder = job.out / FILES_DIR / f"p{job.subject_id // SUBJECTS_PER_FOLDER_ID_SPACE}" / f"p{job.subject_id}"
    study_date = _first_study_date(rng)
    split = FOLDER_SPLITS[job.subject_id // SUBJECTS_PER_FOLDER_ID_SPACE]
    for study_id in job.study_ids:
        labels = _sample_labels(rng)
        findings = _findings_from_labels(labels, rng)
        views = _sample_views(rng, findings)
        study_time = _study_time(rng)
        study_anatomy = _jitter_anatomy(anatomy, rng)
        orientation = _patient_orientation(rng, views[0].position)
        for number, view in enumerate(views):
            pose = _sample_pose(rng)
            image = _render(study_anatomy, pose, findings, view, rng)
            path = folder / f"s{study_id}" / f"{view.dicom_id}{IMAGE_SUFFIX[job.fmt]}"
            if job.fmt == "jpg":
                _write_jpg(path, image)
            else:
                info = _DicomInfo(job.subject_id, study_id, view, number, study_date, study_time,
                                  job.seed, anatomy.sex)
                _write_dicom(path, image, info, dicom_rng)
            records.metadata.append(_metadata_row(job.subject_id, study_id, view, views, image,
                                                  study_date, study_time, orientation))
            records.split.append((view.dicom_id, study_id, job.subject_id, split))
        _atomic_write(folder / f"s{study_id}.txt", _report(labels, findings, views).encode())
        if rng.random() < UNLABELLED_FRACTION:
            records.unlabelled += 1
        else:
            records.chexpert.append((job.subject_id, study_id, *labels))
        study_date += dt.timedelta(days=int(rng.integers(1, MAX_DAYS_BETWEEN_STUDIES)))
    return records


def _sample_views(rng: np.random.Generator, findings: "_Findings") -> list[_View]:
    count = int(_draw(rng, VIEWS_PER_STUDY))
    ap_probability = AP_PROBABILITY_WITH_DEVICES if findings.devices else AP_PROBABILITY_WITHOUT_DEVICES
    positions = ["AP" if rng.random() < ap_probability else "PA"]
    positions += ["LL" if rng.random() < LL_PROBABILITY else "LATERAL" for _ in range(count - 1)]
    return [_View(_dicom_id(rng), position) for position in positions]


def _dicom_id(rng: np.random.Generator) -> str:
    groups = rng.integers(0, 16**DICOM_ID_GROUP_HEX, size=DICOM_ID_GROUPS)
    return "-".join(f"{int(g):0{DICOM_ID_GROUP_HEX}x}" for g in groups)


def _first_study_date(rng: np.random.Generator) -> dt.date:
    year = int(rng.integers(*STUDY_YEARS))
    return dt.date(year, 1, 1) + dt.timedelta(days=int(rng.integers(0, DAYS_PER_YEAR)))


def _study_time(rng: np.random.Generator) -> float:
    seconds = rng.uniform(0, SECONDS_PER_DAY)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return round(hours * 10_000 + minutes * 100 + secs, 3)


def _patient_orientation(rng: np.random.Generator, frontal_position: str) -> str:
    if frontal_position == "AP" and rng.random() < RECUMBENT_PROBABILITY_AP:
        return "Recumbent"
    return "Erect"


_PROCEDURE = {"AP": "CHEST (PORTABLE AP)", "PA": "CHEST (PA AND LAT)"}
_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral",
                 "LL": "left lateral"}


def _metadata_row(subject_id: int, study_id: int, view: _View, views: list[_View], image: "_Image",
                  study_date: dt.date, study_time: float, orientation: str) -> tuple:
    procedure = _PROCEDURE[views[0].position]
    rows, columns = image.display.shape
    return (view.dicom_id, subject_id, study_id, procedure, view.position, rows, columns,
            study_date.strftime("%Y%m%d"), repr(study_time), procedure, _VIEW_MEANING[view.position],
            orientation)


# ============================================================================================
# Labels
# ============================================================================================
@dataclass(frozen=True)
class _LabelStats:
    vectors: np.ndarray  # (n, 14) with NaN for not mentioned
    probabilities: np.ndarray
    positive: np.ndarray
    uncertain: np.ndarray


@functools.lru_cache(maxsize=1)
def _label_stats() -> _LabelStats:
    text = resources.files("raddiffusion.data").joinpath(LABEL_STATS_RESOURCE).read_text()
    raw = json.loads(text)
    if tuple(raw["labels"]) != LABELS:
        raise ValueError(f"{LABEL_STATS_RESOURCE} label order differs from raddiffusion LABELS")
    vectors = np.array([row["vector"] for row in raw["top_label_vectors"]], dtype=np.float64)
    vectors[vectors == NOT_MENTIONED] = np.nan
    counts = np.array([row["count"] for row in raw["top_label_vectors"]], dtype=np.float64)
    positive = np.array([raw["prevalence_positive_only"][name] for name in LABELS])
    uncertain = np.array([raw["prevalence_u_ones"][name] for name in LABELS]) - positive
    return _LabelStats(vectors, counts / counts.sum(), positive, np.clip(uncertain, 0, None))


def _sample_labels(rng: np.random.Generator) -> tuple[float, ...]:
    """One study's CheXpert values: 1.0, 0.0, -1.0 or NaN (not mentioned)."""
    stats = _label_stats()
    if rng.random() < TOP_VECTOR_PROBABILITY:
        vector = stats.vectors[rng.choice(len(stats.vectors), p=stats.probabilities)]
    else:
        vector = _independent_labels(rng, stats)
    return tuple(float(v) for v in vector)


def _independent_labels(rng: np.random.Generator, stats: _LabelStats) -> np.ndarray:
    draw = rng.random(len(LABELS))
    vector = np.full(len(LABELS), np.nan)
    vector[draw < stats.positive + stats.uncertain] = -1.0
    vector[draw < stats.positive] = 1.0
    negative = np.isnan(vector) & (rng.random(len(LABELS)) < NEGATIVE_MENTION_PROBABILITY)
    vector[negative] = 0.0
    no_finding = LABELS.index("No Finding")
    findings = np.delete(vector, [no_finding, LABELS.index("Support Devices")])
    vector[no_finding] = np.nan if np.any((findings == 1) | (findings == -1)) else 1.0
    return vector


# ============================================================================================
# Findings: what the labels look like
# ============================================================================================
@dataclass(frozen=True)
class _Lesion:
    """A localised finding: side (-1 image left = patient right, +1), position inside the lung
    (lateral 0 medial .. 1 lateral, level 0 apex .. 1 base, depth -1 anterior .. 1 posterior),
    size (``radius``, image heights for blobs; a relative extent for pleural findings) and
    severity (``strength``, 0..1)."""

    side: int
    lateral: float
    level: float
    depth: float
    radius: float
    strength: float
    kind: str = "patchy"
    angle: float = 0.0


@dataclass(frozen=True)
class _Findings:
    cardiomegaly: float = 0.0
    mediastinum: float = 0.0
    edema: float = 0.0
    effusion: tuple[float, float] = (0.0, 0.0)
    lesions: tuple[_Lesion, ...] = ()
    pneumothorax: _Lesion | None = None
    thickening: _Lesion | None = None
    fracture: _Lesion | None = None
    devices: tuple[str, ...] = ()
    leads: tuple[tuple[float, float], ...] = ()


def _visible_severity(value: float, rng: np.random.Generator) -> float:
    """Severity of the drawn finding for a label value (0 when nothing is drawn)."""
    if value == 1.0 and rng.random() >= INVISIBLE_POSITIVE_PROBABILITY:
        return float(rng.uniform(*POSITIVE_SEVERITY))
    if value == -1.0 and rng.random() < UNCERTAIN_VISIBLE_PROBABILITY:
        return float(rng.uniform(*UNCERTAIN_SEVERITY))
    return 0.0


def _findings_from_labels(labels: tuple[float, ...], rng: np.random.Generator) -> _Findings:
    severity = {name: _visible_severity(value, rng) for name, value in zip(LABELS, labels)}
    lesions = _opacity_lesions(severity, rng)
    return _Findings(
        cardiomegaly=severity["Cardiomegaly"],
        mediastinum=severity["Enlarged Cardiomediastinum"],
        edema=severity["Edema"],
        effusion=_effusion_sides(severity["Pleural Effusion"], rng),
        lesions=lesions,
        pneumothorax=_located(rng, severity["Pneumothorax"], radius=(0.35, 0.75)),
        thickening=_located(rng, severity["Pleural Other"], radius=(0.04, 0.1)),
        fracture=_located(rng, severity["Fracture"], radius=(0.3, 0.8)),
        devices=_devices(severity["Support Devices"], rng),
        leads=tuple((float(rng.uniform(-1, 1)), float(rng.uniform(0.05, 0.6))) for _ in range(4)),
    )


def _located(rng: np.random.Generator, severity: float, radius: tuple[float, float],
             kind: str = "patchy", level: tuple[float, float] = (0.15, 0.85)) -> _Lesion | None:
    if severity <= 0:
        return None
    return _Lesion(side=int(rng.choice((-1, 1))), lateral=float(rng.uniform(0.25, 0.85)),
                   level=float(rng.uniform(*level)), depth=float(rng.uniform(-0.8, 0.8)),
                   radius=float(rng.uniform(*radius)), strength=severity, kind=kind,
                   angle=float(rng.uniform(-0.45, 0.45)))


def _effusion_sides(severity: float, rng: np.random.Generator) -> tuple[float, float]:
    if severity <= 0:
        return (0.0, 0.0)
    other = severity * rng.uniform(0.3, 1.0) if rng.random() < 0.45 else 0.0
    return (severity, other) if rng.random() < 0.5 else (other, severity)


def _opacity_lesions(severity: dict[str, float], rng: np.random.Generator) -> tuple[_Lesion, ...]:
    lesions = []
    for name in ("Consolidation", "Pneumonia"):
        lesion = _located(rng, severity[name], radius=(0.05, 0.1), level=(0.35, 0.9))
        lesions += [lesion] if lesion else []
    atelectasis = severity["Atelectasis"]
    if atelectasis > 0:
        kind = "band" if rng.random() < 0.7 else "wedge"
        lesions.append(_located(rng, atelectasis, radius=(0.1, 0.2), kind=kind, level=(0.6, 0.9)))
    nodule = _located(rng, severity["Lung Lesion"], radius=(0.012, 0.03), kind="nodule")
    lesions += [nodule] if nodule else []
    other_opacity = any(severity[name] > 0 for name in OPACITY_LABELS)
    if severity["Lung Opacity"] > 0 and not other_opacity:
        lesions.append(_located(rng, severity["Lung Opacity"] * LUNG_OPACITY_ONLY_STRENGTH, radius=(0.05, 0.1),
                                level=(0.3, 0.9)))
    return tuple(lesions)


def _devices(severity: float, rng: np.random.Generator) -> tuple[str, ...]:
    if severity <= 0:
        return ()
    chosen = tuple(name for name, p in DEVICE_PROBABILITY.items() if rng.random() < p)
    return chosen or (str(rng.choice(list(DEVICE_PROBABILITY))),)


# ============================================================================================
# Anatomy and pose
# ============================================================================================
@dataclass(frozen=True)
class _Anatomy:
    height: int
    width: int
    thorax: float  # half-width of the rib cage
    soft_tissue: float  # chest wall thickness beyond the ribs
    apex: float  # y of the lung apices
    dome: float  # y of the right hemidiaphragm dome
    sulcus: float  # depth of the costophrenic sulcus below the dome
    ctr: float  # cardiothoracic ratio
    mediastinum: float  # half-width of the upper mediastinum
    rib_spacing: float
    rotation: float  # degrees
    gamma: float
    noise: float
    marking_seed: int
    sex: str


@dataclass(frozen=True)
class _Pose:
    shift_x: float
    shift_y: float
    rotation: float


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    height = int(rng.integers(*IMAGE_HEIGHT_RANGE))
    width = int(rng.integers(*IMAGE_WIDTH_RANGE))
    width += 1 if width == height else 0
    apex = rng.uniform(0.1, 0.15)
    return _Anatomy(
        height=height, width=width,
        thorax=0.5 * width / height * rng.uniform(0.74, 0.86),
        soft_tissue=rng.uniform(0.025, 0.06),
        apex=apex,
        dome=apex + rng.uniform(0.48, 0.56),
        sulcus=rng.uniform(0.08, 0.12),
        ctr=rng.uniform(0.38, 0.47),
        mediastinum=rng.uniform(0.045, 0.06),
        rib_spacing=rng.uniform(0.048, 0.058),
        rotation=rng.normal(0, 1.5),
        gamma=rng.uniform(1.2, 1.8),
        noise=rng.uniform(0.006, 0.016),
        marking_seed=int(rng.integers(2**31)),
        sex=str(rng.choice(("F", "M"))),
    )


def _jitter_anatomy(anatomy: _Anatomy, rng: np.random.Generator) -> _Anatomy:
    """Same patient on another day: inspiration and exposure change a little."""
    inspiration = rng.normal(0, 0.012)
    return replace(anatomy, dome=anatomy.dome + inspiration,
                   gamma=anatomy.gamma * rng.uniform(0.93, 1.07))


def _sample_pose(rng: np.random.Generator) -> _Pose:
    return _Pose(shift_x=rng.normal(0, 0.012), shift_y=rng.normal(0, 0.01), rotation=rng.normal(0, 0.7))


# ============================================================================================
# Drawing primitives (all vectorised over coordinate grids)
# ============================================================================================
def _sigmoid(z, scale: float = 1.0):
    """Logistic function of ``scale * z``, computed in place on one temporary."""
    result = np.multiply(z, 0.5 * scale, dtype=np.float32)
    np.tanh(result, out=result)
    result *= 0.5
    result += 0.5
    return result


def _inside(distance, width: float = EDGE):
    """Soft indicator of ``distance > 0`` with an edge of about ``width``."""
    return _sigmoid(distance, 1.0 / width)


def _gauss(d2, sigma: float):
    return np.exp(-d2 / (2 * sigma * sigma))


def _line(distance, half_width: float):
    return np.exp(-np.square(distance / half_width))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise varying over about ``cells`` blobs per axis."""
    low = rng.standard_normal((cells[0] + 3, cells[1] + 3)).astype(np.float32)
    image = Image.fromarray(low).resize((shape[1], shape[0]), Image.Resampling.BICUBIC,
                                        box=(1, 1, cells[1] + 2, cells[0] + 2))
    return np.asarray(image, dtype=np.float32)


def _grid(anatomy: _Anatomy, pose: _Pose) -> tuple[np.ndarray, np.ndarray]:
    """Patient coordinates of every pixel (units of image height, x = 0 on the midline)."""
    h, w = anatomy.height, anatomy.width
    ys = ((np.arange(h, dtype=np.float32) + 0.5) / h - 0.5 - pose.shift_y)[:, None]
    xs = ((np.arange(w, dtype=np.float32) + 0.5 - w / 2) / h - pose.shift_x)[None, :]
    theta = math.radians(anatomy.rotation + pose.rotation)
    cos, sin = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    return cos * xs + sin * ys, cos * ys - sin * xs + np.float32(0.5)


def _superellipse(x, y, cx: float, cy: float, ax: float, ay: float, power: float):
    return np.abs((x - cx) / ax) ** power + np.abs((y - cy) / ay) ** power


def _ellipse(x, y, cx: float, cy: float, major: float, minor: float, tilt: float):
    cos, sin = math.cos(tilt), math.sin(tilt)
    u = (x - cx) * cos + (y - cy) * sin
    v = (y - cy) * cos - (x - cx) * sin
    return np.square(u / major) + np.square(v / minor)


def _curve(x, y, path_x, slope, y_start: float, y_end: float, half_width: float):
    """A thin line ``x = path_x(y)`` between two heights (``slope`` = dx/dy)."""
    distance = (x - path_x) / np.sqrt(1 + np.square(slope))
    return _line(distance, half_width) * _inside(y - y_start, 0.003) * _inside(y_end - y, 0.003)


def _tube(x, y, path_x, slope, y_start: float, y_end: float, width: float):
    """A radiographic tube: faint wall plus a bright radio-opaque stripe."""
    wall = _curve(x, y, path_x, slope, y_start, y_end, width)
    stripe = _curve(x, y, path_x + width * 0.5, slope, y_start, y_end, width * 0.25)
    return 0.35 * wall + stripe


# ============================================================================================
# Rendering
# ============================================================================================
@dataclass(frozen=True)
class _Image:
    """``values``: unclipped display values (0 black .. 1 white); ``display`` is them clipped."""

    values: np.ndarray

    @property
    def display(self) -> np.ndarray:
        return np.clip(self.values, 0.0, 1.0)

    def to_uint8(self) -> np.ndarray:
        return np.rint(self.display * 255).astype(np.uint8)


def _render(anatomy: _Anatomy, pose: _Pose, findings: _Findings, view: _View,
            rng: np.random.Generator) -> _Image:
    if view.frontal:
        density = _render_frontal(anatomy, pose, findings, view.position == "AP", rng)
    else:
        density = _render_lateral(anatomy, pose, findings, rng)
    return _Image(_to_display(density, anatomy, rng))


def _to_display(density: np.ndarray, anatomy: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Film response, exposure, smooth mottle and grain; windowed by percentiles."""
    film = (1 - np.exp(-FILM_GAIN * np.clip(density, 0, None))) ** anatomy.gamma
    shape = film.shape
    film += MOTTLE * _smooth_noise(rng, shape, (MOTTLE_CELLS, MOTTLE_CELLS))
    grain = (shape[0] // GRAIN_PIXELS, shape[1] // GRAIN_PIXELS)
    film += anatomy.noise * _smooth_noise(rng, shape, grain)
    film += 0.4 * anatomy.noise * rng.standard_normal(shape, dtype=np.float32)
    low, high = np.percentile(film[::PERCENTILE_STRIDE, ::PERCENTILE_STRIDE], DISPLAY_PERCENTILES)
    return ((film - low) / (high - low)).astype(np.float32)


@dataclass(frozen=True)
class _Frame:
    """Scalar landmarks of one frontal image."""

    thorax: float
    apex: float
    domes: tuple[float, float]  # image left (patient right), image right
    sulcus: float
    hilum: float
    carina: float
    mediastinum: float
    heart_x: float
    heart_y: float
    heart_major: float
    heart_minor: float

    def dome(self, side: int) -> float:
        return self.domes[0] if side < 0 else self.domes[1]

    def lung_point(self, lesion: _Lesion) -> tuple[float, float]:
        medial = self.mediastinum + 0.03
        x = lesion.side * (medial + lesion.lateral * (self.thorax - medial))
        y = self.apex + 0.03 + lesion.level * (self.dome(lesion.side) - self.apex)
        return x, y


HEART_TILT = math.radians(36)
LATERAL_HEART_TILT = math.radians(-40)
LATERAL_LUNG_AIR = 0.55
LATERAL_VISIBILITY = 0.7  # findings are overlapped by the other lung in a lateral view
APEX_POSITION = 0.42
APEX_DROP = 0.22
VESSEL_CELLS = 18
VESSEL_KNOTS = 110


def _frontal_frame(anatomy: _Anatomy, findings: _Findings, ap: bool) -> _Frame:
    ctr = anatomy.ctr + findings.cardiomegaly * float(np.interp(findings.cardiomegaly, (0, 1), CARDIOMEGALY_CTR_GAIN))
    ctr *= AP_HEART_MAGNIFICATION if ap else 1.0
    heart_half = ctr * anatomy.thorax
    minor = 0.105 + 0.03 * findings.cardiomegaly
    major = math.sqrt(max(heart_half**2 - (minor * math.sin(HEART_TILT))**2, 1e-4)) / math.cos(HEART_TILT)
    dome = anatomy.dome
    return _Frame(
        thorax=anatomy.thorax, apex=anatomy.apex, domes=(dome, dome + 0.02), sulcus=anatomy.sulcus,
        hilum=anatomy.apex + 0.3 * (dome - anatomy.apex) + 0.05,
        carina=anatomy.apex + 0.22,
        mediastinum=anatomy.mediastinum * (1 + MEDIASTINUM_WIDENING * findings.mediastinum),
        heart_x=heart_half * 0.42, heart_y=dome - 0.075, heart_major=major, heart_minor=minor,
    )


def _render_frontal(anatomy: _Anatomy, pose: _Pose, findings: _Findings, ap: bool,
                    rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(anatomy, pose)
    frame = _frontal_frame(anatomy, findings, ap)
    lungs, pleura = _frontal_lungs(x, y, frame)
    soft = _frontal_mediastinum(x, y, frame)
    air = lungs * (1 - soft)
    fill = _lung_markings(x, y, frame, anatomy.marking_seed, findings.pneumothorax, pleura)
    fill += _frontal_opacities(x, y, frame, findings, pleura, rng)
    density = _frontal_body(x, y, frame, anatomy) - LUNG_AIR * air * (1 - np.clip(fill, 0, 1))
    density -= _frontal_air_spaces(x, y, frame, findings, pleura, air)
    density += 0.08 * soft
    density += BONE * _frontal_bones(x, y, frame, anatomy, findings.fracture, ap)
    density += METAL * _frontal_devices(x, y, frame, findings)
    return density


def _frontal_body(x, y, frame: _Frame, anatomy: _Anatomy):
    half = frame.thorax + anatomy.soft_tissue + 0.2 * _inside(frame.apex + 0.08 - y, 0.04)
    ratio = np.clip(1 - np.square(x / half), 0, 1)
    body = _inside(half - np.abs(x)) * (0.6 + 0.4 * np.sqrt(ratio))
    if anatomy.sex == "F":
        for side in (-1, 1):
            d2 = np.square(x - side * frame.thorax * 0.6) + np.square(y - frame.domes[0] + 0.03) * 1.5
            body += 0.12 * _inside(0.16 - np.sqrt(d2), 0.02)
    return body


def _frontal_lungs(x, y, frame: _Frame):
    """Soft mask of both lungs and the depth of each pixel below the outer (parietal) pleura."""
    dx = np.abs(x)
    apex_x = frame.thorax * APEX_POSITION
    lateral = np.clip((dx - apex_x) / (frame.thorax - apex_x), 0, None)
    medial = np.clip((apex_x - dx) / apex_x, 0, None)
    top = frame.apex + APEX_DROP * np.square(lateral) + 2 * APEX_DROP * np.square(medial)
    wall = frame.thorax * (1 - 0.05 * np.square((y - frame.domes[0]) / 0.4))
    pleura = np.minimum(wall - dx, 0.7 * (y - top))
    left = x < 0
    side = np.where(left, np.float32(-1), np.float32(1))
    dome = np.where(left, np.float32(frame.domes[0]), np.float32(frame.domes[1]))
    diaphragm = dome + frame.sulcus * np.square((dx - frame.thorax * 0.45) / (frame.thorax * 0.55))
    lungs = _inside(pleura) * _inside(diaphragm - y)
    return lungs * _inside(side * x, 0.002), pleura


def _frontal_mediastinum(x, y, frame: _Frame):
    half = frame.mediastinum * (0.85 + 0.5 * np.clip((y - frame.carina) / 0.2, 0, 1))
    knob = 0.03 * _gauss(np.square(y - frame.apex - 0.17), 0.025)
    trunk = 0.03 * _inside(y - frame.apex - 0.2, 0.03)
    band = _inside(x + half) * _inside(half + np.maximum(knob, trunk) - x)
    heart = _inside((1 - _ellipse(x, y, frame.heart_x, frame.heart_y, frame.heart_major,
                                  frame.heart_minor, HEART_TILT)) * 0.02)
    return np.maximum(band, heart)


def _lung_markings(x, y, frame: _Frame, seed: int, pneumothorax: _Lesion | None, pleura):
    """Branching vessels (ridges of smooth noise), densest at the hila and fading outwards."""
    rng = np.random.default_rng(seed)
    dx = np.abs(x) - (frame.mediastinum + 0.03)
    dy = y - frame.hilum
    radius = np.sqrt(dx * dx + dy * dy)
    angle = np.arctan2(dy, dx + 0.06) + 0.6 * np.sign(x)
    taper = np.exp(-radius / 0.15) * (1 - np.exp(-radius / 0.04))
    vessels = _vessel_texture(rng, angle, x.shape) * taper * 0.4
    vessels += 0.15 * np.exp(-radius / 0.2)
    vessels += 0.35 * _gauss(dx * dx + dy * dy * 0.4, 0.03)
    if pneumothorax is not None:
        vessels *= 1 - _pneumothorax_space(x, y, frame, pneumothorax, pleura)
    return vessels


def _vessel_texture(rng: np.random.Generator, angle, shape: tuple[int, int]) -> np.ndarray:
    """Radial streaks broken into segments by smooth noise: vessels branching out of the hila."""
    knots = np.linspace(-math.pi - 1, math.pi + 1, VESSEL_KNOTS)
    streaks = np.clip(np.interp(angle, knots, rng.standard_normal(knots.size)), 0, None).astype(np.float32)
    segments = np.clip(0.5 + 0.5 * _smooth_noise(rng, shape, (VESSEL_CELLS, VESSEL_CELLS)), 0, 1)
    return streaks * segments


def _pneumothorax_gap(lesion: _Lesion) -> float:
    return 0.012 + 0.05 * lesion.radius * lesion.strength


def _pneumothorax_space(x, y, frame: _Frame, lesion: _Lesion, pleura):
    upper = _inside(frame.hilum + 0.12 * lesion.strength - y, 0.03)
    return _inside(_pneumothorax_gap(lesion) - pleura, 0.002) * upper * _inside(lesion.side * x)


def _frontal_opacities(x, y, frame: _Frame, findings: _Findings, pleura, rng: np.random.Generator):
    fill = np.zeros_like(x)
    for lesion in findings.lesions:
        fill += _frontal_lesion(x, y, frame, lesion, rng)
    if findings.edema > 0:
        for side in (-1, 1):
            d2 = np.square(x - side * (frame.mediastinum + 0.06)) + 0.6 * np.square(y - frame.hilum - 0.03)
            fill += EDEMA_FILL * findings.edema * _gauss(d2, 0.08)
    for side, severity in zip((-1, 1), findings.effusion):
        if severity > 0:
            fill += _effusion(x, y, frame, side, severity)
    if findings.thickening is not None:
        lesion = findings.thickening
        _, level_y = frame.lung_point(lesion)
        band = _inside(0.004 + 0.15 * lesion.radius - pleura, 0.002) * _inside(lesion.side * x)
        fill += THICKENING_FILL * lesion.strength * band * _gauss(np.square(y - level_y), 0.07)
    return fill


def _frontal_lesion(x, y, frame: _Frame, lesion: _Lesion, rng: np.random.Generator):
    cx, cy = frame.lung_point(lesion)
    if lesion.kind == "nodule":
        distance = np.sqrt(np.square(x - cx) + np.square(y - cy))
        return NODULE_FILL * _inside(lesion.radius - distance, 0.003)
    if lesion.kind == "band":
        along = (x - cx) * math.cos(lesion.angle) + (y - cy) * math.sin(lesion.angle)
        across = (y - cy) * math.cos(lesion.angle) - (x - cx) * math.sin(lesion.angle)
        thickness = 0.012 + 0.015 * lesion.strength
        return ATELECTASIS_FILL * lesion.strength * _line(across, thickness) * _gauss(along**2, lesion.radius * 0.5)
    texture = 0.6 + 0.4 * _smooth_noise(rng, x.shape, (12, 12))
    blob = _gauss(np.square(x - cx) + np.square(y - cy), lesion.radius)
    if lesion.kind == "wedge":
        blob = np.maximum(blob, _inside(y - cy) * _gauss(np.square(x - cx), lesion.radius * 0.6))
    return CONSOLIDATION_FILL * lesion.strength * blob * texture


def _effusion(x, y, frame: _Frame, side: int, severity: float):
    base = frame.dome(side) + frame.sulcus
    level = base - (0.02 + 0.3 * severity * severity) * (base - frame.apex)
    lateral = np.clip((side * x - frame.mediastinum) / frame.thorax, 0, 1.2)
    surface = level - (0.05 + 0.08 * severity) * np.square(lateral)
    denser_below = 1 + 0.5 * _inside(y - surface - 0.05, 0.03)
    return EFFUSION_FILL * denser_below * _inside(y - surface, 0.012) * _inside(side * x)


def _frontal_air_spaces(x, y, frame: _Frame, findings: _Findings, pleura, air):
    """Air outside the lungs: trachea, main bronchi, gastric bubble, pneumothorax rim."""
    trachea = _line(x, 0.014) * _inside(frame.carina - y, 0.01)
    for side in (-1, 1):
        along = side * x * 0.8 + (y - frame.carina) * 0.6
        across = (y - frame.carina) * 0.8 - side * x * 0.6
        trachea += _line(across, 0.01) * _inside(along, 0.005) * _inside(0.07 - along, 0.01)
    bubble = _gauss(np.square(x - frame.thorax * 0.45) + 2 * np.square(y - frame.domes[1] - 0.05), 0.03)
    spaces = TRACHEA_AIR * np.clip(trachea, 0, 1) + 0.25 * bubble
    if findings.pneumothorax is not None:
        lesion = findings.pneumothorax
        space = _pneumothorax_space(x, y, frame, lesion, pleura)
        edge = _line(pleura - _pneumothorax_gap(lesion), 0.0022) * _inside(frame.hilum + 0.1 - y, 0.03)
        edge *= _inside(lesion.side * x)
        spaces += (0.14 * space - 0.3 * edge) * lesion.strength * air
    return spaces


def _frontal_bones(x, y, frame: _Frame, anatomy: _Anatomy, fracture: _Lesion | None, ap: bool):
    bones = _ribs(x, y, frame, anatomy.rib_spacing, fracture)
    spine = _inside(0.032 - np.abs(x), 0.006) * (0.8 + 0.2 * np.cos(2 * math.pi * y / 0.045))
    bones += 0.8 * spine
    dx = np.abs(x)
    clavicle_y = frame.apex + 0.07 - 0.3 * dx + 0.3 * dx * dx
    bones += 1.0 * _line(y - clavicle_y, 0.017) * _inside(dx - 0.03, 0.01) * _inside(frame.thorax + 0.08 - dx, 0.01)
    head = np.sqrt(np.square(dx - frame.thorax - 0.12) + np.square(y - frame.apex - 0.02))
    bones += 1.5 * _inside(0.075 - head, 0.006)
    scapula_x = frame.thorax * (0.8 if ap else 0.98)
    bones += 0.4 * _line(dx - scapula_x + 0.3 * (y - frame.apex), 0.006) * _inside(frame.hilum - y, 0.03)
    return bones


def _ribs(x, y, frame: _Frame, spacing: float, fracture: _Lesion | None):
    dx = np.abs(x)
    start = frame.apex - 0.03
    phase = (_rib_curve(y, dx) - start) / spacing
    break_gap = 0.0
    if fracture is not None:
        bx = fracture.side * (0.1 + fracture.lateral * (frame.thorax - 0.12))
        rib = 2 + round(fracture.level * 5)
        by = start + rib * spacing - _rib_curve(0.0, abs(bx))
        near = _gauss(np.square(y - by), 0.025) * _inside(fracture.side * x)
        phase = phase + 0.3 * fracture.strength * near * _inside(fracture.side * (x - bx), 0.002)
        break_gap = _line(x - bx, 0.003 + 0.003 * fracture.strength) * near
    wave = np.cos(2 * math.pi * phase)
    posterior = np.clip((wave - 0.1) / 0.9, 0, 1) ** 0.6 * (1 - break_gap)
    posterior *= _inside(phase - 0.4, 0.1) * _inside(10.5 - phase, 0.1)
    anterior_phase = (y + 0.5 * dx - frame.apex - 0.14) / (spacing * 1.2)
    anterior = np.clip((np.cos(2 * math.pi * anterior_phase) - 0.5) / 0.5, 0, 1)
    anterior *= _inside(dx - 0.12, 0.02) * _inside(anterior_phase, 0.1) * _inside(5.5 - anterior_phase, 0.1)
    cage = _inside(dx - 0.04, 0.008) * _inside(frame.thorax + 0.015 - dx, 0.004)
    cage *= 1 - 0.75 * _inside(y - frame.domes[0] - frame.sulcus + 0.04, 0.03)
    return (0.5 * posterior + 0.25 * anterior) * cage


def _rib_curve(y, dx):
    """Posterior ribs are the level sets of this function: flat at the spine, curving down laterally."""
    return y + 0.3 * dx - 2.4 * dx * dx


def _frontal_devices(x, y, frame: _Frame, findings: _Findings):
    metal = np.zeros_like(x)
    devices = set(findings.devices)
    top = -0.2
    if "ett" in devices:
        metal += _tube(x, y, 0.002 * np.ones_like(x), 0 * x, top, frame.carina - 0.05, 0.008)
    if "ng" in devices:
        turn = _sigmoid((y - frame.domes[1] - 0.03) / 0.02)
        path = 0.02 + 0.12 * turn
        slope = 0.12 * turn * (1 - turn) / 0.02
        metal += _tube(x, y, path, slope, top, frame.domes[1] + 0.12, 0.005)
    if "cvc" in devices:
        path = -0.06 + 0.03 * np.clip((y - frame.apex) / (frame.carina - frame.apex), 0, 1)
        metal += _tube(x, y, path, np.full_like(x, 0.03 / (frame.carina - frame.apex)), top,
                       frame.carina + 0.04, 0.004)
    if "pacemaker" in devices:
        metal += _pacemaker(x, y, frame)
    if "ecg" in devices:
        metal += _ecg_leads(x, y, frame, findings.leads)
    return metal


def _pacemaker(x, y, frame: _Frame):
    box_x, box_y = frame.thorax * 0.7, frame.apex + 0.09
    box = _inside(0.035 - np.maximum(np.abs(x - box_x), 0.8 * np.abs(y - box_y)), 0.004)
    t = np.clip((y - box_y) / (frame.heart_y - box_y), 0, 1)
    path = box_x + (frame.heart_x - box_x) * np.sin(t * math.pi / 2)
    slope = (frame.heart_x - box_x) * math.pi / 2 * np.cos(t * math.pi / 2) / (frame.heart_y - box_y)
    return 1.5 * box + _curve(x, y, path, slope, box_y, frame.heart_y, 0.003)


def _ecg_leads(x, y, frame: _Frame, leads: tuple[tuple[float, float], ...]):
    metal = np.zeros_like(x)
    for side_fraction, level in leads:
        lx = side_fraction * (frame.thorax + 0.04)
        ly = frame.apex + level * (frame.domes[0] - frame.apex)
        distance = np.sqrt(np.square(x - lx) + np.square(y - ly))
        metal += _line(distance - LEAD_RADIUS, 0.003) + 0.6 * _inside(LEAD_RADIUS * 0.4 - distance, 0.002)
        outward = np.sign(side_fraction) or 1.0
        wire_y = ly + 0.04 * np.sin((x - lx) * 12 + level * 9) * np.abs(x - lx) * 6
        metal += 0.6 * _line(y - wire_y, 0.0025) * _inside(outward * (x - lx) - LEAD_RADIUS, 0.002)
    return metal


# --------------------------------------------------------------------------------------------
# Lateral view: anterior to the image left, spine to the right
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LateralFrame:
    front: float  # x of the anterior chest wall (inner)
    back: float  # x of the posterior chest wall (inner, in front of the spine)
    apex: float
    dome: float
    sulcus: float
    carina: float
    heart_x: float
    heart_y: float
    heart_major: float
    heart_minor: float

    def lung_point(self, lesion: _Lesion, dome: float) -> tuple[float, float]:
        x = self.front + (lesion.depth + 1) / 2 * (self.back - self.front)
        y = self.apex + 0.03 + lesion.level * (dome - self.apex)
        return x, y


def _lateral_frame(anatomy: _Anatomy, findings: _Findings) -> _LateralFrame:
    depth = anatomy.thorax * 0.82
    heart_grow = 1 + 0.25 * findings.cardiomegaly + 1.5 * (anatomy.ctr - 0.42)
    return _LateralFrame(
        front=-depth, back=depth * 0.7, apex=anatomy.apex + 0.01, dome=anatomy.dome - 0.02,
        sulcus=anatomy.sulcus + 0.04, carina=anatomy.apex + 0.22,
        heart_x=-depth * 0.45, heart_y=anatomy.dome - 0.08,
        heart_major=0.19 * heart_grow, heart_minor=0.13 * heart_grow,
    )


def _render_lateral(anatomy: _Anatomy, pose: _Pose, findings: _Findings,
                    rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(anatomy, pose)
    frame = _lateral_frame(anatomy, findings)
    lungs, shell, diaphragm = _lateral_lungs(x, y, frame)
    heart = _inside((1 - _ellipse(x, y, frame.heart_x, frame.heart_y, frame.heart_major,
                                  frame.heart_minor, LATERAL_HEART_TILT)) * 0.1, 0.012)
    upper = findings.mediastinum * _gauss(np.square(x - frame.front - 0.08) + np.square(y - frame.carina), 0.06)
    air = lungs * (1 - 0.5 * heart) * (1 - 0.8 * np.clip(upper, 0, 1))
    fill = _lateral_fill(x, y, frame, findings, shell, diaphragm, rng)
    density = _lateral_body(x, y, frame, anatomy) - LATERAL_LUNG_AIR * air * (1 - np.clip(fill, 0, 1))
    trachea = _line(x - frame.front * 0.1 - 0.1 * (y - frame.carina), 0.02) * _inside(frame.carina - y, 0.02)
    density -= 0.1 * trachea
    density += BONE * _lateral_bones(x, y, frame, anatomy)
    density += METAL * _lateral_devices(x, y, frame, findings)
    return density


def _lateral_body(x, y, frame: _LateralFrame, anatomy: _Anatomy):
    back = frame.back + 0.16 + anatomy.soft_tissue
    front = frame.front - anatomy.soft_tissue
    half, center = (back - front) / 2, (back + front) / 2
    ratio = np.clip(1 - np.square((x - center) / half), 0, 1)
    body = _inside(half - np.abs(x - center), 0.006) * (0.75 + 0.25 * np.sqrt(ratio))
    arms = _gauss(np.square(x - frame.front * 0.4) + 0.6 * np.square(y - frame.apex + 0.05), 0.1)
    return 1.1 * body + 0.45 * arms


def _lateral_lungs(x, y, frame: _LateralFrame):
    base = frame.dome + frame.sulcus
    middle = (frame.apex + base) / 2
    narrowing = 1 - 0.4 * np.square(np.clip((middle - y) / (middle - frame.apex), 0, 1))
    shell = _superellipse(x, y, (frame.front + frame.back) / 2, middle,
                          (frame.back - frame.front) / 2 * narrowing, (base - frame.apex) / 2, 2.4)
    position = (x - frame.front) / (frame.back - frame.front)
    diaphragm = frame.dome + 0.03 * np.square(position - 0.35) * 4 + 0.05 * np.clip(position - 0.6, 0, None) * 4
    lungs = _inside((1 - shell) * 0.05, 0.006) * _inside(diaphragm - y, 0.004)
    lungs *= 1 - 0.25 * _inside(y - diaphragm + 0.025, 0.004)
    return lungs, shell, diaphragm


def _lateral_fill(x, y, frame: _LateralFrame, findings: _Findings, shell, diaphragm, rng):
    """Lung markings and findings seen from the side: both lungs overlap, so sides merge."""
    hilum_y = frame.carina + 0.05
    radius = np.sqrt(np.square(x - frame.heart_x * 0.2) + np.square(y - hilum_y))
    fill = 0.35 * _gauss(radius * radius, 0.04) + 0.1 * np.exp(-radius / 0.15)
    angle = np.arctan2(y - hilum_y, x - frame.heart_x * 0.2)
    fill += 0.3 * _vessel_texture(rng, angle, x.shape) * np.exp(-radius / 0.15) * (1 - np.exp(-radius / 0.08))
    for lesion in findings.lesions:
        fill += _lateral_lesion(x, y, frame, lesion, rng)
    fill += LATERAL_VISIBILITY * EDEMA_FILL * findings.edema * _gauss(radius * radius, 0.09)
    if max(findings.effusion) > 0:
        fill += _lateral_effusion(x, y, frame, max(findings.effusion))
    if findings.thickening is not None:
        posterior_wall = _inside((shell - 0.9) * 0.05) * _inside(x - frame.back * 0.3, 0.02)
        fill += LATERAL_VISIBILITY * THICKENING_FILL * findings.thickening.strength * posterior_wall
    if findings.pneumothorax is not None:
        fill -= 0.15 * findings.pneumothorax.strength * _inside(frame.apex + 0.12 - y, 0.04)
    return fill


def _lateral_lesion(x, y, frame: _LateralFrame, lesion: _Lesion, rng: np.random.Generator):
    cx, cy = frame.lung_point(lesion, frame.dome)
    d2 = np.square(x - cx) + np.square(y - cy)
    if lesion.kind == "nodule":
        return LATERAL_VISIBILITY * NODULE_FILL * _inside(lesion.radius - np.sqrt(d2), 0.003)
    if lesion.kind == "band":
        band = _line(y - cy - 0.2 * (x - cx), 0.012) * _gauss(np.square(x - cx), lesion.radius * 0.6)
        return LATERAL_VISIBILITY * ATELECTASIS_FILL * lesion.strength * band
    texture = 0.6 + 0.4 * _smooth_noise(rng, x.shape, (12, 12))
    return LATERAL_VISIBILITY * CONSOLIDATION_FILL * lesion.strength * _gauss(d2, lesion.radius) * texture


def _lateral_effusion(x, y, frame: _LateralFrame, severity: float):
    """Fluid in the posterior costophrenic sulcus, its meniscus rising towards the back."""
    position = (x - frame.front) / (frame.back - frame.front)
    level = frame.dome + frame.sulcus - (0.05 + 0.25 * severity) * (frame.dome - frame.apex)
    return 1.2 * EFFUSION_FILL * _inside(y - level + 0.08 * np.square(position), 0.015)


def _lateral_bones(x, y, frame: _LateralFrame, anatomy: _Anatomy):
    spine_x = frame.back + 0.07 + 0.05 * np.square(y - 0.45)
    vertebrae = 0.75 + 0.25 * np.clip((np.cos(2 * math.pi * y / 0.048) + 0.7) / 1.7, 0, 1) ** 3
    bones = _inside(0.035 - np.abs(x - spine_x), 0.004) * vertebrae
    bones += 0.5 * _inside(0.025 - np.abs(x - spine_x - 0.06), 0.01)
    sternum = _inside(y - frame.apex - 0.12, 0.01) * _inside(frame.dome - 0.05 - y, 0.01)
    bones += 1.0 * _line(x - frame.front + 0.012 + 0.03 * (y - frame.apex), 0.008) * sternum
    rib_phase = (y - 0.4 * (x - frame.back) - frame.apex) / anatomy.rib_spacing
    ribs = np.clip((np.cos(2 * math.pi * rib_phase) - 0.5) / 0.5, 0, 1)
    behind_heart = _inside(x - frame.back * 0.2, 0.05) * _inside(spine_x - x, 0.01) * _inside(y - frame.apex, 0.02)
    bones += 0.4 * ribs * behind_heart
    return bones


def _lateral_devices(x, y, frame: _LateralFrame, findings: _Findings):
    metal = np.zeros_like(x)
    devices = set(findings.devices)
    trachea = frame.front * 0.1 + 0.1 * (y - frame.carina)
    if "ett" in devices:
        metal += _tube(x, y, trachea, np.full_like(x, 0.1), -0.2, frame.carina - 0.05, 0.008)
    if "ng" in devices:
        metal += _tube(x, y, trachea + 0.06, np.full_like(x, 0.1), -0.2, frame.dome + 0.1, 0.005)
    if "cvc" in devices:
        metal += _tube(x, y, trachea - 0.04, np.full_like(x, 0.1), -0.2, frame.carina + 0.04, 0.004)
    if "pacemaker" in devices:
        box = np.maximum(np.abs(x - frame.front + 0.02), 0.5 * np.abs(y - frame.apex - 0.09))
        metal += 1.5 * _inside(0.02 - box, 0.004)
    if "ecg" in devices:
        for _, level in findings.leads[:2]:
            ly = frame.apex + level * (frame.dome - frame.apex)
            distance = np.sqrt(np.square(x - frame.front + 0.03) + np.square(y - ly))
            metal += _line(distance - LEAD_RADIUS, 0.003)
    return metal


# ============================================================================================
# Writers
# ============================================================================================
def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then rename it into place."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def _write_jpg(path: Path, image: _Image) -> None:
    buffer = io.BytesIO()
    Image.fromarray(image.to_uint8()).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    _atomic_write(path, buffer.getvalue())


@dataclass(frozen=True)
class _DicomInfo:
    subject_id: int
    study_id: int
    view: _View
    series: int
    study_date: dt.date
    study_time: float
    seed: int
    sex: str


@dataclass(frozen=True)
class _DicomEncoding:
    photometric: str
    bits_stored: int
    voi: str
    transfer: str
    modality: str
    slope: float
    intercept: float
    window: tuple[int, int]  # stored values shown as black .. white


def _sample_encoding(rng: np.random.Generator) -> _DicomEncoding:
    bits = int(rng.choice(BITS_STORED_CHOICES, p=BITS_STORED_WEIGHTS))
    top = 2**bits - 1
    low = int(top * rng.uniform(*WINDOW_LOW_FRACTION))
    high = int(top * rng.uniform(*WINDOW_HIGH_FRACTION))
    return _DicomEncoding(
        photometric="MONOCHROME1" if rng.random() < MONOCHROME1_PROBABILITY else "MONOCHROME2",
        bits_stored=bits,
        voi=str(rng.choice(VOI_MODES, p=VOI_MODE_WEIGHTS)),
        transfer=str(rng.choice(TRANSFER_CHOICES, p=TRANSFER_WEIGHTS)),
        modality="DX" if rng.random() < DX_PROBABILITY else "CR",
        slope=float(rng.choice(RESCALE_SLOPES)),
        intercept=float(rng.choice(RESCALE_INTERCEPTS)),
        window=(low, high),
    )


def _stored_pixels(values: np.ndarray, encoding: _DicomEncoding) -> np.ndarray:
    """Stored DICOM values whose standard decoding gives back the display ``values``."""
    top = 2**encoding.bits_stored - 1
    target = values if encoding.photometric == "MONOCHROME2" else 1 - values
    if "window" in encoding.voi:
        low, high = encoding.window
        raw = low + target * (high - low)
    else:
        raw = np.clip(target, 0, 1) * top
    return np.clip(np.rint(raw), 0, top).astype(np.uint16)


def _write_dicom(path: Path, image: _Image, info: _DicomInfo, rng: np.random.Generator) -> None:
    encoding = _sample_encoding(rng)
    dataset = _dicom_dataset(image, info, encoding)
    _compress(dataset, encoding)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    _atomic_write(path, buffer.getvalue())


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[DEMO_UID_ENTROPY, *map(str, parts)])


def _dicom_dataset(image: _Image, info: _DicomInfo, encoding: _DicomEncoding) -> Dataset:
    sop_class = DX_SOP_CLASS if encoding.modality == "DX" else CR_SOP_CLASS
    instance_uid = _uid(info.seed, info.view.dicom_id)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = info.study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{info.study_time:013.6f}"
    ds.Modality = encoding.modality
    ds.Manufacturer = "raddiffusion synthetic demo"
    ds.StudyDescription = _PROCEDURE["AP" if info.view.position == "AP" else "PA"]
    ds.PatientName = synthetic_patient_name(info.subject_id)
    ds.PatientID = str(info.subject_id)
    ds.PatientBirthDate = synthetic_patient_birth_date(info.subject_id)
    ds.PatientSex = info.sex
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = info.view.position
    ds.StudyInstanceUID = _uid(info.seed, info.study_id)
    ds.SeriesInstanceUID = _uid(info.seed, info.study_id, info.series)
    ds.StudyID = str(info.study_id)
    ds.SeriesNumber = info.series + 1
    ds.InstanceNumber = 1
    if encoding.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    _set_pixels(ds, image, encoding)
    return ds


def _set_pixels(ds: Dataset, image: _Image, encoding: _DicomEncoding) -> None:
    pixels = _stored_pixels(image.values, encoding)
    ds.Rows, ds.Columns = pixels.shape
    spacing = round(DETECTOR_HEIGHT_MM / pixels.shape[0], 4)
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = encoding.photometric
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = 0
    slope, intercept = 1.0, 0.0
    if "rescale" in encoding.voi:
        slope, intercept = encoding.slope, encoding.intercept
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "US"
    if "window" in encoding.voi:
        low, high = (value * slope + intercept for value in encoding.window)
        ds.WindowWidth = high - low + 1
        ds.WindowCenter = (low + high) / 2 + 0.5
    ds.PixelData = pixels.tobytes()


def _compress(ds: Dataset, encoding: _DicomEncoding) -> None:
    if encoding.transfer == "jpeg2000":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    elif encoding.transfer == "rle":
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)


# --------------------------------------------------------------------------------------------
# Reports and CSVs
# --------------------------------------------------------------------------------------------
_SIDE = {-1: "right", 1: "left"}
_POSITIVE_SENTENCES = {
    "Atelectasis": "Linear opacity at the {side} base consistent with atelectasis.",
    "Cardiomegaly": "The heart is enlarged.",
    "Consolidation": "Focal consolidation in the {side} lung.",
    "Edema": "Perihilar haziness and vascular indistinctness consistent with pulmonary edema.",
    "Enlarged Cardiomediastinum": "The cardiomediastinal silhouette is widened.",
    "Fracture": "There is a fracture of a {side} rib.",
    "Lung Lesion": "A nodular opacity is seen in the {side} lung.",
    "Lung Opacity": "Patchy opacity in the {side} lung.",
    "Pleural Effusion": "There is a {side} pleural effusion.",
    "Pleural Other": "Pleural thickening along the {side} chest wall.",
    "Pneumonia": "Airspace opacity in the {side} lung concerning for pneumonia.",
    "Pneumothorax": "There is a {side} apical pneumothorax.",
    "Support Devices": "Support devices are in place: {devices}.",
}
_NEGATIVE_SENTENCES = {
    "Cardiomegaly": "Heart size is normal.",
    "Enlarged Cardiomediastinum": "The mediastinal contours are normal.",
    "Pleural Effusion": "No pleural effusion.",
    "Pneumothorax": "No pneumothorax.",
    "Consolidation": "No focal consolidation.",
    "Edema": "No pulmonary edema.",
    "Pleural Other": "No pleural thickening.",
}
_DEVICE_NAMES = {"ett": "endotracheal tube", "ng": "enteric tube", "cvc": "central venous catheter",
                 "ecg": "ECG leads", "pacemaker": "cardiac pacemaker"}


def _finding_side(name: str, findings: _Findings) -> str:
    located = {"Fracture": findings.fracture, "Pleural Other": findings.thickening,
               "Pneumothorax": findings.pneumothorax}.get(name)
    if located is not None:
        return _SIDE[located.side]
    if name == "Pleural Effusion" and all(s > 0 for s in findings.effusion):
        return "bilateral"
    if name == "Pleural Effusion" and any(s > 0 for s in findings.effusion):
        return _SIDE[-1 if findings.effusion[0] > 0 else 1]
    return _SIDE[findings.lesions[0].side] if findings.lesions else "right"


def _sentence(name: str, value: float, findings: _Findings) -> str | None:
    if name == "No Finding":
        return None
    if value in (1.0, -1.0) and name in _POSITIVE_SENTENCES:
        devices = ", ".join(_DEVICE_NAMES[d] for d in findings.devices) or "lines and tubes"
        text = _POSITIVE_SENTENCES[name].format(side=_finding_side(name, findings), devices=devices)
        return text if value == 1.0 else f"Possibly: {text[0].lower()}{text[1:]}"
    if value == 0.0:
        return _NEGATIVE_SENTENCES.get(name, f"No {name.lower()}.")
    return None


def _report(labels: tuple[float, ...], findings: _Findings, views: list[_View]) -> str:
    sentences = [s for name, value in zip(LABELS, labels) if (s := _sentence(name, value, findings))]
    abnormal = [s for s in sentences if not s.startswith(("No ", "Heart size", "The mediastinal"))]
    impression = " ".join(abnormal) if abnormal else "No acute cardiopulmonary process."
    findings_text = " ".join(sentences) or "Lungs are clear. Cardiomediastinal silhouette is normal."
    view_text = " and ".join(v.position for v in views)
    return (f"                                 FINAL REPORT\n"
            f" EXAMINATION:  CHEST RADIOGRAPH ({view_text})\n\n"
            f" INDICATION:  Synthetic demo study.\n\n"
            f" FINDINGS:\n {findings_text}\n\n"
            f" IMPRESSION:\n {impression}\n")


def _csv_bytes(columns: tuple[str, ...], rows: Iterable[tuple]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return gzip.compress(text.getvalue().encode(), mtime=0)


def _label_cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


def _write_csvs(out: Path, records: list[_SubjectRecords]) -> None:
    metadata = sorted((row for r in records for row in r.metadata), key=lambda row: (row[1], row[2]))
    split = sorted((row for r in records for row in r.split), key=lambda row: (row[2], row[1]))
    chexpert = sorted(row for r in records for row in r.chexpert)
    chexpert_cells = [(s, st, *map(_label_cell, values)) for s, st, *values in chexpert]
    _atomic_write(out / f"{METADATA_CSV}.gz", _csv_bytes(METADATA_COLUMNS, metadata))
    _atomic_write(out / f"{SPLIT_CSV}.gz", _csv_bytes(SPLIT_COLUMNS, split))
    _atomic_write(out / f"{CHEXPERT_CSV}.gz", _csv_bytes(CHEXPERT_COLUMNS, chexpert_cells))
