"""Shared fixtures: tiny MIMIC-layout trees written by hand, and the optional ../shared data."""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from raddiffusion.data.labels import CHEXPERT_LABELS as LABELS
from raddiffusion.data.mimic import CHEXPERT_CSV, METADATA_CSV, SPLIT_CSV, image_path

SHARED = Path(os.environ.get("RADDIFFUSION_SHARED", Path(__file__).resolve().parents[2] / "shared"))
TREE_IMAGE_SHAPE = (60, 50)  # rows, columns of the hand-written test images


@dataclass
class TreeImage:
    """One image of a hand-made tree; ``grey`` is its constant pixel value."""

    subject_id: int
    study_id: int
    dicom_id: str
    view: str
    grey: int
    split: str | None = None


@dataclass
class Tree:
    root: Path
    images: list[TreeImage]
    labels: dict[int, list[float]] = field(default_factory=dict)


def grey_jpg(path: Path, grey: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(TREE_IMAGE_SHAPE, grey, np.uint8)).save(path, quality=95)


def write_tree(
    root: Path,
    images: list[TreeImage],
    labels: dict[int, list[float]],
    with_split_file: bool = True,
    gzip_csvs: bool = True,
    write_images: bool = True,
) -> Tree:
    """Write a MIMIC-CXR-JPG shaped tree of constant-grey JPGs (unless not ``write_images``) and its CSVs."""
    if write_images:
        for im in images:
            grey_jpg(root / image_path(im.subject_id, im.study_id, im.dicom_id, ".jpg"), im.grey)
    metadata = pd.DataFrame(
        {
            "dicom_id": [i.dicom_id for i in images],
            "subject_id": [i.subject_id for i in images],
            "study_id": [i.study_id for i in images],
            "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
            "ViewPosition": [i.view for i in images],
            "Rows": TREE_IMAGE_SHAPE[0],
            "Columns": TREE_IMAGE_SHAPE[1],
            "StudyDate": 21800101,
            "StudyTime": "120000.000",
            "ProcedureCodeSequence_CodeMeaning": "",
            "ViewCodeSequence_CodeMeaning": "",
            "PatientOrientationCodeSequence_CodeMeaning": "",
        }
    )
    write_csv(root, METADATA_CSV, metadata, gzip_csvs)
    if with_split_file:
        split = pd.DataFrame(
            {
                "dicom_id": [i.dicom_id for i in images],
                "study_id": [i.study_id for i in images],
                "subject_id": [i.subject_id for i in images],
                "split": [i.split for i in images],
            }
        )
        write_csv(root, SPLIT_CSV, split, gzip_csvs)
    subject_of = {i.study_id: i.subject_id for i in images}
    chexpert = pd.DataFrame(
        [[subject_of[s], s, *values] for s, values in labels.items()], columns=["subject_id", "study_id", *LABELS]
    )
    write_csv(root, CHEXPERT_CSV, chexpert, gzip_csvs)
    return Tree(root, images, labels)


def write_csv(root: Path, name: str, frame: pd.DataFrame, gzipped: bool = True) -> Path:
    path = root / (f"{name}.gz" if gzipped else name)
    root.mkdir(parents=True, exist_ok=True)
    if gzipped:
        with gzip.open(path, "wt") as handle:
            frame.to_csv(handle, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def labels_row(**values: float) -> list[float]:
    """A CheXpert row: blank (NaN) except the given labels (names with spaces as underscores)."""
    row = [np.nan] * len(LABELS)
    for name, value in values.items():
        row[LABELS.index(name.replace("_", " "))] = value
    return row


def small_tree_images() -> list[TreeImage]:
    """Nine subjects over the three folder-rule splits; studies of 1-3 views; every grey distinct."""
    specs = [
        # subject, study, views
        (10000001, 50000001, ["PA", "LATERAL"]),
        (10000001, 50000002, ["AP"]),
        (11000002, 50000003, ["LATERAL", "PA", "LL"]),
        (12000003, 50000004, ["AP", "LATERAL"]),
        (13000004, 50000005, ["PA"]),
        (17000005, 50000006, ["LATERAL"]),
        (18000006, 50000007, ["PA", "LATERAL"]),
        (18000007, 50000008, ["AP"]),
        (19000008, 50000009, ["PA", "LATERAL"]),
    ]
    images, grey = [], 20
    for subject, study, views in specs:
        split = {"18": "validate", "19": "test"}.get(str(subject)[:2], "train")
        for k, view in enumerate(views):
            images.append(TreeImage(subject, study, f"{study:08d}-{k:02d}aa-dicom", view, grey, split))
            grey += 11
    return images


def small_labels() -> dict[int, list[float]]:
    """Labels for all but one train study (50000005 stays unlabelled); some uncertain values."""
    return {
        50000001: labels_row(Cardiomegaly=1.0, Edema=-1.0),
        50000002: labels_row(No_Finding=1.0),
        50000003: labels_row(Pleural_Effusion=1.0, Atelectasis=-1.0, Edema=0.0),
        50000004: labels_row(Support_Devices=1.0),
        50000006: labels_row(Pneumothorax=1.0),
        50000007: labels_row(Cardiomegaly=0.0, Lung_Opacity=1.0),
        50000008: labels_row(Edema=1.0),
        50000009: labels_row(Fracture=-1.0),
    }


@pytest.fixture
def small_tree(tmp_path: Path) -> Tree:
    return write_tree(tmp_path / "mimic", small_tree_images(), small_labels())


@pytest.fixture
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip("../shared/data is not present")
    return data


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: the tiny models gain nothing from more, and lose much when the CPUs are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
