"""The dataset readers (CheXpert, NIH ChestX-ray14, manifest CSV), layout detection and PNG decoding.

Every tree is written by hand in tmp_path: a few tiny images and CSVs as text with the published headers.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SHARED
from raddiffusion.data import decode
from raddiffusion.data.chexpert import STUDY_FACTOR, read_chexpert
from raddiffusion.data.labels import CHEXPERT_LABELS
from raddiffusion.data.dicom_export import ExportOptions
from raddiffusion.data.layouts import LAYOUTS, detect_layout, read_tree
from raddiffusion.data.manifest import MANIFEST_TEST_SHARE, MANIFEST_VALIDATE_SHARE, read_manifest
from raddiffusion.data.nih import (
    HASH_TEST_SHARE,
    HASH_VALIDATE_SHARE,
    NIH_LABELS,
    NIH_VALIDATE_SHARE,
    read_nih,
)
from raddiffusion.data.tree import IMAGE_COLUMNS, SKIPPED_COLUMNS, DataError, ImageTree, hash_split, relative_path

REAL_JPG = SHARED / "data" / "real-cxr" / "mimic-cxr-jpg"  # SHARED: ../shared, or $RADDIFFUSION_SHARED

CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,"
    "Support Devices"
)
CHEXPERT_CSV_LABELS = CHEXPERT_HEADER.split(",")[5:]
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
SECRETS = ("Female", "Male", "68", "Sex", "Age", "Gender")


# --------------------------------------------------------------------------------------- helpers


def picture(path: Path, grey: int = 100, size: int = 8, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.full((size, size), grey, np.uint8))
    image.convert(mode).save(path)


def chexpert_row(path: str, view: str = "Frontal", projection: str = "AP", sex: str = "Female", age: str = "68",
                 **labels: str) -> str:
    """One train.csv line; labels by CSV name with spaces as underscores, the rest blank."""
    values = [labels.get(name.replace(" ", "_"), "") for name in CHEXPERT_CSV_LABELS]
    return ",".join([path, sex, age, view, projection, *values])


def write_text(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_tree_shape(tree: ImageTree) -> None:
    """The contract every reader keeps: columns, dtypes, sorting, unique ids, labels columns."""
    images = tree.images
    assert list(images.columns) == IMAGE_COLUMNS
    assert images["subject_id"].dtype == np.int64 and images["study_id"].dtype == np.int64
    assert images["image_id"].is_unique
    assert images["split"].isin(["train", "validate", "test"]).all()
    assert (images["view"] == images["view"].str.upper()).all()
    assert not images["path"].str.startswith("/").any()
    ordered = images.sort_values(["subject_id", "study_id", "image_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(images, ordered)
    assert (images.groupby("study_id")["subject_id"].nunique() == 1).all()  # a study id belongs to one subject
    assert (images.groupby("subject_id")["split"].nunique() == 1).all()  # patient-disjoint
    assert tree.labels.index.name == "study_id" and tree.labels.index.is_unique
    assert list(tree.labels.columns) == ["subject_id", *tree.label_names]
    assert all(tree.labels[name].dtype == np.float32 for name in tree.label_names)
    assert list(tree.skipped.columns) == SKIPPED_COLUMNS
    every_cell = " ".join(map(str, [*images.to_numpy().ravel(), *tree.labels.columns, *images.columns]))
    assert not any(f" {secret} " in f" {every_cell} " for secret in SECRETS)


def reasons(tree: ImageTree) -> dict[str, str]:
    return dict(zip(tree.skipped["image_id"], tree.skipped["reason"]))


# --------------------------------------------------------------------------------------- CheXpert


def chexpert_tree(root: Path, test_file: str | None = "test_labels.csv") -> Path:
    """Train: patient 1 (two studies, the first with two views), patient 2; valid: patient 3; test: patient 4.

    train.csv uses the published convention (``CheXpert-v1.0-small/train/...``), valid.csv the stripped one,
    and a train row mixes both."""
    prefix = "CheXpert-v1.0-small/"
    write_text(root / "train.csv", [
        CHEXPERT_HEADER,
        chexpert_row(f"{prefix}train/patient00001/study1/view1_frontal.jpg", Cardiomegaly="1.0", Edema="-1.0"),
        chexpert_row(f"{prefix}train/patient00001/study1/view2_lateral.jpg", "Lateral", "", Cardiomegaly="0.0"),
        chexpert_row("train/patient00001/study2/view1_frontal.jpg", projection="PA", No_Finding="1.0"),
        chexpert_row(f"{prefix}train/patient00002/study1/view1_frontal.jpg", projection="", sex="Male",
                     Pleural_Effusion="1.0", Support_Devices="0.0"),
    ])
    write_text(root / "valid.csv", [
        CHEXPERT_HEADER,
        chexpert_row("valid/patient64541/study1/view1_frontal.jpg", projection="PA",
                     **{name.replace(" ", "_"): "0.0" for name in CHEXPERT_CSV_LABELS}),
    ])
    if test_file:
        header = ",".join(["Path", *CHEXPERT_CSV_LABELS])
        blank_but = ["1.0" if name == "Atelectasis" else "0.0" for name in CHEXPERT_CSV_LABELS]
        write_text(root / test_file, [
            header,
            ",".join(["test/patient64741/study1/view1_frontal.jpg", *blank_but]),
            ",".join(["test/patient64741/study1/view2_lateral.jpg", *blank_but]),
        ])
    for line in (root / "train.csv").read_text().splitlines()[1:] + (root / "valid.csv").read_text().splitlines()[1:]:
        path = line.split(",")[0].removeprefix(prefix)
        picture(root / path)
    return root


def test_chexpert_reads_studies_views_splits_and_labels(tmp_path):
    root = chexpert_tree(tmp_path / "CheXpert-v1.0-small")
    tree = read_chexpert(root)
    assert_tree_shape(tree)
    assert tree.dataset == "chexpert" and tree.label_names == CHEXPERT_LABELS and tree.source_format == "jpg"
    assert tree.skipped.empty
    images = tree.images.set_index("image_id")
    assert list(images.index) == [
        "train/patient00001/study1/view1_frontal", "train/patient00001/study1/view2_lateral",
        "train/patient00001/study2/view1_frontal", "train/patient00002/study1/view1_frontal",
        "valid/patient64541/study1/view1_frontal",
        "test/patient64741/study1/view1_frontal", "test/patient64741/study1/view2_lateral",
    ]
    assert images["subject_id"].tolist() == [1, 1, 1, 2, 64541, 64741, 64741]
    assert images["study_id"].tolist() == [
        STUDY_FACTOR + 1, STUDY_FACTOR + 1, STUDY_FACTOR + 2, 2 * STUDY_FACTOR + 1,
        64541 * STUDY_FACTOR + 1, 64741 * STUDY_FACTOR + 1, 64741 * STUDY_FACTOR + 1,
    ]
    # the multi-view studies stay whole; one study per patientN/studyN folder
    assert tree.images.groupby("study_id").size().tolist() == [2, 1, 1, 1, 2]
    assert images["view"].tolist() == ["AP", "LATERAL", "PA", "FRONTAL", "PA", "FRONTAL", "LATERAL"]
    assert images["split"].tolist() == ["train"] * 4 + ["validate"] + ["test"] * 2
    assert (images["path"] == images.index + ".jpg").all()  # both Path conventions end up relative to ROOT
    assert all((root / p).is_file() for p in images["path"][:5])
    assert "test_labels.csv -> test" in tree.split_source

    labels = tree.labels
    assert sorted(labels.index) == sorted(set(images["study_id"]))  # every study labelled
    first = labels.loc[STUDY_FACTOR + 1]
    assert first["Cardiomegaly"] == 1.0 and first["Edema"] == -1.0  # the first row's values, not the lateral's 0.0
    assert np.isnan(first["Pneumonia"]) and first["subject_id"] == 1
    assert labels.loc[STUDY_FACTOR + 2, "No Finding"] == 1.0
    assert labels.loc[2 * STUDY_FACTOR + 1, ["Pleural Effusion", "Support Devices"]].tolist() == [1.0, 0.0]
    assert (labels.loc[64541 * STUDY_FACTOR + 1, list(CHEXPERT_LABELS)] == 0.0).all()
    test_labels = labels.loc[64741 * STUDY_FACTOR + 1, list(CHEXPERT_LABELS)]
    assert test_labels["Atelectasis"] == 1.0 and test_labels.drop("Atelectasis").eq(0.0).all()


@pytest.mark.parametrize("folder, prefix", [
    ("CheXpert-v1.0", "CheXpert-v1.0/"),  # full-size release
    ("my_chexpert", "CheXpert-v1.0-small/"),  # renamed folder, published CSV
    ("my_chexpert", "my_chexpert/"),  # CSV written relative to the renamed folder's parent
    ("my_chexpert", ""),  # stripped copies
])
def test_chexpert_path_conventions(tmp_path, folder, prefix):
    root = tmp_path / folder
    for name, path in (("train", "train/patient00007/study3"), ("valid", "valid/patient00008/study1")):
        write_text(root / f"{name}.csv", [CHEXPERT_HEADER, chexpert_row(f"{prefix}{path}/view1_frontal.jpg")])
    tree = read_chexpert(root)
    assert tree.images["path"].tolist() == ["train/patient00007/study3/view1_frontal.jpg",
                                            "valid/patient00008/study1/view1_frontal.jpg"]
    assert tree.images["study_id"].tolist() == [7 * STUDY_FACTOR + 3, 8 * STUDY_FACTOR + 1]


def test_chexpert_root_named_like_a_split_folder_is_not_stripped(tmp_path):
    root = tmp_path / "train"
    write_text(root / "train.csv", [CHEXPERT_HEADER, chexpert_row("train/patient00007/study3/view1_frontal.jpg")])
    write_text(root / "valid.csv", [CHEXPERT_HEADER, chexpert_row("valid/patient00008/study1/view1_frontal.jpg")])
    assert read_chexpert(root).images["path"].tolist()[0] == "train/patient00007/study3/view1_frontal.jpg"


def test_chexpert_bad_rows_are_skipped_with_row_and_column(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    write_text(root / "train.csv", [
        CHEXPERT_HEADER,
        chexpert_row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"),  # row 2: kept
        chexpert_row("/data/train/patient00002/study1/view1_frontal.jpg"),  # row 3: absolute
        chexpert_row("CheXpert-v1.0-small/../train/patient00003/study1/view1_frontal.jpg"),  # row 4: escapes
        chexpert_row("train/patient00004/study1/view1_frontal.jpg", Edema="2.0"),  # row 5: bad value
        chexpert_row("train/patient00005/study1/view1_frontal.jpg", Fracture="yes"),  # row 6: bad value
        chexpert_row(f"train/patient00006/study{STUDY_FACTOR}/view1_frontal.jpg"),  # row 7: study number too big
        chexpert_row("train/patient00001/study1/view1_frontal.jpg"),  # row 8: same image, other convention
        chexpert_row("train/patient00009/view1_frontal.jpg"),  # row 9: no study folder
        chexpert_row(""),  # row 10: blank
        chexpert_row(f"train/patient00006/study{STUDY_FACTOR - 1}/view1_frontal.jpg"),  # row 11: kept
    ])
    write_text(root / "valid.csv", [CHEXPERT_HEADER, chexpert_row("valid/patient00010/study1/view1_frontal.jpg")])
    tree = read_chexpert(root)
    assert_tree_shape(tree)
    assert tree.images["image_id"].tolist() == [
        "train/patient00001/study1/view1_frontal", f"train/patient00006/study{STUDY_FACTOR - 1}/view1_frontal",
        "valid/patient00010/study1/view1_frontal",
    ]
    assert tree.images["study_id"].tolist()[1] == 6 * STUDY_FACTOR + STUDY_FACTOR - 1  # below 7 * FACTOR + 0
    skipped = tree.skipped["reason"].tolist()
    assert len(skipped) == 8
    assert skipped[0].startswith("train.csv row 3: absolute path")
    assert skipped[1].startswith("train.csv row 4: path") and "escapes ROOT" in skipped[1]
    assert skipped[2] == "train.csv row 5: column 'Edema': '2.0' is not 1, 0, -1 or blank"
    assert skipped[3] == "train.csv row 6: column 'Fracture': 'yes' is not 1, 0, -1 or blank"
    assert skipped[4].startswith("train.csv row 7: study number 1000 is not below 1000")
    assert skipped[5] == "train.csv row 8: path listed twice (first at train.csv row 2)"
    assert skipped[6].startswith("train.csv row 9: path does not end in patientNNNNN/studyN/FILE")
    assert skipped[7] == "train.csv row 10: blank path"
    assert tree.skipped["image_id"].tolist()[2] == "train/patient00004/study1/view1_frontal"
    assert 4 * STUDY_FACTOR + 1 not in tree.labels.index


def test_chexpert_duplicate_across_files_keeps_the_first(tmp_path):
    root = tmp_path / "chexpert"
    write_text(root / "train.csv", [CHEXPERT_HEADER, chexpert_row("train/patient00001/study1/view1_frontal.jpg")])
    write_text(root / "valid.csv", [CHEXPERT_HEADER, chexpert_row("valid/patient00002/study1/view1_frontal.jpg"),
                                    chexpert_row("chexpert/train/patient00001/study1/view1_frontal.jpg")])
    tree = read_chexpert(root)
    assert len(tree.images) == 2
    assert tree.skipped["reason"].tolist() == ["valid.csv row 3: path listed twice (first at train.csv row 2)"]


def test_chexpert_missing_column_is_one_line_error(tmp_path):
    root = tmp_path / "chexpert"
    header = CHEXPERT_HEADER.replace(",Edema", "").replace("Path,", "Image,")
    write_text(root / "train.csv", [header])
    write_text(root / "valid.csv", [CHEXPERT_HEADER])
    with pytest.raises(DataError) as error:
        read_chexpert(root)
    message = str(error.value)
    assert "\n" not in message and "train.csv" in message and "Path" in message and "Edema" in message


def test_chexpert_without_train_csv(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train.csv: not found"):
        read_chexpert(tmp_path / "empty")


def many_patient_chexpert(root: Path, patients: int = 60) -> Path:
    lines = [CHEXPERT_HEADER]
    for p in range(1, patients + 1):
        lines += [chexpert_row(f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view1_frontal.jpg", Edema="1.0"),
                  chexpert_row(f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view2_lateral.jpg", "Lateral", "")]
    write_text(root / "train.csv", lines)
    write_text(root / "valid.csv", [CHEXPERT_HEADER, chexpert_row("valid/patient64541/study1/view1_frontal.jpg")])
    return root


def test_chexpert_without_test_labels_and_without_carve_has_no_test_split(tmp_path):
    tree = read_chexpert(many_patient_chexpert(tmp_path / "c"))
    assert set(tree.images["split"]) == {"train", "validate"}
    assert "no test split" in tree.split_source and "carve" in tree.split_source


def test_chexpert_carve_makes_the_missing_test_split_from_train_patients(tmp_path):
    root = many_patient_chexpert(tmp_path / "c")
    tree = read_chexpert(root, carve=0.25)
    assert_tree_shape(tree)
    images = tree.images
    assert (images.loc[images["subject_id"] == 64541, "split"] == "validate").all()  # the official part stays
    train_patients = images.loc[images["subject_id"] < 64541, "subject_id"].drop_duplicates()
    expected = hash_split(train_patients, 0.0, 0.25)
    got = images.drop_duplicates("subject_id").set_index("subject_id")["split"]
    assert (got[train_patients].to_numpy() == expected.to_numpy()).all()
    assert 3 <= (expected == "test").sum() <= 27  # a share of 60 patients, and not all of them
    assert set(images["split"]) == {"train", "validate", "test"}
    assert (images.groupby("study_id")["split"].nunique() == 1).all()  # studies stay whole
    assert "carved from train: test (0.25" in tree.split_source
    assert len(images) == 121 and tree.skipped.empty


def test_chexpert_carve_validate_and_test_when_valid_csv_lacks_usable_rows(tmp_path):
    root = many_patient_chexpert(tmp_path / "c")
    write_text(root / "valid.csv", [CHEXPERT_HEADER])
    tree = read_chexpert(root, carve=0.2)
    counts = tree.images.drop_duplicates("subject_id")["split"].value_counts()
    assert set(counts.index) == {"train", "validate", "test"}
    assert "validate (0.2" in tree.split_source and "test (0.2" in tree.split_source
    with pytest.raises(ValueError, match="carve"):
        read_chexpert(root, carve=1.5)


def test_chexpert_test_csv_name_and_view_from_file_name(tmp_path):
    root = chexpert_tree(tmp_path / "CheXpert-v1.0", test_file="test.csv")
    tree = read_chexpert(root)
    test = tree.images[tree.images["split"] == "test"]
    assert test["view"].tolist() == ["FRONTAL", "LATERAL"]
    assert "test.csv -> test" in tree.split_source


# --------------------------------------------------------------------------------------- NIH


def nih_row(name: str, findings: str, patient: int, view: str = "PA", follow_up: int = 0) -> str:
    return f"{name},{findings},{follow_up},{patient},58,M,{view},2894,2729,0.143,0.143"


NIH_ROWS = [
    ("00000001_000.png", "Cardiomegaly|Emphysema", 1, "PA"),
    ("00000001_001.png", "No Finding", 1, "AP"),
    ("00000002_000.png", "Effusion", 2, "PA"),
    ("00000003_000.png", "Pleural_Thickening|Hernia", 3, "PA"),
    ("00000004_007.png", "Mass", 4, "AP"),
    ("00000005_000.png", "No Finding", 5, "PA"),
    ("00000006_000.png", "Nodule", 6, "PA"),
]


def nih_tree(root: Path, mirror: bool = False, trailing_comma: bool = False, lists: bool = True,
             csv_name: str = "Data_Entry_2017_v2020.csv") -> Path:
    end = "," if trailing_comma else ""
    write_text(root / csv_name, [NIH_HEADER + end] + [nih_row(n, f, p, v) + end for n, f, p, v in NIH_ROWS])
    for k, (name, *_) in enumerate(NIH_ROWS):
        folder = f"images_{k % 2 + 1:03d}/images" if mirror else "images"
        picture(root / folder / name, grey=10 * k, mode="RGBA" if k == 2 else "L")
    if lists:
        write_text(root / "test_list.txt", ["00000005_000.png", "00000006_000.png"])
        write_text(root / "train_val_list.txt", [n for n, *_ in NIH_ROWS[:5]])
    return root


@pytest.mark.parametrize("mirror, trailing_comma", [(False, False), (True, True)])
def test_nih_reads_images_labels_and_official_split(tmp_path, mirror, trailing_comma):
    root = nih_tree(tmp_path / "nih", mirror, trailing_comma)
    tree = read_nih(root)
    assert_tree_shape(tree)
    assert tree.dataset == "nih" and tree.label_names == NIH_LABELS and len(NIH_LABELS) == 15
    assert tree.skipped.empty and tree.source_format == "png"
    images = tree.images.set_index("image_id")
    assert list(images.index) == [n[:-4] for n, *_ in NIH_ROWS]
    assert images["subject_id"].tolist() == [1, 1, 2, 3, 4, 5, 6]
    assert images["study_id"].tolist() == [1000, 1001, 2000, 3000, 4007, 5000, 6000]  # one study per image
    assert images["view"].tolist() == [v for *_, v in NIH_ROWS]
    for k, (name, *_) in enumerate(NIH_ROWS):
        folder = f"images_{k % 2 + 1:03d}/images" if mirror else "images"
        assert images.loc[name[:-4], "path"] == f"{folder}/{name}"
    assert images.loc[["00000005_000", "00000006_000"], "split"].eq("test").all()
    train_val = images[images["subject_id"] <= 4]
    assert train_val["split"].isin(["train", "validate"]).all()
    expected = hash_split(train_val["subject_id"], NIH_VALIDATE_SHARE, 0.0)
    assert (train_val["split"].to_numpy() == expected.to_numpy()).all()
    labels = tree.labels
    for name, findings, *_ in NIH_ROWS:
        row = labels.loc[images.loc[name[:-4], "study_id"]]
        positives = [label for label in NIH_LABELS if row[label] == 1.0]
        assert positives == sorted(findings.split("|"), key=NIH_LABELS.index)
        assert set(row[list(NIH_LABELS)].unique()) <= {0.0, 1.0}  # never uncertain, never blank
    assert "train_val_list.txt" in tree.split_source and "test_list.txt" in tree.split_source


def test_nih_validate_share_is_patient_disjoint(tmp_path):
    root = tmp_path / "nih"
    rows = [nih_row(f"{p:08d}_{f:03d}.png", "Mass", p) for p in range(1, 41) for f in range(2)]
    write_text(root / "Data_Entry_2017.csv", [NIH_HEADER, *rows])  # the older CSV name
    write_text(root / "train_val_list.txt", [r.split(",")[0] for r in rows[:60]])
    write_text(root / "test_list.txt", [r.split(",")[0] for r in rows[60:]])
    for r in rows:
        picture(root / "images" / r.split(",")[0], size=2)
    tree = read_nih(root, validate_share=0.3)
    assert_tree_shape(tree)
    assert len(tree.images) == 80 and tree.images.groupby("study_id").size().eq(1).all()
    per_patient = tree.images.groupby("subject_id")["split"].first()
    assert set(per_patient[per_patient.index <= 30]) == {"train", "validate"}
    assert (per_patient[per_patient.index > 30] == "test").all()


def test_nih_bad_rows_are_skipped_with_reasons(tmp_path):
    root = nih_tree(tmp_path / "nih")
    extra = [
        nih_row("00000007_000.png", "Mass|Flu", 7),  # row 9: unknown finding
        nih_row("scan7.png", "Mass", 7),  # row 10: bad name
        nih_row("00000008_000.png", "Mass", 9),  # row 11: name of another patient
        nih_row("00000010_000.png", "Mass", 10),  # row 12: in neither list
        nih_row("00000011_000.png", "Mass", 11),  # row 13: file not on disk
        nih_row("00000012_000.png", "Mass", 12),  # row 14: in both lists
        nih_row("00000001_000.png", "Mass", 1),  # row 15: listed twice
        nih_row("00000013_000.png", "", 13),  # row 16: blank findings
    ]
    with open(root / "Data_Entry_2017_v2020.csv", "a") as file:
        file.write("\n".join(extra) + "\n")
    for name in ("00000007_000", "scan7", "00000008_000", "00000010_000", "00000012_000", "00000013_000"):
        picture(root / "images" / f"{name}.png")
    with open(root / "train_val_list.txt", "a") as file:
        file.write("00000011_000.png\n00000012_000.png\n00000099_000.png\n\n")
    with open(root / "test_list.txt", "a") as file:
        file.write("00000012_000.png\n")
    tree = read_nih(root)
    assert_tree_shape(tree)
    assert len(tree.images) == len(NIH_ROWS)
    got = reasons(tree)
    assert got == {
        "00000007_000": "Data_Entry_2017_v2020.csv row 9: unknown finding 'Flu' in Finding Labels",
        "scan7": "Data_Entry_2017_v2020.csv row 10: image name 'scan7.png' is not NNNNNNNN_FFF.png",
        "00000008_000":
            "Data_Entry_2017_v2020.csv row 11: image name '00000008_000.png' does not belong to Patient ID 9",
        "00000010_000": "Data_Entry_2017_v2020.csv row 12: in neither train_val_list.txt nor test_list.txt",
        "00000011_000": "Data_Entry_2017_v2020.csv row 13: file not found",
        "00000012_000": "Data_Entry_2017_v2020.csv row 14: listed in both train_val_list.txt and test_list.txt",
        "00000001_000": "Data_Entry_2017_v2020.csv row 15: image listed twice (first at row 2)",
        "00000013_000": "Data_Entry_2017_v2020.csv row 16: blank Finding Labels",
        "00000099_000": "train_val_list.txt line 8: image not in Data_Entry_2017_v2020.csv",
    }
    skipped = tree.skipped.set_index("image_id")["path"]
    assert skipped["00000010_000"] == "images/00000010_000.png" and skipped["00000011_000"] == "00000011_000.png"
    assert 1000 in tree.labels.index and tree.labels.loc[1000, "Mass"] == 0.0  # the first row 00000001_000 wins


def test_nih_without_lists_splits_patients_by_hash(tmp_path):
    tree = read_nih(nih_tree(tmp_path / "nih", lists=False))
    assert_tree_shape(tree)
    expected = hash_split(tree.images["subject_id"], HASH_VALIDATE_SHARE, HASH_TEST_SHARE)
    assert (tree.images["split"].to_numpy() == expected.to_numpy()).all()
    assert "subject hash" in tree.split_source and f"test {HASH_TEST_SHARE:g}" in tree.split_source


def test_nih_with_only_the_test_list_puts_the_rest_in_train_val(tmp_path):
    root = nih_tree(tmp_path / "nih")
    (root / "train_val_list.txt").unlink()
    tree = read_nih(root, validate_share=0.0)
    assert tree.images.set_index("image_id")["split"].to_dict() == {
        n[:-4]: "test" if n in ("00000005_000.png", "00000006_000.png") else "train" for n, *_ in NIH_ROWS
    }


def test_nih_missing_column_and_missing_csv(tmp_path):
    root = tmp_path / "nih"
    write_text(root / "Data_Entry_2017_v2020.csv", [NIH_HEADER.replace("Patient ID,", "")])
    with pytest.raises(DataError) as error:
        read_nih(root)
    assert "Data_Entry_2017_v2020.csv" in str(error.value) and "Patient ID" in str(error.value)
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="Data_Entry_2017.csv: not found"):
        read_nih(tmp_path)
    write_text(root / "Data_Entry_2017_v2020.csv", [NIH_HEADER, nih_row("00000001_000.png", "Mass", 1)])
    with pytest.raises(DataError, match=r"no PNG files in images/ or images_NNN/images/"):
        read_nih(root)
    picture(root / "images" / "00000002_000.png")
    with pytest.raises(DataError, match=r"no usable images \(1 rows skipped; first: .*row 2: file not found\)"):
        read_nih(root, validate_share=0.0)


# --------------------------------------------------------------------------------------- manifest


MANIFEST_HEADER = "path,subject,study,view,split,Cardiomegaly,Effusion,Normal"


def manifest_tree(root: Path, lines: list[str], header: str = MANIFEST_HEADER) -> Path:
    for line in lines:
        path = line.split(",")[0]
        if path and not path.startswith(("/", "..")) and "missing" not in path:
            picture(root / path)
    return write_text(root / "manifest.csv", [header, *lines])


def test_manifest_reads_subjects_studies_splits_and_labels(tmp_path):
    root = tmp_path / "data"
    manifest = manifest_tree(root, [
        "a/p1_frontal.png,17,visit1,pa,train,1,0,",  # study (17, visit1): two views
        "a/p1_lateral.png,17,visit1,lateral,,0,1,",  # blank split: its subject's train
        "a/p1_later.png,17,visit2,,train,,,",  # all blank: unlabelled study
        "b/p2.jpg,5,,AP,test,-1,,0",  # no study value: its own study
        "b/p2_second.jpg,5,,AP,test,1,1,1",
        "c/p3.png,9,x,PA,validate,0,0,1",
    ])
    tree = read_manifest(root, manifest)
    assert_tree_shape(tree)
    assert tree.dataset == "csv" and tree.label_names == ("Cardiomegaly", "Effusion", "Normal")
    assert tree.skipped.empty and tree.source_format == "mixed"
    images = tree.images.set_index("image_id")
    assert images.loc["a/p1_frontal", ["subject_id", "view", "split", "path"]].tolist() == [17, "PA", "train",
                                                                                            "a/p1_frontal.png"]
    assert images.loc["a/p1_later", "view"] == "UNKNOWN"
    assert images.loc["a/p1_lateral", "split"] == "train"
    # studies: distinct (subject, study) pairs numbered 1..m in sorted order, images without a study alone
    study = images["study_id"]
    assert study["a/p1_frontal"] == study["a/p1_lateral"] != study["a/p1_later"]
    assert study["b/p2"] != study["b/p2_second"]
    assert sorted(study.unique()) == [1, 2, 3, 4, 5]
    assert study["b/p2"] < study["b/p2_second"] < study["c/p3"] < study["a/p1_frontal"] < study["a/p1_later"]
    labels = tree.labels
    assert labels.loc[study["a/p1_frontal"], ["Cardiomegaly", "Effusion"]].tolist() == [1.0, 0.0]  # first row's
    assert np.isnan(labels.loc[study["a/p1_frontal"], "Normal"])
    assert labels.loc[study["b/p2"], ["Cardiomegaly", "Normal"]].tolist() == [-1.0, 0.0]
    assert study["a/p1_later"] not in labels.index  # every label blank: unlabelled
    assert len(labels) == 4


def test_manifest_names_are_numbered_and_blank_splits_hashed(tmp_path):
    root = tmp_path / "data"
    lines = [f"img/{name}_{k}.png,{name},,,,{k % 2},," for name in ("zoe", "adam", "mia") for k in range(2)]
    header = "path,subject,study,view,split,Finding,Other,Third"
    tree = read_manifest(root, manifest_tree(root, lines, header))
    assert_tree_shape(tree)
    subject_of = tree.images.set_index("image_id")["subject_id"]
    assert subject_of["img/adam_0"] == 1 and subject_of["img/mia_1"] == 2 and subject_of["img/zoe_0"] == 3
    assert tree.images["study_id"].is_unique  # one study per image
    expected = hash_split(tree.images["subject_id"], MANIFEST_VALIDATE_SHARE, MANIFEST_TEST_SHARE)
    assert (tree.images["split"].to_numpy() == expected.to_numpy()).all()
    assert "subject hash" in tree.split_source and "numbered" in tree.split_source


def test_manifest_bad_rows_are_skipped_with_row_and_column(tmp_path):
    root = tmp_path / "data"
    manifest = manifest_tree(root, [
        "ok.png,1,,,train,1,,",  # row 2
        "/abs/x.png,2,,,train,1,,",  # row 3: absolute
        "../x.png,3,,,train,1,,",  # row 4: escapes
        "missing.png,4,,,train,1,,",  # row 5: no file
        "s.png,5,,,holdout,1,,",  # row 6: unknown split
        "v.png,6,,,train,1,maybe,",  # row 7: bad label value
        "ok.png,1,,,train,0,,",  # row 8: listed twice
        "nosubject.png,,,,train,1,,",  # row 9: blank subject
    ])
    tree = read_manifest(root, manifest)
    assert tree.images["image_id"].tolist() == ["ok"]
    got = tree.skipped["reason"].tolist()
    assert got[0].startswith("manifest.csv row 3: absolute path")
    assert got[1].startswith("manifest.csv row 4: path") and "escapes ROOT" in got[1]
    assert got[2:] == [
        "manifest.csv row 5: file not found",
        "manifest.csv row 6: column 'split': 'holdout' is not train, validate, test or blank",
        "manifest.csv row 7: column 'Effusion': 'maybe' is not 1, 0, -1 or blank",
        "manifest.csv row 8: path listed twice (first at row 2)",
        "manifest.csv row 9: column 'subject': blank",
    ]
    assert tree.skipped["path"].tolist()[:3] == ["/abs/x.png", "../x.png", "missing.png"]


@pytest.mark.parametrize("header, named", [
    ("file,subject,Finding", "path"),
    ("path,patient,Finding", "subject"),
    ("path,subject,study,view,split", "no label column"),
])
def test_manifest_header_errors_are_one_line(tmp_path, header, named):
    manifest = write_text(tmp_path / "m.csv", [header, "a.png,1,1,PA,train"])
    with pytest.raises(DataError) as error:
        read_manifest(tmp_path, manifest)
    assert "m.csv" in str(error.value) and named in str(error.value) and "\n" not in str(error.value)


# --------------------------------------------------------------------------------------- layouts


def test_detect_layout_and_read_tree(tmp_path, small_tree):
    chexpert = chexpert_tree(tmp_path / "CheXpert-v1.0-small")
    nih = nih_tree(tmp_path / "nih")
    assert LAYOUTS == ("mimic", "chexpert", "nih", "dicom", "csv")
    assert detect_layout(small_tree.root) == "mimic"
    assert detect_layout(chexpert) == "chexpert" and detect_layout(nih) == "nih"
    assert read_tree(small_tree.root).dataset == "mimic"
    assert read_tree(chexpert).dataset == "chexpert" and read_tree(nih).dataset == "nih"
    assert read_tree(chexpert, "chexpert", carve=0.1).dataset == "chexpert"
    manifest = manifest_tree(tmp_path / "m", ["x.png,1,,,,1,,"])
    assert read_tree(tmp_path / "m", manifest=manifest).dataset == "csv"  # a manifest implies csv


def test_read_tree_argument_errors(tmp_path):
    nih = nih_tree(tmp_path / "nih")
    for kwargs, message in [
        ({"layout": "csv"}, "manifest"),
        ({"carve": 0.1}, "carve applies to the chexpert layout only, not nih"),
        ({"layout": "dcm"}, "layout must be one of"),
        ({"export": ExportOptions()}, "apply to the dicom layout only, not nih"),
        ({"layout": "nih", "manifest": tmp_path / "m.csv"}, "manifest"),
    ]:
        with pytest.raises(ValueError, match=message):
            read_tree(nih, **kwargs)


def test_no_known_layout_message(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "train.csv").write_text("Path\n")  # train.csv alone is not CheXpert
    with pytest.raises(DataError) as error:
        detect_layout(tmp_path / "stuff")
    assert str(error.value) == (
        f"{tmp_path / 'stuff'}: no known layout (looked for mimic-cxr-2.0.0-metadata.csv(.gz), train.csv + valid.csv, "
        "Data_Entry_2017(_v2020).csv, manifest.csv, DICOM files among the first 64); give --layout dicom for a folder of DICOM "
        "files, or --layout csv --manifest FILE"
    )
    with pytest.raises(DataError, match="no known layout"):
        read_tree(tmp_path / "stuff")


def test_relative_path_rules():
    assert relative_path(" ./a//b/c.png ") == ("a/b/c.png", "")
    assert relative_path("C:\\data\\x.png")[1].startswith("absolute path")
    assert relative_path("a/../../b")[1].endswith("escapes ROOT ('..')")
    assert relative_path("   ") == ("", "blank path")


# --------------------------------------------------------------------------------------- PNG decoding


def test_rgba_png_decodes_to_its_luma(tmp_path):
    grey_rgba = np.zeros((40, 40, 4), np.uint8)
    grey_rgba[..., :3], grey_rgba[..., 3] = 137, 255  # NIH's RGBA files: grey colour, opaque
    Image.fromarray(grey_rgba, "RGBA").save(tmp_path / "grey.png")
    colour = np.zeros((40, 40, 4), np.uint8)
    colour[...] = (200, 100, 50, 128)
    Image.fromarray(colour, "RGBA").save(tmp_path / "colour.png")
    pixels, reason = decode.read_image(tmp_path / "grey.png", 16)
    assert reason == "" and pixels.shape == (16, 16) and (pixels == 137).all()
    pixels, _ = decode.read_image(tmp_path / "colour.png", 16)
    assert (pixels == round((200 * 299 + 100 * 587 + 50 * 114) / 1000)).all()  # ITU-R 601 luma, alpha ignored


def test_full_range_16_bit_png_decodes_like_its_8_bit_equivalent(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # really stored with 16 bits
    Image.fromarray(np.rint(ramp / 257.0).astype(np.uint8)).save(tmp_path / "flat.png")
    deep, reason = decode.read_image(tmp_path / "deep.png", 32)
    flat, _ = decode.read_image(tmp_path / "flat.png", 32)
    assert reason == "" and np.array_equal(deep, flat)
    for value, grey in ((0, 0), (65535, 255), (128 * 257, 128), (300, 1)):
        Image.fromarray(np.full((20, 20), value, np.uint16)).save(tmp_path / "c.png")
        pixels, _ = decode.read_image(tmp_path / "c.png", 8)
        assert (pixels == grey).all(), (value, pixels[0, 0])


# --------------------------------------------------------------------------------------- real radiographs


def test_real_radiographs_in_chexpert_and_nih_layouts(tmp_path):
    jpgs = sorted(REAL_JPG.glob("files/**/*.jpg"))
    if not jpgs:
        pytest.skip(f"{REAL_JPG} holds no radiographs")
    chexpert, nih = tmp_path / "CheXpert-v1.0-small", tmp_path / "nih"
    train = [CHEXPERT_HEADER]
    entries = [NIH_HEADER]
    for k, jpg in enumerate(jpgs, start=1):
        relative = f"train/patient{k:05d}/study1/view1_frontal.jpg"
        (chexpert / relative).parent.mkdir(parents=True)
        shutil.copyfile(jpg, chexpert / relative)
        train.append(chexpert_row(f"CheXpert-v1.0-small/{relative}", projection="PA", No_Finding="1.0"))
        name = f"{k:08d}_000.png"
        with Image.open(jpg) as image:
            image = image.convert("L").resize((1024, 1024), Image.Resampling.LANCZOS)
            (nih / f"images_{k % 2 + 1:03d}" / "images").mkdir(parents=True, exist_ok=True)
            (image.convert("RGBA") if k == 1 else image).save(nih / f"images_{k % 2 + 1:03d}/images/{name}",
                                                               compress_level=1)
        entries.append(nih_row(name, "No Finding", k))
    write_text(chexpert / "train.csv", train)
    write_text(chexpert / "valid.csv", [CHEXPERT_HEADER])
    write_text(nih / "Data_Entry_2017_v2020.csv", entries)
    write_text(nih / "train_val_list.txt", [f"{k:08d}_000.png" for k in range(1, len(jpgs) + 1)])
    write_text(nih / "test_list.txt", [])

    chexpert_tree_ = read_tree(chexpert)
    nih_tree_ = read_tree(nih)
    assert len(chexpert_tree_.images) == len(nih_tree_.images) == len(jpgs)
    assert chexpert_tree_.skipped.empty and nih_tree_.skipped.empty
    assert nih_tree_.images["study_id"].tolist() == [k * 1000 for k in range(1, len(jpgs) + 1)]
    for k, (jpg, row) in enumerate(zip(jpgs, nih_tree_.images.itertuples()), start=1):
        png_pixels, reason = decode.read_image(nih / row.path, 256)
        jpg_pixels, _ = decode.read_image(jpg, 256)
        assert reason == "" and png_pixels.shape == (256, 256)
        difference = np.abs(png_pixels.astype(int) - jpg_pixels.astype(int))
        assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 3, (k, difference.mean())
        assert png_pixels.std() > 20  # a radiograph, not a blank
    chexpert_pixels, _ = decode.read_image(chexpert / chexpert_tree_.images["path"][0], 256)
    assert np.array_equal(chexpert_pixels, decode.read_image(jpgs[0], 256)[0])


def test_a_manifest_csv_in_root_is_read_without_the_flag(tmp_path):
    root = tmp_path / "set"
    (root / "img").mkdir(parents=True)
    for n in range(4):
        Image.fromarray(np.full((20, 20), 40 * n, np.uint8)).save(root / "img" / f"{n}.png")
    pd.DataFrame({"path": [f"img/{n}.png" for n in range(4)], "subject": range(1, 5), "TB": [0, 1, 0, 1]}).to_csv(
        root / "manifest.csv", index=False)
    assert detect_layout(root) == "csv"
    tree = read_tree(root)
    assert len(tree.images) == 4 and tree.label_names == ("TB",)
