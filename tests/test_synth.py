"""Tests of the built-in demo data generator: MIMIC-CXR, CheXpert-v1.0-small and NIH ChestX-ray14 layouts."""
from __future__ import annotations

import csv
import gzip
import importlib
import inspect
import pkgutil
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from raddiffusion.cli import main
from raddiffusion.data import synth
from raddiffusion.data.labels import CHEXPERT_LABELS as LABELS
from raddiffusion.data.synth import SynthSummary, synthesize, synthetic_patient_name
from raddiffusion.data.synth.anatomy import sample_anatomy, sample_pose
from raddiffusion.data.synth.findings import Findings
from raddiffusion.data.synth.label_sampling import label_stats
from raddiffusion.data.synth.render import render

METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
]
SPLIT_COLUMNS = ["dicom_id", "study_id", "subject_id", "split"]
CHEXPERT_COLUMNS = ["subject_id", "study_id", *LABELS]
FRONTAL = {"PA", "AP"}
LATERAL = {"LATERAL", "LL"}
IMAGE_PATH = re.compile(
    r"files/p(1\d)/p(1\d{7})/s(5\d{7})/([0-9a-f]{8}(?:-[0-9a-f]{8}){4})\.(jpg|dcm)$")
COMMON_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity", "No Finding",
                 "Pleural Effusion", "Support Devices")
LEARN_SIZE = 32
APPEARANCE_SIZE = 64


# ------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jpg_tree(tmp_path_factory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "jpg"
    return out, synthesize(out, subjects=200, fmt="jpg", seed=0, workers=2, progress=False)


