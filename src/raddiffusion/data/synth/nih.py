"""The NIH ChestX-ray14 layout, written at the tree root itself::

    Data_Entry_2017_v2020.csv  train_val_list.txt  test_list.txt  images/00000001_000.png ...

NIH studies are single frontal images: each study's frontal (PA or AP) view becomes one 1024 x 1024
8-bit grey PNG (stretched from the rendered size, upright), named ``<patient>_<follow-up>.png``
with patients numbered 1, 2, ... in subject order and follow-ups 000, 001, ... in study order.
``RGBA_FRACTION`` of the images (at least one once there are ``RGBA_MIN_IMAGES``) are RGBA, grey
in RGB with alpha 255, as a few hundred are in the real release. Subjects of the synth's train and
validate folders (p10-p18) are listed in ``train_val_list.txt``, those of p19 in ``test_list.txt``.
Age and gender are synthetic; the original size and pixel spacing are the rendered image's.

``Finding Labels`` maps the study's CheXpert labels that are present (1.0, or -1.0 read as
present, since NIH has no uncertain value) through ``FINDINGS``; Lung Lesion becomes ``Mass``
when the drawn lesion's radius is at least ``MASS_RADIUS``, else ``Nodule``. Enlarged
Cardiomediastinum, Fracture and Support Devices have no NIH finding; a study with none of the
mapped findings is ``No Finding``. Emphysema, Fibrosis and Hernia never occur in the demo.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from ..labels import CHEXPERT_LABELS
from .findings import Findings
from .label_sampling import is_present
from .output import SynthSummary, atomic_write, csv_text, image_bytes
from .subjects import Study, SubjectPlan, run_subjects, subject_studies

IMAGES_DIR = "images"
OWN_DIR = IMAGES_DIR  # what must not exist yet under OUT
IMAGE_FORMAT = "png"
DATA_ENTRY_CSV = "Data_Entry_2017_v2020.csv"
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
TEST_SPLIT = "test"
IMAGE_SIZE = (1024, 1024)
RESAMPLE = Image.Resampling.LANCZOS
RGBA_FRACTION = 0.01
RGBA_MIN_IMAGES = 20
RGBA_SPAWN_KEY = 0  # the RGBA choice's random stream (subject streams have two-part keys)
SPACING_DECIMALS = 3
NO_FINDING = "No Finding"
FINDINGS = {  # CheXpert label -> NIH finding
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Lung Opacity": "Infiltration",
    "Pleural Effusion": "Effusion",
    "Pleural Other": "Pleural_Thickening",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}
LESION_LABEL = "Lung Lesion"
MASS_RADIUS = 0.024  # image heights; drawn lesion radii are 0.012 .. 0.03


def write(out: Path, plans: list[SubjectPlan], workers: int, progress: bool) -> SynthSummary:
    """Write the frontal views as PNGs, then the data entry CSV and the two split lists."""
    worker = functools.partial(_write_subject, out=out, rgba=_rgba_images(plans))
    records = list(run_subjects(worker, plans, workers, progress))
    rows = [row for subject_rows in records for row in subject_rows]
    atomic_write(out / DATA_ENTRY_CSV, csv_text(HEADER.split(","), rows).encode())
    atomic_write(out / TRAIN_VAL_LIST, _name_list(plans, records, test=False))
    atomic_write(out / TEST_LIST, _name_list(plans, records, test=True))
    return SynthSummary(subjects=len(plans), studies=len(rows), images=len(rows), labelled_studies=len(rows),
                        out=out, layout="nih", image_format=IMAGE_FORMAT)


def _finding_labels(study: Study) -> str:
    """The study's ``Finding Labels`` cell: sorted NIH findings joined by ``|``, or ``No Finding``."""
    present = {name for name, value in zip(CHEXPERT_LABELS, study.labels) if is_present(value)}
    found = {FINDINGS[name] for name in present if name in FINDINGS}
    if LESION_LABEL in present:
        found.add(_lesion_finding(study.findings))
    return "|".join(sorted(found)) or NO_FINDING


def _rgba_images(plans: list[SubjectPlan]) -> frozenset[tuple[int, int]]:
    """(subject index, study number) of the images written as RGBA; one image per study."""
    images = [(plan.index, number) for plan in plans for number in range(len(plan.study_ids))]
    count = round(RGBA_FRACTION * len(images))
    if len(images) >= RGBA_MIN_IMAGES:
        count = max(1, count)
    rng = np.random.default_rng(np.random.SeedSequence(plans[0].seed, spawn_key=(RGBA_SPAWN_KEY,)))
    return frozenset(images[i] for i in rng.choice(len(images), size=count, replace=False))


def _write_subject(plan: SubjectPlan, out: Path, rgba: frozenset[tuple[int, int]]) -> list[tuple]:
    rows = []
    for study in subject_studies(plan):
        view, image = next((v, i) for v, i in zip(study.views, study.images) if v.frontal)
        name = f"{plan.patient_number:08d}_{study.number:03d}.{IMAGE_FORMAT}"
        picture = image.picture().resize(IMAGE_SIZE, RESAMPLE)
        if (plan.index, study.number) in rgba:
            picture = picture.convert("RGBA")
        atomic_write(out / IMAGES_DIR / name, image_bytes(picture, IMAGE_FORMAT))
        height, width = image.values.shape
        spacing = round(image.pixel_spacing_mm, SPACING_DECIMALS)
        rows.append((name, _finding_labels(study), study.number, plan.patient_number, study.age, study.sex,
                     view.position, width, height, spacing, spacing))
    return rows


def _lesion_finding(findings: Findings) -> str:
    radii = [lesion.radius for lesion in findings.lesions if lesion.kind == "nodule"]
    return "Mass" if radii and radii[0] >= MASS_RADIUS else "Nodule"


def _name_list(plans: list[SubjectPlan], records: list[list[tuple]], test: bool) -> bytes:
    """One image name (a row's first field) per line, of the test subjects or of the others."""
    names = [row[0] for plan, rows in zip(plans, records) if (plan.split == TEST_SPLIT) == test for row in rows]
    return "".join(f"{name}\n" for name in names).encode()
