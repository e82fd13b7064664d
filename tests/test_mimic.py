"""The MIMIC tree reader: listing, splits, label policies and clear errors on bad CSVs."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from raddiffusion.data.labels import CHEXPERT_LABELS as LABELS, apply_label_policy
from raddiffusion.data.mimic import CHEXPERT_CSV, METADATA_CSV, SPLIT_CSV, DataError, read_mimic

from conftest import small_labels, small_tree_images, write_csv, write_tree


def test_lists_every_image_with_ids_view_split_and_path(small_tree):
    tree = read_mimic(small_tree.root)
    assert tree.source_format == "jpg"
    assert len(tree.images) == len(small_tree.images)
    assert list(tree.images.columns) == ["image_id", "subject_id", "study_id", "view", "split", "path"]
    assert tree.images[["subject_id", "study_id", "image_id"]].equals(
        tree.images[["subject_id", "study_id", "image_id"]].sort_values(["subject_id", "study_id", "image_id"])
    )
    row = tree.images.set_index("image_id").loc["50000003-01aa-dicom"]
    assert (row.subject_id, row.study_id, row.view, row.split) == (11000002, 50000003, "PA", "train")
    assert row.path == "files/p11/p11000002/s50000003/50000003-01aa-dicom.jpg"
    assert all((small_tree.root / p).is_file() for p in tree.images["path"])


def test_plain_csvs_read_like_gzipped(tmp_path):
    plain = read_mimic(write_tree(tmp_path / "a", small_tree_images(), small_labels(), gzip_csvs=False).root)
    gzipped = read_mimic(write_tree(tmp_path / "b", small_tree_images(), small_labels()).root)
    assert plain.images.drop(columns="path").equals(gzipped.images.drop(columns="path"))
    assert plain.labels.equals(gzipped.labels)


def test_official_split_file_wins_over_folder_rule(tmp_path):
    images = small_tree_images()
    for im in images:
        if im.subject_id == 10000001:
            im.split = "test"
    tree = read_mimic(write_tree(tmp_path / "m", images, small_labels()).root)
    assert set(tree.images.loc[tree.images.subject_id == 10000001, "split"]) == {"test"}
    assert tree.split_source.startswith("official")


def test_folder_rule_without_split_file(tmp_path):
    tree = read_mimic(write_tree(tmp_path / "m", small_tree_images(), small_labels(), with_split_file=False).root)
    folder = tree.images["subject_id"].astype(str).str[:2]
    assert set(tree.images.loc[folder == "18", "split"]) == {"validate"}
    assert set(tree.images.loc[folder == "19", "split"]) == {"test"}
    assert set(tree.images.loc[folder.astype(int) <= 17, "split"]) == {"train"}
    assert tree.split_source.startswith("folder rule")


def test_split_crossing_patients_is_refused(tmp_path):
    images = small_tree_images()
    images[0].split = "validate"  # subject 10000001 now in validate and train
    with pytest.raises(DataError, match="patient-disjoint"):
        read_mimic(write_tree(tmp_path / "m", images, small_labels()).root)


def test_label_policies():
    raw = np.array([[1.0, 0.0, -1.0, np.nan]], dtype=np.float32)
    ones, ones_mask = apply_label_policy(raw, "ones")
    zeros, zeros_mask = apply_label_policy(raw, "zeros")
    ignore, ignore_mask = apply_label_policy(raw, "ignore")
    np.testing.assert_array_equal(ones, [[1, 0, 1, 0]])
    np.testing.assert_array_equal(zeros, [[1, 0, 0, 0]])
    np.testing.assert_array_equal(ignore_mask, [[1, 1, 0, 1]])
    np.testing.assert_array_equal(ignore * ignore_mask, [[1, 0, 0, 0]])
    assert ones_mask.all() and zeros_mask.all()
    with pytest.raises(ValueError, match="label policy"):
        apply_label_policy(raw, "maybe")


def test_labelled_images_keep_unlabelled_studies_masked(small_tree):
    tree = read_mimic(small_tree.root)
    frame = tree.labelled_images("ignore").set_index("image_id")
    unlabelled = frame.loc["50000005-00aa-dicom"]
    assert not unlabelled["labelled"]
    assert all(unlabelled[f"mask:{name}"] == 0 for name in LABELS)
    first = frame.loc["50000001-00aa-dicom"]
    assert first["Cardiomegaly"] == 1 and first["mask:Edema"] == 0 and first["mask:Cardiomegaly"] == 1
    assert tree.labelled_images("ones").set_index("image_id").loc["50000001-00aa-dicom", "Edema"] == 1


@pytest.mark.parametrize("name", [METADATA_CSV, CHEXPERT_CSV])
def test_missing_required_csv_names_the_file(small_tree, name):
    (small_tree.root / f"{name}.gz").unlink()
    with pytest.raises(DataError, match=name):
        read_mimic(small_tree.root)


def _rewrite(root, name, edit):
    path = root / f"{name}.gz"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    path.unlink()
    write_csv(root, name, edit(frame))


@pytest.mark.parametrize(
    ("name", "edit", "problem"),
    [
        (METADATA_CSV, lambda f: f.drop(columns="ViewPosition"), "missing column.*ViewPosition"),
        (METADATA_CSV, lambda f: f.assign(subject_id=["x1"] + list(f.subject_id[1:])), "row 2.*subject_id.*not a valid int"),
        (CHEXPERT_CSV, lambda f: f.assign(Edema=["2.0"] + list(f.Edema[1:])), "Edema.*not 1, 0, -1 or blank"),
        (SPLIT_CSV, lambda f: f.assign(split=["training"] + list(f.split[1:])), "'training' is not one of"),
        (METADATA_CSV, lambda f: pd.concat([f, f.head(1)]), "listed twice"),
    ],
)
def test_malformed_csv_gives_one_line_naming_file_and_problem(small_tree, name, edit, problem):
    _rewrite(small_tree.root, name, edit)
    with pytest.raises(DataError, match=problem) as info:
        read_mimic(small_tree.root)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_corrupt_gzip_is_a_clear_error(small_tree):
    (small_tree.root / f"{CHEXPERT_CSV}.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match=f"{CHEXPERT_CSV}.gz: cannot be read as CSV"):
        read_mimic(small_tree.root)


def test_not_a_mimic_root(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        read_mimic(tmp_path / "nowhere")
    with gzip.open(tmp_path / f"{METADATA_CSV}.gz", "wt") as handle:
        handle.write("dicom_id,subject_id,study_id,ViewPosition\n")
    with pytest.raises(DataError, match="files"):
        read_mimic(tmp_path)
