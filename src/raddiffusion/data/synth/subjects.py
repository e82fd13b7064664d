"""Demo subjects and their studies: identifiers, views, dates, labels and rendered images.

Every subject draws from its own random streams (seed, subject index, stream), so a subject's
studies are the same whichever worker process synthesizes it and whichever layout writes it.
"""
from __future__ import annotations

import datetime as dt
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import numpy as np
from tqdm import tqdm

from ..mimic import FOLDER_SPLITS
from .anatomy import jitter_anatomy, sample_anatomy, sample_pose
from .findings import Findings, findings_from_labels
from .label_sampling import sample_labels
from .render import FRONTAL_POSITIONS, Radiograph, render

# Identifiers and the folder split rule (p10-p17 train, p18 validate, p19 test)
FOLDER_DIGITS = tuple(FOLDER_SPLITS)
SUBJECTS_PER_FOLDER_ID_SPACE = 10**6
STUDY_ID_BASE = 5 * 10**7
STUDY_ID_SPACE = 10**7
DICOM_ID_GROUPS = 5
DICOM_ID_GROUP_HEX = 8
# Dates and ages
STUDY_YEARS = (2110, 2190)
DAYS_PER_YEAR = 365
MAX_DAYS_BETWEEN_STUDIES = 400
SECONDS_PER_DAY = 86_400
FIRST_STUDY_AGE = (18, 91)
# Study structure
STUDIES_PER_SUBJECT = {1: 0.6, 2: 0.3, 3: 0.1}
VIEWS_PER_STUDY = {1: 0.45, 2: 0.45, 3: 0.08, 4: 0.02}
AP_PROBABILITY_WITH_DEVICES = 0.75
AP_PROBABILITY_WITHOUT_DEVICES = 0.3
LL_PROBABILITY = 0.2
RECUMBENT_PROBABILITY_AP = 0.4
UNLABELLED_FRACTION = 0.05
EXPECTED_IMAGES_PER_SUBJECT = (
    sum(k * p for k, p in STUDIES_PER_SUBJECT.items()) * sum(k * p for k, p in VIEWS_PER_STUDY.items())
)
PROCEDURE = {"AP": "CHEST (PORTABLE AP)", "PA": "CHEST (PA AND LAT)"}
# Random streams of a subject
RENDER_STREAM = 0
DICOM_STREAM = 1
AGE_STREAM = 2
FOR_PROCESSING_STREAM = 3

Result = TypeVar("Result")


@dataclass(frozen=True)
class SubjectPlan:
    """One subject to synthesize: its place in the plan, its ids and the seed."""

    index: int
    subject_id: int
    study_ids: tuple[int, ...]
    seed: int

    @property
    def folder(self) -> int:
        """The MIMIC folder digits (10..19) of the subject."""
        return self.subject_id // SUBJECTS_PER_FOLDER_ID_SPACE

    @property
    def split(self) -> str:
        """train, validate or test, by the MIMIC folder rule."""
        return FOLDER_SPLITS[self.folder]

    @property
    def patient_number(self) -> int:
        """1, 2, ... in plan order: the patient number of the CheXpert and NIH layouts."""
        return self.index + 1

    def rng(self, stream: int) -> np.random.Generator:
        """The subject's random stream ``stream``."""
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.index, stream)))


@dataclass(frozen=True)
class View:
    """One image of a study: its MIMIC dicom_id and view position (PA, AP, LATERAL or LL)."""

    dicom_id: str
    position: str

    @property
    def frontal(self) -> bool:
        return self.position in FRONTAL_POSITIONS


@dataclass(frozen=True)
class Study:
    """One synthesized study with its views rendered; the frontal view comes first."""

    number: int  # position among the subject's studies, from 0
    study_id: int
    date: dt.date
    time: float  # HHMMSS.fff
    orientation: str
    labels: tuple[float, ...]  # CheXpert values in CHEXPERT_LABELS order (NaN = not mentioned)
    findings: Findings
    views: tuple[View, ...]
    images: tuple[Radiograph, ...]
    labelled: bool  # False for the MIMIC studies without a CheXpert row
    sex: str  # F or M
    age: int


def plan_subjects(subjects: int, seed: int) -> list[SubjectPlan]:
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
        SubjectPlan(i, int(subject_ids[i]), tuple(int(s) for s in study_ids[starts[i]:starts[i + 1]]), seed)
        for i in range(subjects)
    ]


def run_subjects(worker: Callable[[SubjectPlan], Result], plans: list[SubjectPlan], workers: int,
                 progress: bool) -> Iterator[Result]:
    """``worker(plan)`` for every plan, in plan order, on up to ``workers`` processes."""
    workers = max(1, min(workers, len(plans)))
    with tqdm(total=len(plans), unit="subject", desc="synth", disable=not progress) as bar:
        if workers == 1:
            yield from _counted(map(worker, plans), bar)
            return
        chunk = max(1, len(plans) // (workers * 16))
        with ProcessPoolExecutor(max_workers=workers, mp_context=_process_context()) as pool:
            yield from _counted(pool.map(worker, plans, chunksize=chunk), bar)


def subject_studies(plan: SubjectPlan) -> Iterator[Study]:
    """The subject's studies in order, each drawn and rendered from the subject's render stream."""
    rng = plan.rng(RENDER_STREAM)
    anatomy = sample_anatomy(rng)
    first_date = study_date = _first_study_date(rng)
    first_age = int(plan.rng(AGE_STREAM).integers(*FIRST_STUDY_AGE))
    for number, study_id in enumerate(plan.study_ids):
        labels = sample_labels(rng)
        findings = findings_from_labels(labels, rng)
        views = _sample_views(rng, findings)
        study_time = _study_time(rng)
        study_anatomy = jitter_anatomy(anatomy, rng)
        orientation = _patient_orientation(rng, views[0].position)
        images = tuple(render(study_anatomy, sample_pose(rng), findings, view.position, rng) for view in views)
        labelled = rng.random() >= UNLABELLED_FRACTION
        age = first_age + (study_date - first_date).days // DAYS_PER_YEAR
        yield Study(number, study_id, study_date, study_time, orientation, labels, findings, views, images,
                    labelled, anatomy.sex, age)
        study_date += dt.timedelta(days=int(rng.integers(1, MAX_DAYS_BETWEEN_STUDIES)))


def _counted(results: Iterator[Result], bar: tqdm) -> Iterator[Result]:
    for result in results:
        yield result
        bar.update()


def _process_context():
    """Fork where the platform has it (no ``__main__`` guard needed in user scripts)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _draw(rng: np.random.Generator, distribution: dict, size: int | None = None):
    values = np.array(list(distribution))
    return rng.choice(values, size=size, p=np.array(list(distribution.values())))


def _sample_views(rng: np.random.Generator, findings: Findings) -> tuple[View, ...]:
    count = int(_draw(rng, VIEWS_PER_STUDY))
    ap_probability = AP_PROBABILITY_WITH_DEVICES if findings.devices else AP_PROBABILITY_WITHOUT_DEVICES
    positions = ["AP" if rng.random() < ap_probability else "PA"]
    positions += ["LL" if rng.random() < LL_PROBABILITY else "LATERAL" for _ in range(count - 1)]
    return tuple(View(_dicom_id(rng), position) for position in positions)


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
