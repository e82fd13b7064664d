"""A hospital's DICOM export as a dataset: the demo writer, the reader and its chest rule, preprocessing it, privacy,
labels."""
from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pydicom
import pytest

from raddiffusion import create, save_model
from raddiffusion.cli import main
from raddiffusion.data.body_parts import ChestRule
from raddiffusion.data.decode import read_image
from raddiffusion.data.dicom_export import DEFAULT_ID_KEY, ExportOptions, read_dicom_export
from raddiffusion.data.layouts import detect_layout
from raddiffusion.data.store import SKIPPED_FILE, open_store, shard_dirname
from raddiffusion.data.synth import synthesize
from raddiffusion.data.synth.dicom_export import BODY_PART_VARIANTS, DICOMDIR, LABELS_CSV, README, RESENT_FOLDER

SUBJECTS, SEED = 4, 0  # 16 chest views in all seven syntaxes and all body-part spellings, 9 studies, 5 labelled
SIZE = 64  # the smallest store an xs model (32-pixel patches) can mask
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "AccessionNumber",
               "ReferringPhysicianName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate")
RAW = "raw detector data (PresentationIntentType 'FOR PROCESSING'), not an image for reading"
COPY = "a copy of another file (same SOPInstanceUID)"
SKIPPED_REASONS = {"not an image (Basic Text SR Storage)", "modality 'CT' is not CR, DX, DR or RG",
                   "body part 'HAND' is not the chest (a site's own word: --body-part)", RAW, COPY,
                   "a secondary capture (ConversionType 'WSD'), not an acquired radiograph"}
ABSENT = "<absent>"


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
                     "Modality": ds.Modality, "BodyPartExamined": str(ds.get("BodyPartExamined", ABSENT)),
                     "intent": str(ds.get("PresentationIntentType", "")), "class": ds.SOPClassUID.name,
                     **{k: str(ds.get(k, "")) for k in IDENTIFYING}})
    return pd.DataFrame(rows)


def _radiographs(headers: pd.DataFrame) -> pd.DataFrame:
    """The chest radiographs a reader must keep: CR / DX images for presentation, of the chest, each once."""
    chest = headers[headers["class"].isin(["Computed Radiography Image Storage",
                                         "Digital X-Ray Image Storage - For Presentation"])
                    & (headers["BodyPartExamined"] != "HAND")]
    return chest[~chest["path"].str.startswith(RESENT_FOLDER)]


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
    in_dicomdir = ~headers["path"].str.startswith(RESENT_FOLDER)
    assert (headers["path"][in_dicomdir].str.count("/") == 3).all()  # PT/ST/SE/IM
    chest = _radiographs(headers)
    syntaxes = Counter(pydicom.uid.UID(s).keyword for s in chest["syntax"])
    assert syntaxes["JPEGLosslessSV1"] >= SUBJECTS and len(syntaxes) == 7
    assert set(headers["Modality"]) == {"CR", "DX", "CT", "SR"}
    assert set(chest["BodyPartExamined"]) == {v or ABSENT for v in BODY_PART_VARIANTS}
    assert summary.images == len(chest)
    raw = headers[headers["intent"] == "FOR PROCESSING"]
    assert set(raw["class"]) == {"Digital X-Ray Image Storage - For Processing"}
    assert len(raw) == chest[chest["Modality"] == "DX"]["PatientID"].nunique() >= 2  # a twin per subject with a DX
    assert set(raw["StudyInstanceUID"]) <= set(chest.loc[chest["Modality"] == "DX", "StudyInstanceUID"])
    resent = headers[~in_dicomdir]
    assert len(resent) == 1 and resent["SOPInstanceUID"].iloc[0] in set(chest["SOPInstanceUID"])


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
    reasons = Counter(opened.skipped["reason"])
    assert set(reasons) == SKIPPED_REASONS and set(opened.skipped["path"]) == {""}
    assert reasons[RAW] == (headers["intent"] == "FOR PROCESSING").sum() and reasons[COPY] == 1
    assert main(["preprocess", str(root), str(store), "--image-size", str(SIZE)]) == 0  # re-run: resumes, no change
    assert open_store(store).index.equals(opened.index)


def test_studies_and_subjects_follow_the_uids_through_the_id_map(export, headers, store, tmp_path):
    root, _ = export
    id_map = tmp_path / "private" / "ids.csv"
    assert main(["preprocess", str(root), str(tmp_path / "again"), "--image-size", str(SIZE), "--id-map",
                 str(id_map)]) == 0
    ids = pd.read_csv(id_map, dtype=str, keep_default_na=False).merge(headers[["path", "Modality"]], on="path")
    assert len(ids) == len(headers) and set(ids.loc[ids["reason"] != "", "Modality"]) == {"SR", "CT", "DX", "CR"}
    stored = open_store(store).index.astype({"subject_id": str, "study_id": str})
    linked = stored.merge(ids[ids["reason"] == ""], on="image_id", suffixes=("", "_map"))  # not the copy
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
    assert "read headers" in result.stderr and f"stored {len(_radiographs(headers))} of {len(headers)}" in result.stdout
    kept = Counter(_radiographs(headers)["BodyPartExamined"])
    note = next(line for line in result.stdout.splitlines() if "by BodyPartExamined" in line)
    assert note.startswith(f"preprocess: kept {kept.total()} chest radiographs by BodyPartExamined: ")
    for value, count in kept.items():
        assert (f"absent (a description names the chest) {count}" if value == ABSENT else f"{value!r} {count}") in note