@pytest.fixture(scope="module")
def dicom_pair(tmp_path_factory) -> tuple[Path, Path]:
    """The same small demo set written once as DICOM and once as JPG."""
    root = tmp_path_factory.mktemp("pair")
    synthesize(root / "dicom", subjects=30, fmt="dicom", seed=1, workers=2, progress=False)
    synthesize(root / "jpg", subjects=30, fmt="jpg", seed=1, workers=2, progress=False)
    return root / "dicom", root / "jpg"


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with gzip.open(path, "rt", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def image_path(root: Path, row: dict[str, str], suffix: str) -> Path:
    subject = row["subject_id"]
    return root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{row['study_id']}" / f"{row['dicom_id']}{suffix}"


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def frontal_images(root: Path, size: int) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Labelled frontal views, downsampled to ``size``², with their chexpert rows."""
    _, metadata = read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    _, chexpert = read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    labels = {row["study_id"]: row for row in chexpert}
    images, rows = [], []
    for row in metadata:
        if row["ViewPosition"] in FRONTAL and row["study_id"] in labels:
            image = Image.open(image_path(root, row, ".jpg")).convert("L").resize((size, size), Image.BILINEAR)
            images.append(np.asarray(image, dtype=np.float32) / 255)
            rows.append(labels[row["study_id"]])
    return np.stack(images), rows


def positive(rows: list[dict[str, str]], name: str) -> np.ndarray:
    """U-ones targets: 1.0 and -1.0 are positive."""
    return np.array([row[name] in ("1.0", "-1.0") for row in rows])


def decode_dicom(ds: pydicom.Dataset) -> np.ndarray:
    """Display values 0..255: modality LUT, VOI window, bit depth, MONOCHROME1 inversion."""
    values = ds.pixel_array.astype(np.float64)
    slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
    values = values * slope + intercept
    if "WindowCenter" in ds:
        center, width = float(ds.WindowCenter), float(ds.WindowWidth)
        display = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    else:
        top = (2**ds.BitsStored - 1) * slope + intercept
        display = (values - intercept) / (top - intercept)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        display = 1 - display
    return display * 255


# ------------------------------------------------------------------------------------------
# Layout, identifiers, CSVs
# ------------------------------------------------------------------------------------------
def test_layout_and_csv_columns_match_mimic(jpg_tree):
    root, summary = jpg_tree
    metadata_columns, metadata = read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    split_columns, _ = read_csv(root / "mimic-cxr-2.0.0-split.csv.gz")
    chexpert_columns, _ = read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert metadata_columns == METADATA_COLUMNS
    assert split_columns == SPLIT_COLUMNS
    assert chexpert_columns == CHEXPERT_COLUMNS

    files = [p for p in (root / "files").rglob("*") if p.is_file()]
    images = {p.relative_to(root).as_posix() for p in files if p.suffix == ".jpg"}
    assert images == {image_path(root, row, ".jpg").relative_to(root).as_posix() for row in metadata}
    assert not [p for p in files if p.suffix not in (".jpg", ".txt")], "stray (temporary?) files"
    for name in images:
        folder, subject, study, _, _ = IMAGE_PATH.search(name).groups()
        assert subject.startswith(folder)
        report = (root / name).parent.with_suffix(".txt")
        text = report.read_text()
        assert "FINDINGS:" in text and "IMPRESSION:" in text
    assert summary.images == len(metadata) == len(images)
    assert summary.subjects == 200 and summary.out == root


def test_image_sizes_match_metadata_and_vary(jpg_tree):
    root, _ = jpg_tree
    _, metadata = read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    sizes = set()
    for row in metadata:
        with Image.open(image_path(root, row, ".jpg")) as image:
            assert image.mode == "L" and image.format == "JPEG"
            assert image.size == (int(row["Columns"]), int(row["Rows"]))
            assert 448 <= min(image.size) and max(image.size) <= 576 and image.size[0] != image.size[1]
            sizes.add(image.size)
    assert len(sizes) > 20


def test_identifiers_are_mimic_shaped_and_unique(jpg_tree):
    root, summary = jpg_tree
    _, metadata = read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert len({row["dicom_id"] for row in metadata}) == len(metadata)
    study_owner = {}
    for row in metadata:
        assert re.fullmatch(r"1\d{7}", row["subject_id"]) and re.fullmatch(r"5\d{7}", row["study_id"])
        assert study_owner.setdefault(row["study_id"], row["subject_id"]) == row["subject_id"]
        assert re.fullmatch(r"21\d{6}", row["StudyDate"])
    studies_per_subject = Counter(study_owner.values())
    assert set(studies_per_subject.values()) <= {1, 2, 3} and len(set(studies_per_subject.values())) > 1
    assert len(studies_per_subject) == 200 and summary.studies == len(study_owner)


def test_splits_follow_folder_rule_and_are_patient_disjoint(jpg_tree):
    root, _ = jpg_tree
    _, split = read_csv(root / "mimic-cxr-2.0.0-split.csv.gz")
    _, metadata = read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert {row["dicom_id"] for row in split} == {row["dicom_id"] for row in metadata}
    expected = {**{f"1{d}": "train" for d in range(8)}, "18": "validate", "19": "test"}
    splits_of_subject = defaultdict(set)
    for row in split:
        assert row["split"] == expected[row["subject_id"][:2]]
        splits_of_subject[row["subject_id"]].add(row["split"])
    assert all(len(s) == 1 for s in splits_of_subject.values())
    folders = Counter(subject[:2] for subject in splits_of_subject)
    assert set(folders) == set(expected) and max(folders.values()) - min(folders.values()) <= 1
    subjects_per_split = Counter(next(iter(s)) for s in splits_of_subject.values())
    assert subjects_per_split == {"train": 160, "validate": 20, "test": 20}


def test_views_per_study(jpg_tree):
    root, _ = jpg_tree
    _, metadata = read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    views = defaultdict(list)
    for row in metadata:
        views[row["study_id"]].append(row["ViewPosition"])
    for positions in views.values():
        assert 1 <= len(positions) <= 4
        assert sum(p in FRONTAL for p in positions) == 1
        assert all(p in FRONTAL | LATERAL for p in positions)
    counts = Counter(len(p) for p in views.values())
    assert counts[2] + counts[3] + counts[4] > 0.35 * len(views)
    assert counts[1] > 0.3 * len(views)
    frontal = Counter(p for positions in views.values() for p in positions if p in FRONTAL)
    assert frontal["AP"] > 0.2 * len(views) and frontal["PA"] > 0.2 * len(views)


def test_labels_have_uncertain_blank_and_unlabelled_studies(jpg_tree):
    root, summary = jpg_tree
    _, metadata = read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    _, chexpert = read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    values = Counter(row[name] for row in chexpert for name in LABELS)
    assert set(values) <= {"1.0", "0.0", "-1.0", ""}
    assert values["-1.0"] > 0 and values["0.0"] > 0 and values["1.0"] > 0 and values[""] > values["1.0"]
    labelled = {row["study_id"] for row in chexpert}
    studies = {row["study_id"] for row in metadata}
    assert len(labelled) == len(chexpert) == summary.labelled_studies
    assert labelled < studies
    assert 0.01 < 1 - len(labelled) / len(studies) < 0.12
    prevalence = {name: np.mean(positive(chexpert, name)) for name in LABELS}
    assert prevalence["Support Devices"] > prevalence["Pleural Other"]
    assert 0.2 < prevalence["Lung Opacity"] < 0.8


def test_reports_agree_with_labels(jpg_tree):
    root, _ = jpg_tree
    _, chexpert = read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    checked = 0
    for row in chexpert:
        subject = row["subject_id"]
        report = (root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{row['study_id']}.txt").read_text()
        if row["Pleural Effusion"] == "1.0":
            assert "pleural effusion" in report and "No pleural effusion" not in report
            checked += 1
        elif row["Pleural Effusion"] == "0.0":
            assert "No pleural effusion" in report
    assert checked > 10


def test_label_statistics_are_packaged_not_read_from_shared():
    stats = label_stats()
    assert stats.vectors.shape == (400, len(LABELS))
    assert np.isclose(stats.probabilities.sum(), 1.0)
    modules = [importlib.import_module(f"{synth.__name__}.{m.name}") for m in pkgutil.iter_modules(synth.__path__)]
    source = inspect.getsource(synth) + "".join(inspect.getsource(module) for module in modules)
    assert "/work/shared" not in source and "chexpert-label-stats" not in source


# ------------------------------------------------------------------------------------------
# DICOM
# ------------------------------------------------------------------------------------------
def test_dicom_variety_and_every_file_decodes(dicom_pair):
    root, _ = dicom_pair
    _, metadata = read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    photometric, bits, transfer, voi = Counter(), Counter(), Counter(), Counter()
    for row in metadata:
        path = image_path(root, row, ".dcm")
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        assert pixels.shape == (int(row["Rows"]), int(row["Columns"])) == (ds.Rows, ds.Columns)
        assert ds.BitsAllocated == 16 and 12 <= ds.BitsStored <= 16
        assert 2 ** (ds.BitsStored - 1) < pixels.max() < 2**ds.BitsStored
        assert ds.ViewPosition == row["ViewPosition"] and ds.Modality in ("CR", "DX")
        assert str(ds.PatientName) == synthetic_patient_name(int(row["subject_id"]))
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        photometric[ds.PhotometricInterpretation] += 1
        bits[ds.BitsStored] += 1
        transfer[ds.file_meta.TransferSyntaxUID] += 1
        voi[("WindowCenter" in ds, "RescaleSlope" in ds)] += 1
    assert set(photometric) == {"MONOCHROME1", "MONOCHROME2"}
    assert len(bits) >= 3
    compressed = {uid for uid in transfer if uid.is_compressed}
    assert compressed and transfer[pydicom.uid.ExplicitVRLittleEndian] > sum(transfer[u] for u in compressed)
    assert len(voi) == 4


def test_decoded_dicom_looks_like_its_jpg_counterpart(dicom_pair):
    dicom_root, jpg_root = dicom_pair
    _, metadata = read_csv(dicom_root / "mimic-cxr-2.0.0-metadata.csv.gz")
    for row in metadata:
        decoded = decode_dicom(pydicom.dcmread(image_path(dicom_root, row, ".dcm")))
        jpg = np.asarray(Image.open(image_path(jpg_root, row, ".jpg")), dtype=np.float64)
        assert np.abs(decoded - jpg).mean() < 3.0, row["dicom_id"]


def test_dicom_uids_are_unique_and_views_share_the_study_uid(dicom_pair):
    root, _ = dicom_pair
    _, metadata = read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    study_uids, instance_uids = defaultdict(set), set()
    for row in metadata:
        ds = pydicom.dcmread(image_path(root, row, ".dcm"), stop_before_pixels=True)
        study_uids[row["study_id"]].add(ds.StudyInstanceUID)
        instance_uids.add(ds.SOPInstanceUID)
    assert all(len(uids) == 1 for uids in study_uids.values())
    assert len({next(iter(u)) for u in study_uids.values()}) == len(study_uids)
    assert len(instance_uids) == len(metadata)


# ------------------------------------------------------------------------------------------
# Determinism and argument checks
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["dicom", "jpg"])
def test_same_seed_is_byte_identical_for_any_worker_count(tmp_path, fmt):
    synthesize(tmp_path / "a", subjects=6, fmt=fmt, seed=3, workers=1, progress=False)
    synthesize(tmp_path / "b", subjects=6, fmt=fmt, seed=3, workers=2, progress=False)
    synthesize(tmp_path / "c", subjects=6, fmt=fmt, seed=4, workers=1, progress=False)
    first, second, other = (tree_bytes(tmp_path / name) for name in "abc")
    assert first == second
    assert set(first) != set(other)


def test_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="dicom"):
        synthesize(tmp_path, subjects=2, fmt="png", progress=False)
    assert not (tmp_path / "files").exists()


def test_refuses_to_write_into_an_existing_tree(tmp_path):
    (tmp_path / "files").mkdir()
    with pytest.raises(FileExistsError, match="files"):
        synthesize(tmp_path, subjects=2, progress=False)
    assert not list((tmp_path / "files").iterdir())


# ------------------------------------------------------------------------------------------
# Images follow the labels
# ------------------------------------------------------------------------------------------
def test_labels_are_learnable_but_not_trivially(jpg_tree):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images, rows = frontal_images(jpg_tree[0], LEARN_SIZE)
    features = images.reshape(len(images), -1)
    aurocs = {}
    for name in COMMON_LABELS:
        target = positive(rows, name)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, class_weight="balanced", max_iter=2000))
        folds = StratifiedKFold(3, shuffle=True, random_state=0)
        scores = cross_val_predict(model, features, target, cv=folds, method="predict_proba")[:, 1]
        aurocs[name] = roc_auc_score(target, scores)
    assert sum(auroc > 0.65 for auroc in aurocs.values()) >= 4, aurocs
    assert np.mean(list(aurocs.values())) < 0.9, aurocs
    assert max(aurocs.values()) < 0.99, aurocs


def test_heart_and_effusion_regions_are_brighter_when_labelled(jpg_tree):
    from sklearn.metrics import roc_auc_score

    images, rows = frontal_images(jpg_tree[0], APPEARANCE_SIZE)
    beside_heart = images[:, 34:46, 44:54].mean(axis=(1, 2))
    lower_zones = np.concatenate([images[:, 36:48, 4:20], images[:, 36:48, 44:60]], axis=2).mean(axis=(1, 2))
    assert roc_auc_score(positive(rows, "Cardiomegaly"), beside_heart) > 0.58
    assert roc_auc_score(positive(rows, "Pleural Effusion"), lower_zones) > 0.62


def render_frontal(findings: Findings, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng)
    pose = sample_pose(rng)
    return render(anatomy, pose, findings, "PA", rng).display


def tube_pixels(image: np.ndarray) -> int:
    """Pixels of thin bright vertical lines in the upper midline (where a tracheal tube runs)."""
    height, width = image.shape
    ridge = image[:, 4:-4] - 0.5 * (image[:, :-8] + image[:, 8:])
    half = int(0.06 * height)
    return int((ridge[int(0.02 * height):int(0.25 * height), width // 2 - 4 - half:width // 2 - 4 + half] > 0.06).sum())


@pytest.mark.parametrize("seed", range(4))
def test_same_anatomy_shows_the_finding(seed):
    normal = render_frontal(Findings(), seed)
    height, width = normal.shape
    heart_rows = slice(int(0.55 * height), int(0.68 * height))
    bright_width = lambda image: (image[heart_rows] > 0.6).sum(axis=1).mean()
    assert bright_width(render_frontal(Findings(cardiomegaly=1.0), seed)) > bright_width(normal) + 0.04 * width
    bases = slice(int(0.55 * height), int(0.7 * height))
    effusion = render_frontal(Findings(effusion=(1.0, 1.0)), seed)
    assert effusion[bases].mean() > normal[bases].mean() + 0.03
    tube = render_frontal(Findings(devices=("ett",)), seed)
    assert tube_pixels(tube) > tube_pixels(normal) + 0.4 * height


def test_appearance_is_upright(jpg_tree):
    images, _ = frontal_images(jpg_tree[0], APPEARANCE_SIZE)
    mean = images.mean(axis=0)
    lungs = np.concatenate([mean[16:36, 8:24], mean[16:36, 40:56]])
    abdomen, mediastinum = mean[52:60, 16:48], mean[16:36, 29:35]
    assert lungs.mean() + 0.2 < abdomen.mean() and lungs.mean() + 0.2 < mediastinum.mean()


# ------------------------------------------------------------------------------------------
# CheXpert-v1.0-small and NIH ChestX-ray14 layouts
# ------------------------------------------------------------------------------------------
CHEXPERT_LABEL_COLUMNS = (
    "No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,"
    "Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices"
)
CHEXPERT_HEADER = f"Path,Sex,Age,Frontal/Lateral,AP/PA,{CHEXPERT_LABEL_COLUMNS}"
CHEXPERT_TEST_HEADER = f"Path,{CHEXPERT_LABEL_COLUMNS}"
CHEXPERT_PATH = re.compile(r"(train|valid|test)/patient(\d{5})/study(\d+)/view(\d+)_(frontal|lateral)\.jpg")
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NIH_FINDINGS = {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
                "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax"}
LAYOUT_SUBJECTS = 20  # two subjects per MIMIC folder: 16 train, 2 validate, 2 test; at least 20 NIH images
LAYOUT_SEED = 2


@pytest.fixture(scope="module")
def layout_trees(tmp_path_factory) -> dict[str, tuple[Path, SynthSummary]]:
    """The same subjects written in each layout."""
    root = tmp_path_factory.mktemp("layouts")
    return {layout: (root / layout, synthesize(root / layout, subjects=LAYOUT_SUBJECTS, seed=LAYOUT_SEED, workers=2,
                                               progress=False, layout=layout))
            for layout in ("mimic", "chexpert", "nih")}


def read_plain_csv(path: Path) -> tuple[str, list[dict[str, str]]]:
    """The header line and the rows of an uncompressed CSV."""
    text = path.read_text()
    return text.splitlines()[0], list(csv.DictReader(text.splitlines()))


def chexpert_rows(root: Path) -> dict[str, list[dict[str, str]]]:
    """Rows of train.csv, valid.csv and test_labels.csv, each with ``image`` (path relative to the dataset)."""
    dataset = root / "CheXpert-v1.0-small"
    rows = {}
    for split, name in (("train", "train.csv"), ("valid", "valid.csv"), ("test", "test_labels.csv")):
        _, rows[split] = read_plain_csv(dataset / name)
        for row in rows[split]:
            row["image"] = row["Path"] if split == "test" else row["Path"].removeprefix("CheXpert-v1.0-small/")
    return rows


def test_chexpert_headers_paths_and_files(layout_trees):
    root, summary = layout_trees["chexpert"]
    dataset = root / "CheXpert-v1.0-small"
    assert read_plain_csv(dataset / "train.csv")[0] == CHEXPERT_HEADER
    assert read_plain_csv(dataset / "valid.csv")[0] == CHEXPERT_HEADER
    assert read_plain_csv(dataset / "test_labels.csv")[0] == CHEXPERT_TEST_HEADER
    rows = chexpert_rows(root)
    for split, split_rows in rows.items():
        assert split_rows, split
        for row in split_rows:
            if split != "test":
                assert row["Path"].startswith(f"CheXpert-v1.0-small/{split}/")
            match = CHEXPERT_PATH.fullmatch(row["image"])
            assert match and match.group(1) == split, row["Path"]
            assert (dataset / row["image"]).is_file()
    listed = {row["image"] for split_rows in rows.values() for row in split_rows}
    on_disk = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file() and p.suffix != ".csv"}
    assert on_disk == listed and len(listed) == sum(map(len, rows.values())) == summary.images
    patients = {int(CHEXPERT_PATH.fullmatch(image).group(2)) for image in listed}
    assert sorted(patients) == list(range(1, LAYOUT_SUBJECTS + 1))


def test_chexpert_studies_keep_their_views_and_labels(layout_trees):
    root, summary = layout_trees["chexpert"]
    studies = defaultdict(list)
    for split_rows in chexpert_rows(root).values():
        for row in split_rows:
            view, side = CHEXPERT_PATH.fullmatch(row["image"]).group(4, 5)
            studies[row["image"].rsplit("/", 1)[0]].append((int(view), side, row))
    for folder, views in studies.items():
        assert [number for number, _, _ in views] == list(range(1, len(views) + 1)), folder
        assert [side for _, side, _ in views] == ["frontal"] + ["lateral"] * (len(views) - 1), folder
        labels = {tuple(row[name] for name in LABELS) for _, _, row in views}
        assert len(labels) == 1, folder
        assert len(list((root / "CheXpert-v1.0-small" / folder).iterdir())) == len(views)
        for _, side, row in views:
            if "Frontal/Lateral" in row:
                assert row["Frontal/Lateral"] == side.capitalize()
                assert row["AP/PA"] in (("AP", "PA") if side == "frontal" else ("",))
    assert summary.studies == summary.labelled_studies == len(studies)
    mimic_root, mimic_summary = layout_trees["mimic"]
    _, metadata = read_csv(mimic_root / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert Counter(Counter(row["study_id"] for row in metadata).values()) == Counter(map(len, studies.values()))
    assert summary.images == mimic_summary.images and summary.studies == mimic_summary.studies


def test_chexpert_values_demographics_and_image_sizes(layout_trees):
    root, _ = layout_trees["chexpert"]
    rows = chexpert_rows(root)
    train_values = Counter(row[name] for row in rows["train"] for name in LABELS)
    assert set(train_values) <= {"1.0", "0.0", "-1.0", ""} and train_values[""] > 0
    for split in ("valid", "test"):
        assert {row[name] for row in rows[split] for name in LABELS} == {"0.0", "1.0"}, split
    for row in rows["train"] + rows["valid"]:
        assert row["Sex"] in ("Female", "Male") and 18 <= int(row["Age"]) < 120
    for row in rows["train"][:10] + rows["test"]:
        with Image.open(root / "CheXpert-v1.0-small" / row["image"]) as image:
            assert image.format == "JPEG" and image.mode == "L"
            assert min(image.size) == 320 and max(image.size) <= 420


def nih_rows(root: Path) -> list[list[str]]:
    with open(root / "Data_Entry_2017_v2020.csv", newline="") as handle:
        return list(csv.reader(handle))


def test_nih_csv_lists_and_files(layout_trees):
    root, summary = layout_trees["nih"]
    header, *rows = nih_rows(root)
    assert ",".join(header) == NIH_HEADER == (root / "Data_Entry_2017_v2020.csv").read_text().splitlines()[0]
    assert rows and all(len(row) == 11 for row in rows)
    names = [row[0] for row in rows]
    assert len(set(names)) == len(names) == summary.images == summary.studies
    for name, findings, follow_up, patient, age, gender, view, width, height, spacing_x, spacing_y in rows:
        assert re.fullmatch(r"\d{8}_\d{3}\.png", name)
        assert (int(name[:8]), int(name[9:12])) == (int(patient), int(follow_up))
        assert findings == "No Finding" or set(findings.split("|")) <= NIH_FINDINGS
        assert findings.split("|") == sorted(set(findings.split("|")))
        assert gender in ("F", "M") and view in ("PA", "AP") and 18 <= int(age) < 120
        assert 448 <= int(width) <= 576 and 448 <= int(height) <= 576 and spacing_x == spacing_y
    follow_ups = defaultdict(list)
    for row in rows:
        follow_ups[int(row[3])].append(int(row[2]))
    assert sorted(follow_ups) == list(range(1, LAYOUT_SUBJECTS + 1))
    assert all(numbers == list(range(len(numbers))) for numbers in follow_ups.values())
    train_val = (root / "train_val_list.txt").read_text().splitlines()
    test = (root / "test_list.txt").read_text().splitlines()
    assert sorted(train_val + test) == sorted(names)
    assert not {n[:8] for n in train_val} & {n[:8] for n in test}
    assert len({n[:8] for n in test}) == 2
    assert {p.name for p in (root / "images").iterdir()} == set(names)
    assert {p.name for p in root.iterdir()} == {"images", "Data_Entry_2017_v2020.csv", "train_val_list.txt",
                                                "test_list.txt"}


def test_nih_findings_and_views_match_the_mimic_studies(layout_trees):
    root, _ = layout_trees["nih"]
    _, *rows = nih_rows(root)
    findings = Counter(f for row in rows for f in row[1].split("|"))
    assert findings["No Finding"] > 0 and len(set(findings) & NIH_FINDINGS) >= 4
    assert not {"Emphysema", "Fibrosis", "Hernia"} & set(findings)
    assert all(row[1] == "No Finding" or "No Finding" not in row[1] for row in rows)
    mimic_root, _ = layout_trees["mimic"]
    _, metadata = read_csv(mimic_root / "mimic-cxr-2.0.0-metadata.csv.gz")
    frontal = [row for row in metadata if row["ViewPosition"] in FRONTAL]
    assert Counter((row[7], row[8], row[6]) for row in rows) == Counter(
        (row["Columns"], row["Rows"], row["ViewPosition"]) for row in frontal)


def test_nih_images_are_1024_grey_with_a_few_rgba(layout_trees):
    root, _ = layout_trees["nih"]
    modes = Counter()
    for path in sorted((root / "images").iterdir()):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (1024, 1024)
            modes[image.mode] += 1
            if image.mode == "RGBA":
                pixels = np.asarray(image)
                assert (pixels[..., 3] == 255).all()
                assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert set(modes) == {"L", "RGBA"} and 1 <= modes["RGBA"] < modes["L"]


@pytest.mark.parametrize("layout", ["chexpert", "nih"])
def test_layouts_are_byte_identical_for_any_worker_count(tmp_path, layout):
    synthesize(tmp_path / "a", subjects=4, seed=3, workers=1, progress=False, layout=layout)
    synthesize(tmp_path / "b", subjects=4, seed=3, workers=2, progress=False, layout=layout)
    synthesize(tmp_path / "c", subjects=4, seed=4, workers=1, progress=False, layout=layout)
    first, second, other = (tree_bytes(tmp_path / name) for name in "abc")
    assert first == second and not [name for name in first if ".tmp" in name]
    assert first != other


@pytest.mark.parametrize("layout, folder", [("chexpert", "CheXpert-v1.0-small"), ("nih", "images")])
def test_layouts_reject_dicom_and_existing_trees(tmp_path, layout, folder):
    with pytest.raises(ValueError, match="mimic"):
        synthesize(tmp_path, subjects=2, fmt="dicom", progress=False, layout=layout)
    assert not list(tmp_path.iterdir())
    (tmp_path / folder).mkdir()
    with pytest.raises(FileExistsError, match=folder):
        synthesize(tmp_path, subjects=2, progress=False, layout=layout)
    with pytest.raises(ValueError, match="layout"):
        synthesize(tmp_path / "x", subjects=2, progress=False, layout="padchest")


def test_cli_layout_option(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "a"), "--layout", "nih", "--format", "dicom"]) == 2
    error = capsys.readouterr().err
    assert error.strip().count("\n") == 0 and "mimic" in error and not (tmp_path / "a").exists()
    assert main(["synth", str(tmp_path / "b"), "--layout", "chexpert", "--subjects", "1", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("synth: wrote") and "chexpert layout" in out
    assert (tmp_path / "b" / "CheXpert-v1.0-small" / "train.csv").is_file()
