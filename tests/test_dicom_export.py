"""A hospital's DICOM export as a dataset: the demo writer, the reader, preprocessing it, privacy, labels."""
from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter

import pandas as pd
import pydicom
import pytest

from raddiffusion import create, save_model
from raddiffusion.cli import main
from raddiffusion.data.dicom_export import DEFAULT_ID_KEY, ExportOptions, read_dicom_export
from raddiffusion.data.layouts import detect_layout
from raddiffusion.data.store import SKIPPED_FILE, open_store, shard_dirname
from raddiffusion.data.synth import synthesize
from raddiffusion.data.synth.dicom_export import DICOMDIR, LABELS_CSV, README

SUBJECTS, SEED = 4, 0  # 16 chest views in all seven syntaxes, 9 studies, 5 labelled
SIZE = 64  # the smallest store an xs model (32-pixel patches) can mask
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "AccessionNumber",
               "ReferringPhysicianName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate")
SKIPPED_REASONS = {"not an image (Basic Text SR Storage)", "modality 'CT' is not CR or DX", "body part 'HAND' is not CHEST"}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The demo export and what synthesize said about it."""
    root = tmp_path_factory.mktemp("export") / "pacs"
    summary = synthesize(root, subjects=SUBJECTS, seed=SEED, workers=1, progress=False, layout="dicom-export")
    return root, summary


@pytest.fixture(scope="module")
def headers(export) -> pd.DataFrame:
    """Every DICOM file of the export (DICOMDIR aside) with its identifying values, read by pydicom."""
    root, _ = export
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in (DICOMDIR, README, LABELS_CSV)):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows.append({"path": path.relative_to(root).as_posix(), "syntax": ds.file_meta.TransferSyntaxUID,
                     "Modality": ds.Modality, **{k: str(ds.get(k, "")) for k in IDENTIFYING}})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def store(export, tmp_path_factory):
    """The export preprocessed as a new user would: EXPORT STORE and nothing else (but a small size)."""
    root, _ = export
    out = tmp_path_factory.mktemp("stores") / "plain"
    assert main(["preprocess", str(root), str(out), "--image-size", str(SIZE), "--workers", "1"]) == 0
    return out


def test_the_demo_export_looks_like_a_pacs_export(export, headers):
    root, summary = export
    assert (root / DICOMDIR).is_file() and (root / README).is_file() and (root / LABELS_CSV).is_file()
    assert not any(p.suffix for p in root.rglob("*") if p.is_file() and p.parent != root)  # no extensions
    assert headers["path"].str.count("/").min() == 3  # PT/ST/SE/IM
    chest = headers[headers["Modality"].isin(["CR", "DX"])]
    syntaxes = Counter(pydicom.uid.UID(s).keyword for s in chest["syntax"])
    assert syntaxes["JPEGLosslessSV1"] >= SUBJECTS and len(syntaxes) == 7
    assert set(headers["Modality"]) == {"CR", "DX", "CT", "SR"}
    assert summary.images == len(chest) - 1  # the hand DX is not a chest view


def test_the_demo_export_is_byte_identical_for_any_worker_count(export, tmp_path):
    root, _ = export

    def tree_bytes(folder):
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    synthesize(tmp_path / "two", subjects=SUBJECTS, seed=SEED, workers=2, progress=False, layout="dicom-export")
    assert tree_bytes(tmp_path / "two") == tree_bytes(root)
    with pytest.raises(FileExistsError, match=DICOMDIR):
        synthesize(tmp_path / "two", subjects=1, progress=False, layout="dicom-export")


def test_an_export_preprocesses_with_no_flag_grouped_by_study(export, headers, store):
    root, summary = export
    assert detect_layout(root) == "dicom"
    opened = open_store(store)
    assert opened.dataset == "dicom" and opened.label_names == () and len(opened.labels) == 0
    assert len(opened.index) == summary.images
    assert opened.index["study_id"].nunique() == summary.studies
    assert opened.index["subject_id"].nunique() == SUBJECTS
    assert set(opened.index["view"]) <= {"PA", "AP", "LL", "LATERAL"}  # DX views come from ViewCodeSequence
    assert set(opened.skipped["reason"]) == SKIPPED_REASONS and set(opened.skipped["path"]) == {""}
    assert main(["preprocess", str(root), str(store), "--image-size", str(SIZE)]) == 0  # re-run: resumes, no change
    assert open_store(store).index.equals(opened.index)


def test_studies_and_subjects_follow_the_uids_through_the_id_map(export, headers, store, tmp_path):
    root, _ = export
    id_map = tmp_path / "private" / "ids.csv"
    assert main(["preprocess", str(root), str(tmp_path / "again"), "--image-size", str(SIZE), "--id-map",
                 str(id_map)]) == 0
    ids = pd.read_csv(id_map, dtype=str, keep_default_na=False).merge(headers[["path", "Modality"]], on="path")
    assert len(ids) == len(headers) and set(ids.loc[ids["reason"] != "", "Modality"]) == {"SR", "CT", "DX"}
    stored = open_store(store).index.astype({"subject_id": str, "study_id": str})
    linked = stored.merge(ids, on="image_id", suffixes=("", "_map"))
    assert len(linked) == len(stored)
    assert (linked["study_id"] == linked["study_id_map"]).all() and (linked["subject_id"] == linked["subject_id_map"]).all()
    assert linked.groupby("StudyInstanceUID")["study_id"].nunique().max() == 1
    assert linked.groupby("study_id")["StudyInstanceUID"].nunique().max() == 1
    assert linked.groupby("PatientID")["subject_id"].nunique().max() == 1
    assert main(["preprocess", str(root), str(tmp_path / "s"), "--id-map", str(tmp_path / "s" / "ids.csv")]) == 2
    assert not (tmp_path / "s").exists()


def test_no_identifying_header_value_reaches_the_store_or_the_output(export, headers, tmp_path):
    root, _ = export
    labels = tmp_path / "labels.csv"
    shutil.copy(root / LABELS_CSV, labels)
    split_file = tmp_path / "splits.csv"
    split_file.write_text(f"PatientID,split\n{headers['PatientID'].iloc[0]},test\n")
    out = tmp_path / "store"
    result = subprocess.run(
        [sys.executable, "-m", "raddiffusion", "preprocess", str(root), str(out), "--image-size", str(SIZE),
         "--workers", "1", "--labels", str(labels), "--split-file", str(split_file)],
        capture_output=True, text=True, check=True,
    )
    secrets = {value for column in IDENTIFYING for value in headers[column] if value}
    assert len(secrets) > 50 and any(s.startswith("MRN-") for s in secrets) and "Demo General Hospital" in secrets
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    output = result.stdout + result.stderr
    for secret in secrets:
        assert secret.encode() not in written, secret
        assert secret not in output, secret
    assert "read headers" in result.stderr and "stored 16 of 19" in result.stdout


def test_labels_by_accession_or_study_uid_and_a_split_file(export, headers, tmp_path):
    root, summary = export
    by_accession = read_dicom_export(root, ExportOptions(labels=root / LABELS_CSV))
    assert len(by_accession.labels) == summary.labelled_studies and len(by_accession.label_names) == 14
    accession_to_uid = dict(zip(headers["AccessionNumber"], headers["StudyInstanceUID"]))
    frame = pd.read_csv(root / LABELS_CSV, dtype=str, keep_default_na=False)
    frame.insert(0, "StudyInstanceUID", frame.pop("AccessionNumber").map(accession_to_uid))
    frame.to_csv(tmp_path / "by_uid.csv", index=False)
    by_uid = read_dicom_export(root, ExportOptions(labels=tmp_path / "by_uid.csv"))
    assert by_uid.labels.equals(by_accession.labels)

    patient = headers.loc[headers["Modality"] == "CR", "PatientID"].iloc[0]
    (tmp_path / "splits.csv").write_text(f"PatientID,split\n{patient},test\n")
    tree = read_dicom_export(root, ExportOptions(split_file=tmp_path / "splits.csv"))
    default = read_dicom_export(root)
    assert tree.images["image_id"].equals(default.images["image_id"])
    moved = tree.images[tree.images["split"] != default.images["split"]]
    assert set(moved["split"]) <= {"test"} and moved["subject_id"].nunique() <= 1
    assert (tree.images.groupby("subject_id")["split"].nunique() == 1).all()


def test_the_id_key_changes_every_id_and_nothing_else(export):
    root, _ = export
    default, other = read_dicom_export(root), read_dicom_export(root, ExportOptions(id_key="a hospital secret"))
    assert ExportOptions().id_key == DEFAULT_ID_KEY
    assert not set(default.images["subject_id"]) & set(other.images["subject_id"])
    assert not set(default.images["image_id"]) & set(other.images["image_id"])
    assert sorted(Counter(default.images["study_id"]).values()) == sorted(Counter(other.images["study_id"]).values())
    assert (default.images["study_id"] < 2**53).all() and (default.images["subject_id"] > 0).all()


def test_copies_unreadable_and_non_dicom_files(export, tmp_path):
    root, summary = export
    copy = tmp_path / "pacs"
    shutil.copytree(root, copy)
    first = sorted(copy.glob("PT000001/ST000000/SE000000/IM*"))[0]
    shutil.copy(first, copy / "COPY")  # a second copy of an instance, no extension, at the root
    (copy / "BROKEN").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00ZZ\x04\x00abcd")  # an unknown VR
    (copy / "CUT").write_bytes(first.read_bytes()[:400])  # ends inside the file meta
    (copy / "notes.dcm").write_text("not DICOM despite its name\n")
    (copy / ".hidden").write_bytes(first.read_bytes())
    tree = read_dicom_export(copy)
    reasons = set(tree.skipped["reason"])
    assert "a copy of another file (same SOPInstanceUID)" in reasons
    assert "unreadable DICOM header (NotImplementedError)" in reasons
    assert "damaged or truncated DICOM header (no SOPClassUID)" in reasons
    assert len(tree.images) == summary.images and len(tree.skipped) == len(SKIPPED_REASONS) + 3
    assert read_dicom_export(copy).images.equals(tree.images)


def test_forced_layout_and_a_folder_without_chest_images(export, tmp_path):
    root, _ = export
    assert main(["preprocess", str(root), str(tmp_path / "s"), "--layout", "dicom", "--image-size", str(SIZE),
                 "--workers", "1"]) == 0
    only_ct = tmp_path / "ct"
    only_ct.mkdir()
    ct = next(p for p in root.rglob("IM*") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT")
    shutil.copy(ct, only_ct / "IM1")
    with pytest.raises(Exception, match="no chest radiograph \\(CR / DX\\) among 1 DICOM files"):
        read_dicom_export(only_ct)


def test_probe_and_finetune_say_in_one_line_that_the_store_has_no_labels(store, tmp_path, capsys):
    model = tmp_path / "xs.safetensors"
    save_model(create("xs", "vanilla", image_size=SIZE), model)
    capsys.readouterr()
    for argv in (["probe", str(model), "--store", str(store)],
                 ["finetune", str(store), "--run", str(tmp_path / "ft"), "--from", str(model), "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "has no labels, so it serves pretraining only" in err, err
        assert "--labels" in err


def test_pretraining_runs_on_a_store_without_labels(store, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", str(store), "--run", str(run), "--epochs", "1", "--batch-size", "4",
                 "--image-size", str(SIZE), "--workers", "0", "--quiet"]) == 0
    assert not (run / "probe").exists()
    assert (store / shard_dirname(1, 1) / SKIPPED_FILE).is_file()