def test_every_stored_image_equals_its_uncompressed_original(export, headers, tmp_path):
    root, _ = export
    id_map, out = tmp_path / "ids.csv", tmp_path / "store"
    assert main(["preprocess", str(root), str(out), "--image-size", str(SIZE), "--workers", "1",
                 "--id-map", str(id_map)]) == 0
    ids = pd.read_csv(id_map, dtype=str, keep_default_na=False)
    paths = ids[ids["reason"] == ""].set_index("image_id")["path"]  # a copy shares its original's image_id
    store = open_store(out)
    syntaxes = set()
    for position, image_id in enumerate(store.index["image_id"]):
        original = pydicom.dcmread(root / paths[image_id])
        syntaxes.add(original.file_meta.TransferSyntaxUID)
        if original.file_meta.TransferSyntaxUID.is_compressed:
            original.decompress()
        plain = tmp_path / f"{image_id}.dcm"
        original.save_as(plain, enforce_file_format=True)
        pixels, reason = read_image(plain, SIZE)
        assert reason == "" and np.array_equal(store.images[position], pixels), paths[image_id]
    assert len(store.index) == len(_radiographs(headers)) and len(syntaxes) == 7


@pytest.mark.parametrize(("body_part", "description", "kept"), [
    ("CHEST", "", True), ("chest", "", True), ("Port Chest", "", True), ("CHEST_PA", "", True),
    ("chest-lat", "", True), ("THORAX_PA", "", True), ("TORAX", "", True), ("LUNG", "", True),
    ("ABDOMEN", "CHEST", False), ("T_SPINE", "", False), ("BRUSTKORB", "", False),
    (None, "XR CHEST 2 VIEWS", True), (None, "THORAX PA", True), (None, "THORACIC SPINE", False),
    (None, "HAND PA", False), (None, "", False),
])
def test_the_chest_rule(body_part, description, kept):
    rule = ChestRule()
    if body_part is None:
        assert rule.describes_chest(["", description]) is kept
    else:
        assert rule.is_chest(body_part) is kept
    assert ChestRule(["Brust korb"]).is_chest("BRUSTKORB") and ChestRule(["brustkorb"]).describes_chest(["Brustkorb pa"])
    with pytest.raises(ValueError, match="--body-part"):
        ChestRule(["_"])


def test_a_sites_body_part_word_modality_and_descriptions_decide(export, tmp_path, capsys):
    root, _ = export
    folder = tmp_path / "site"
    folder.mkdir()
    first = next(p for p in sorted(root.glob("PT000001/ST*/SE*/IM*")))
    variants = {"own": ("CR", "BRUSTKORB", None), "dr": ("DR", "CHEST", None), "mammo": ("MG", "CHEST", None),
                "said": ("RG", None, "XR CHEST PA"), "hand": ("CR", None, "HAND PA"), "silent": ("CR", None, None)}
    for number, (name, (modality, body_part, description)) in enumerate(variants.items()):
        ds = pydicom.dcmread(first)
        ds.Modality, ds.SOPInstanceUID = modality, f"1.2.3.{number}"
        for keyword in ("BodyPartExamined", "StudyDescription", "SeriesDescription"):
            ds.pop(keyword, None)
        if body_part:
            ds.BodyPartExamined = body_part
        if description:
            ds.SeriesDescription = description
        ds.save_as(folder / name)
    reasons = dict(zip(read_dicom_export(folder).skipped["image_id"], read_dicom_export(folder).skipped["reason"]))
    assert sorted(reasons.values()) == sorted([
        "body part 'BRUSTKORB' is not the chest (a site's own word: --body-part)",
        "modality 'MG' is not CR, DX, DR or RG",
        "no BodyPartExamined, and no study, series or protocol description names the chest",
        "no BodyPartExamined, and no study, series or protocol description names the chest"])
    assert len(read_dicom_export(folder).images) == 2  # DR / CHEST and RG with a chest description
    assert len(read_dicom_export(folder, ExportOptions(body_parts=("Brustkorb",))).images) == 3
    capsys.readouterr()
    assert main(["preprocess", str(folder), str(tmp_path / "store"), "--image-size", str(SIZE), "--workers", "1",
                 "--body-part", "brustkorb", "--body-part", "TX"]) == 0
    out = capsys.readouterr().out
    assert ("preprocess: kept 3 chest radiographs by BodyPartExamined: 'BRUSTKORB' 1, 'CHEST' 1, "
            "absent (a description names the chest) 1") in out
    assert "stored 3 of 6" in out


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
    assert len(tree.images) == summary.images and len(tree.skipped) == len(read_dicom_export(root).skipped) + 3
    assert read_dicom_export(copy).images.equals(tree.images)


def test_forced_layout_and_a_folder_without_chest_images(export, tmp_path):
    root, _ = export
    assert main(["preprocess", str(root), str(tmp_path / "s"), "--layout", "dicom", "--image-size", str(SIZE),
                 "--workers", "1"]) == 0
    only_ct = tmp_path / "ct"
    only_ct.mkdir()
    ct = next(p for p in root.rglob("IM*") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT")
    shutil.copy(ct, only_ct / "IM1")
    with pytest.raises(Exception, match="no chest radiograph \\(CR / DX / DR / RG\\) among 1 DICOM files"):
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
