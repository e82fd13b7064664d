"""Datasets beyond MIMIC-CXR end to end: each demo layout preprocessed with no flag, real radiographs in the
CheXpert and NIH layouts, reader skips in skipped.csv, stores of the first format, transfer between stores."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import raddiffusion as rd
from conftest import SHARED
from raddiffusion.cli import main
from raddiffusion.data.labels import CHEXPERT_LABELS
from raddiffusion.data.nih import NIH_LABELS
from raddiffusion.data.preprocess import preprocess
from raddiffusion.data.store import DONE_FILE, INDEX_FILE, SKIPPED_FILE
from raddiffusion.data.synth import synthesize

SUBJECTS = 24  # enough for all three splits in every layout
SIZE = 64
CHEXPERT_DIR = "CheXpert-v1.0-small"
REAL_JPG = SHARED / "data" / "real-cxr" / "mimic-cxr-jpg"
NIH_SIDE = 1024
CHEXPERT_SHORT_SIDE = 320
MIN_CORRELATION = 0.98  # the same radiograph through two layouts


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """The same demo subjects in the three layouts, each preprocessed with ROOT STORE only."""
    base = tmp_path_factory.mktemp("layouts")
    roots = {"mimic": base / "mimic", "chexpert": base / "chexpert" / CHEXPERT_DIR, "nih": base / "nih"}
    stores = {}
    for layout, root in roots.items():
        synthesize(root if layout != "chexpert" else root.parent, subjects=SUBJECTS, seed=3, workers=1,
                   progress=False, layout=layout)
        stores[layout] = base / f"{layout}-store"
        preprocess(root, stores[layout], image_size=SIZE, workers=1, progress=False)
    return {"roots": roots, "stores": stores}


def _chexpert_rows(root: Path) -> pd.DataFrame:
    """Every image row of the CheXpert demo tree: path relative to ROOT, split, label values."""
    frames = []
    for name, split in (("train.csv", "train"), ("valid.csv", "validate"), ("test_labels.csv", "test")):
        table = pd.read_csv(root / name)
        table["Path"] = table["Path"].str.replace(f"{CHEXPERT_DIR}/", "", n=1, regex=False)
        frames.append(table.assign(split=split))
    return pd.concat(frames, ignore_index=True)


def test_chexpert_demo_preprocesses_with_its_studies_labels_and_splits(demo):
    root, store = demo["roots"]["chexpert"], rd.open_store(demo["stores"]["chexpert"])
    rows = _chexpert_rows(root)
    assert store.dataset == "chexpert" and store.label_names == CHEXPERT_LABELS
    assert len(store) == len(rows) and len(store.skipped) == 0
    index = store.index.assign(path=store.index["image_id"] + ".jpg").set_index("path")
    folder = rows["Path"].str.rsplit("/", n=1).str[0]
    views_per_folder = folder.value_counts()
    study_of_folder = dict(zip(folder, index.loc[rows["Path"], "study_id"]))
    assert len(set(study_of_folder.values())) == len(views_per_folder)  # one study per patient/study folder
    views_per_study = store.index["study_id"].value_counts()
    assert all(views_per_study[study_of_folder[f]] == n for f, n in views_per_folder.items())  # views kept together
    assert (index.loc[rows["Path"], "split"].to_numpy() == rows["split"].to_numpy()).all()
    first = rows.groupby(folder, sort=False).head(1)
    stored = store.labels.loc[[study_of_folder[f] for f in first["Path"].str.rsplit("/", n=1).str[0]],
                              list(CHEXPERT_LABELS)]
    np.testing.assert_array_equal(stored.to_numpy(np.float32), first[list(CHEXPERT_LABELS)].to_numpy(np.float32))
    assert {"Sex", "Age"}.isdisjoint(store.index.columns) and {"Sex", "Age"}.isdisjoint(store.labels.columns)


def test_nih_demo_preprocesses_one_study_per_image_with_its_findings(demo):
    root, store = demo["roots"]["nih"], rd.open_store(demo["stores"]["nih"])
    entries = pd.read_csv(root / "Data_Entry_2017_v2020.csv", index_col=False)
    assert store.dataset == "nih" and store.label_names == NIH_LABELS and len(NIH_LABELS) == 15
    assert len(store) == len(entries) and store.index["study_id"].is_unique
    test_names = set((root / "test_list.txt").read_text().split())
    split = store.index.set_index("image_id")["split"]
    for row in entries.itertuples():
        image = row[1].removesuffix(".png")
        assert (split[image] == "test") == (row[1] in test_names)
        study = store.index.set_index("image_id").loc[image, "study_id"]
        findings = set(row[2].split("|"))
        expected = [1.0 if name in findings else 0.0 for name in NIH_LABELS]
        assert store.labels.loc[study, list(NIH_LABELS)].tolist() == expected
    assert set(split) == {"train", "validate", "test"}
    assert store.index.groupby("subject_id")["split"].nunique().max() == 1  # patient-disjoint


def test_the_layouts_store_the_same_radiographs(demo):
    """The NIH layout writes each frontal view of the MIMIC layout once, as a 1024² PNG (a few RGBA)."""
    mimic, nih = rd.open_store(demo["stores"]["mimic"]), rd.open_store(demo["stores"]["nih"])
    frontal = np.flatnonzero(mimic.index["view"].isin(["PA", "AP"]).to_numpy())
    assert len(frontal) == len(nih)
    a, b = _standardised(mimic.images[frontal]), _standardised(nih.images[np.arange(len(nih))])
    correlation = a @ b.T / a.shape[1]
    match = correlation.argmax(axis=0)  # each NIH image's MIMIC frontal view
    assert sorted(match) == list(range(len(frontal)))  # one to one
    assert correlation[match, np.arange(len(nih))].min() > MIN_CORRELATION


def _standardised(images: np.ndarray) -> np.ndarray:
    """Each image as a zero-mean, unit-variance row."""
    rows = images.reshape(len(images), -1).astype(np.float64)
    return (rows - rows.mean(axis=1, keepdims=True)) / rows.std(axis=1, keepdims=True)


def _real_jpgs() -> list[Path]:
    if not REAL_JPG.is_dir():
        pytest.skip("../shared/data/real-cxr is not here")
    return sorted(REAL_JPG.glob("files/**/*.jpg"))


def _real_chexpert_tree(root: Path, pictures: list[Path]) -> Path:
    """The real radiographs as a CheXpert-small tree: 8-bit JPG, short side 320, one patient per image."""
    rows = []
    for n, source in enumerate(pictures, start=1):
        rel = f"train/patient{n:05d}/study1/view1_frontal.jpg"
        image = Image.open(source).convert("L")
        scale = CHEXPERT_SHORT_SIDE / min(image.size)
        (root / rel).parent.mkdir(parents=True)
        image.resize((round(image.width * scale), round(image.height * scale))).save(root / rel, quality=95)
        rows.append(f"{CHEXPERT_DIR}/{rel},Female,60,Frontal,PA" + ",0.0" * len(CHEXPERT_LABELS))
    header = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
              "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
              "Fracture,Support Devices")
    (root / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    (root / "valid.csv").write_text(header + "\n")
    return root


def _real_nih_tree(root: Path, pictures: list[Path]) -> Path:
    """The real radiographs as an NIH tree: 1024² 8-bit PNG, the first saved as RGBA."""
    (root / "images").mkdir(parents=True)
    rows, names = [], []
    for n, source in enumerate(pictures, start=1):
        name = f"{n:08d}_000.png"
        image = Image.open(source).convert("L").resize((NIH_SIDE, NIH_SIDE))
        (image.convert("RGBA") if n == 1 else image).save(root / "images" / name)
        rows.append(f"{name},No Finding,0,{n},60,F,PA,{NIH_SIDE},{NIH_SIDE},0.143,0.143")
        names.append(name)
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join([header, *rows]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names) + "\n")
    (root / "test_list.txt").write_text("")
    return root


def test_real_radiographs_come_out_upright_and_recognisable_from_chexpert_and_nih_trees(tmp_path):
    pictures = _real_jpgs()
    reference = tmp_path / "mimic-store"
    preprocess(REAL_JPG, reference, image_size=SIZE, workers=1, progress=False)
    mimic = rd.open_store(reference)
    by_path = {Path(p).name: k for k, p in enumerate(mimic.index["image_id"] + ".jpg")}
    trees = {"chexpert": _real_chexpert_tree(tmp_path / CHEXPERT_DIR, pictures),
             "nih": _real_nih_tree(tmp_path / "nih", pictures)}
    for layout, root in trees.items():
        preprocess(root, tmp_path / f"{layout}-store", image_size=SIZE, workers=1, progress=False)
        store = rd.open_store(tmp_path / f"{layout}-store")
        assert store.dataset == layout and len(store) == len(pictures) and len(store.skipped) == 0
        for k, source in enumerate(pictures):  # stored in patient order = the order written
            image = store.images[k].astype(np.float64)
            same = mimic.images[by_path[source.name]].astype(np.float64)
            assert np.corrcoef(image.ravel(), same.ravel())[0, 1] > MIN_CORRELATION, (layout, source.name)
            assert image[SIZE * 3 // 4 :].mean() > image[SIZE // 8 : SIZE // 2].mean()  # upright: abdomen below


def test_reader_skips_are_listed_in_skipped_csv_and_the_rest_is_stored(tmp_path):
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(np.full((40, 40), 90, np.uint8)).save(root / "images" / f"{name}.png")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,subject,Finding\nimages/a.png,1,1\nimages/b.png,2,maybe\nimages/c.png,3,0\n"
                        "../x.png,4,0\n")
    summary = preprocess(root, tmp_path / "store", image_size=SIZE, workers=1, progress=False, manifest=manifest)
    store = rd.open_store(tmp_path / "store")
    assert (summary.stored, summary.skipped) == (1, 3) and list(store.index["image_id"]) == ["images/a"]
    reasons = pd.read_csv(tmp_path / "store" / "shard-001-of-001" / SKIPPED_FILE)["reason"].tolist()
    assert any("'maybe'" in r for r in reasons) and any("file not found" in r for r in reasons)
    assert any("escapes ROOT" in r for r in reasons)
    assert store.dataset == "csv" and store.label_names == ("Finding",)


def test_a_store_of_the_first_format_opens_as_mimic_with_the_chexpert_labels(demo, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(demo["stores"]["mimic"], old)
    shard = old / "shard-001-of-001"
    done = json.loads((shard / DONE_FILE).read_text())
    done = {k: v for k, v in done.items() if k not in ("dataset", "label_names")} | {"format": "raddiffusion-store-v1"}
    (shard / DONE_FILE).write_text(json.dumps(done))
    for name in (INDEX_FILE, SKIPPED_FILE):
        table = pd.read_csv(shard / name, dtype=str, keep_default_na=False)
        table.rename(columns={"image_id": "dicom_id"}).to_csv(shard / name, index=False)
    store, new = rd.open_store(old), rd.open_store(demo["stores"]["mimic"])
    assert store.dataset == "mimic" and store.label_names == CHEXPERT_LABELS
    assert store.index.equals(new.index) and store.labels.equals(new.labels)
    (shard / DONE_FILE).write_text(json.dumps(done | {"format": "raddiffusion-store-v9"}))
    with pytest.raises(rd.DataError, match="rebuild it with `raddiffusion preprocess"):
        rd.open_store(old)


def test_unknown_layout_is_one_line_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["preprocess", str(tmp_path / "empty"), str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no known layout" in err and "--manifest" in err


TINY_RUN = ["--encoder-size", "xs", "--image-size", str(SIZE), "--epochs", "1", "--batch-size", "8", "--probe-every",
            "0", "--workers", "0", "--device", "cpu", "--quiet"]


def test_pretraining_pools_several_stores(demo, tmp_path):
    stores, run = demo["stores"], tmp_path / "pooled"
    assert main(["pretrain", str(stores["mimic"]), str(stores["nih"]), "--run", str(run),
                 "--probe-store", str(stores["nih"]), *TINY_RUN]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["datasets"] == ["mimic", "nih"] and config["probe_store"] == str(stores["nih"])
    per_store = [len(rd.StudyDataset(rd.open_store(stores[name]))) for name in ("mimic", "nih")]
    assert config["data"]["train_studies_per_store"] == per_store and config["data"]["train_studies"] == sum(per_store)
    assert list(json.loads((run / "probe" / "epoch_000.json").read_text())["labels"]) == list(NIH_LABELS)
    assert main(["pretrain", str(stores["nih"]), str(stores["mimic"]), "--run", str(run), "--resume", *TINY_RUN]) == 2


def test_transfer_pretrain_on_mimic_probe_and_finetune_on_nih_and_chexpert(demo, tmp_path, capsys):
    stores, run = demo["stores"], tmp_path / "pretrain"
    assert main(["pretrain", str(stores["mimic"]), "--run", str(run), *TINY_RUN]) == 0
    for layout, labels in (("nih", NIH_LABELS), ("chexpert", CHEXPERT_LABELS)):
        assert main(["probe", str(run), "--store", str(stores[layout]), "--split", "test", "--resamples", "20",
                     "--device", "cpu"]) == 0
        probed = json.loads((run / "probe" / f"{stores[layout].name}-test.json").read_text())
        assert list(probed["labels"]) == list(labels) and probed["dataset"] == layout
        assert probed["store"] == str(stores[layout]) and probed["pretrained_on"] == [str(stores["mimic"])]
        tuned = tmp_path / f"finetune-{layout}"
        assert main(["finetune", str(stores[layout]), "--run", str(tuned), "--from", str(run), "--epochs", "1",
                     "--batch-size", "8", "--workers", "0", "--resamples", "20", "--device", "cpu", "--quiet"]) == 0
        tuned_config = json.loads((tuned / "config.json").read_text())
        assert tuned_config["dataset"] == layout and tuned_config["pretrained_on"] == [str(stores["mimic"])]
        assert rd.load(tuned).label_names == labels
        assert list(json.loads((tuned / "test_metrics.json").read_text())["labels"]) == list(labels)
    picture = next((demo["roots"]["nih"] / "images").glob("*.png"))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "finetune-nih"), str(picture), "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    [probabilities] = json.loads(printed.out).values()  # one study: the file given
    assert list(probabilities) == list(NIH_LABELS)
    assert ", ".join(NIH_LABELS) in printed.err  # the summary line names the model's labels
    report = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "finetune-nih"), "--out", str(report)]) == 0
    html = report.read_text()
    assert "dataset nih; 15 labels:" in html and "Pleural_Thickening" in html
