"""Using trained models on new data: `embed` (streamed, resumable, both formats), `predict` on files,
`reconstruct` of files, and the same through the Python API."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import raddiffusion as rd
import raddiffusion.inference.embed as embed_module
from raddiffusion.cli import main
from raddiffusion.data.decode import load_image
from raddiffusion.data.labels import CHEXPERT_LABELS as LABELS
from raddiffusion.data.mimic import image_path
from raddiffusion.data.preprocess import preprocess
from raddiffusion.inference.embed import embed_store, read_embeddings
from raddiffusion.inference.files import group_files
from raddiffusion.inference.predict import predictions_csv, predict_studies
from raddiffusion.models import StudyClassifier

from conftest import TreeImage, labels_row, write_tree
from test_decode import MIN_CONTRAST, mediastinum_and_lungs, real_files, upper_lungs_and_below_diaphragm

SIZE = 64
TINY = {"image_size": SIZE, "patch_size": 16, "width": 32, "depth": 2, "heads": 2, "mlp_hidden": 64,
        "decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2, "decoder_mlp_hidden": 32}
STUDIES = 11  # 1-3 views each; splits train / validate / test by study number
NOISE_SHAPE = (90, 80)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def noise_picture(path: Path, seed: int, suffix: str = ".jpg") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, NOISE_SHAPE, dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG" if suffix == ".png" else "JPEG", quality=95)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inference")
    images, labels = [], {}
    for s in range(STUDIES):
        split = "test" if s % 5 == 4 else "validate" if s % 5 == 3 else "train"
        subject, study = 10_000_000 + s, 50_000_000 + s
        for k, view in enumerate(["PA", "LATERAL", "AP"][: 1 + s % 3]):
            images.append(TreeImage(subject, study, f"{study:08d}-{k:02d}", view, 0, split))
        labels[study] = labels_row(Cardiomegaly=float(s & 1))
    tree = write_tree(root / "mimic", images, labels, write_images=False)
    for n, im in enumerate(tree.images):
        noise_picture(tree.root / image_path(im.subject_id, im.study_id, im.dicom_id, ".jpg"), n)
    preprocess(tree.root, root / "store", image_size=SIZE, workers=1, progress=False)
    return root / "store"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny models of each kind, saved as a user would have them."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vanilla, diffusion = rd.create("xs", "vanilla", **TINY), rd.create("xs", "diffusion", timesteps=50, **TINY)
    classifier = StudyClassifier.from_pretrained(vanilla)
    torch.nn.init.normal_(classifier.head.weight, std=0.5)  # probabilities that differ between studies
    return {name: rd.save_model(model, root / f"{name}.safetensors")
            for name, model in (("vanilla", vanilla), ("diffusion", diffusion), ("classifier", classifier))}


def api_vectors(model: torch.nn.Module, store_path: Path, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    dataset = rd.StudyDataset(rd.open_store(store_path), split=split)
    batch = rd.collate_studies([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        return model.embed(batch["images"], batch["lengths"]).numpy(), batch["study_id"].numpy()


# ----------------------------------------------------------------------------------------------- embed


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_embed_command_gives_the_vectors_of_model_embed(store, checkpoints, tmp_path, capsys, suffix):
    out = tmp_path / f"vectors{suffix}"
    assert main(["embed", str(checkpoints["diffusion"]), str(store), "--out", str(out), "--batch-size", "3",
                 "--quiet"]) == 0
    ids, vectors = read_embeddings(out)
    expected, study_ids = api_vectors(rd.load(checkpoints["diffusion"]), store)
    np.testing.assert_array_equal(ids["study_id"].to_numpy(), study_ids)
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5)
    assert vectors.dtype == np.float32 and vectors.shape == (STUDIES, TINY["width"])
    assert ids["views"].tolist() == [1 + s % 3 for s in range(STUDIES)]
    assert ids["subject_id"].tolist() == [10_000_000 + s for s in range(STUDIES)]
    assert "studies" in capsys.readouterr().out
    assert not out.with_name(out.name + ".parts").exists()


def test_embed_of_one_split_holds_only_its_studies(store, checkpoints, tmp_path):
    out = tmp_path / "test.npz"
    assert main(["embed", str(checkpoints["vanilla"]), str(store), "--out", str(out), "--split", "test",
                 "--quiet"]) == 0
    ids, vectors = read_embeddings(out)
    expected, study_ids = api_vectors(rd.load(checkpoints["vanilla"]), store, "test")
    assert set(ids["split"]) == {"test"} and len(ids) == len(study_ids) > 0
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5)


def test_interrupted_embed_resumes_from_finished_chunks(store, checkpoints, tmp_path, monkeypatch):
    model, opened = rd.load(checkpoints["vanilla"]), rd.open_store(store)
    whole = tmp_path / "whole.parquet"
    embed_store(model, opened, whole, chunk_studies=3, progress=False)
    saved: list[Path] = []
    original = embed_module.save_chunk

    def crash_on_the_third(path, vectors):
        if len(saved) == 2:
            raise KeyboardInterrupt
        saved.append(path)
        original(path, vectors)

    monkeypatch.setattr(embed_module, "save_chunk", crash_on_the_third)
    out = tmp_path / "resumed.parquet"
    with pytest.raises(KeyboardInterrupt):
        embed_store(model, opened, out, chunk_studies=3, progress=False)
    assert not out.exists() and len(saved) == 2
    monkeypatch.setattr(embed_module, "save_chunk", original)
    summary = embed_store(model, opened, out, chunk_studies=3, progress=False)
    assert summary.resumed_studies == 6
    (ids_a, a), (ids_b, b) = read_embeddings(whole), read_embeddings(out)
    np.testing.assert_array_equal(a, b)
    assert ids_a.equals(ids_b)


def test_parts_of_another_model_are_not_reused(store, checkpoints, tmp_path, monkeypatch):
    opened, out = rd.open_store(store), tmp_path / "v.npz"
    monkeypatch.setattr(embed_module, "write_embeddings", lambda *args: None)  # stop before assembling
    monkeypatch.setattr(embed_module.shutil, "rmtree", lambda path: None)
    embed_store(rd.load(checkpoints["vanilla"]), opened, out, chunk_studies=4, progress=False)
    monkeypatch.undo()
    other = rd.load(checkpoints["diffusion"])
    summary = embed_store(other, opened, out, chunk_studies=4, progress=False)
    assert summary.resumed_studies == 0
    np.testing.assert_allclose(read_embeddings(out)[1], api_vectors(other, store)[0], rtol=0, atol=1e-5)


def test_release_pages_keeps_the_store_readable(store):
    images = rd.open_store(store).images
    before = images[0 : len(images)].copy()
    images.release_pages()
    np.testing.assert_array_equal(images[0 : len(images)], before)


def test_embed_names_a_wrong_output_extension_in_one_line(store, checkpoints, tmp_path, capsys):
    out = tmp_path / "vectors.csv"
    assert main(["embed", str(checkpoints["vanilla"]), str(store), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert ".parquet or .npz" in err and str(out) in err and len(err.strip().splitlines()) == 1


def test_embed_names_a_missing_model_or_store_in_one_line(store, checkpoints, tmp_path, capsys):
    out = str(tmp_path / "v.npz")
    assert main(["embed", str(tmp_path / "none.safetensors"), str(store), "--out", out]) == 2
    assert main(["embed", str(checkpoints["vanilla"]), str(tmp_path / "no-store"), "--out", out]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "checkpoint not found" in lines[0] and "store not found" in lines[1]


def test_embed_rejects_a_zero_batch_size_as_a_usage_error(store, checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["embed", str(checkpoints["vanilla"]), str(store), "--out", str(tmp_path / "v.npz"), "--batch-size", "0"])
    assert exited.value.code == 2 and "--batch-size" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- predict


def study_files(root: Path, study: str, seeds: list[int], suffixes: list[str]) -> list[Path]:
    return [noise_picture(root / study / f"view{k}{suffix}", seed, suffix)
            for k, (seed, suffix) in enumerate(zip(seeds, suffixes))]


def test_predict_gives_model_predict_of_the_preprocessed_files(checkpoints, tmp_path, capsys):
    a = study_files(tmp_path, "s1", [1, 2], [".jpg", ".png"])
    b = study_files(tmp_path, "s2", [3], [".png"])
    assert main(["predict", str(checkpoints["classifier"]), *map(str, a + b), "--study-from-folder"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == [str(tmp_path / "s1"), str(tmp_path / "s2")]
    model = rd.load(checkpoints["classifier"])
    pixels = [np.stack([load_image(f, SIZE) for f in files]) for files in (a, b)]
    images = torch.from_numpy(np.concatenate(pixels)).float()[:, None] / 127.5 - 1.0
    expected = model.predict(images, [2, 1]).numpy()
    for row, values in zip(expected, printed.values()):
        assert list(values) == list(LABELS)
        np.testing.assert_allclose(list(values.values()), row, atol=1e-6)
    assert not np.allclose(expected[0], expected[1])


def test_predict_names_a_corrupt_file_and_predicts_the_rest(checkpoints, tmp_path, capsys):
    good = study_files(tmp_path, "s1", [1, 2], [".jpg", ".jpg"])
    corrupt = tmp_path / "s1" / "broken.jpg"
    corrupt.write_bytes(good[0].read_bytes()[:200])
    only_bad = tmp_path / "s2" / "empty.dcm"
    only_bad.parent.mkdir()
    only_bad.write_bytes(b"")
    other = study_files(tmp_path, "s3", [5], [".png"])
    code = main(["predict", str(checkpoints["classifier"]), str(tmp_path), "--study-from-folder"])
    captured = capsys.readouterr()
    assert code == 1  # a study without one readable file
    assert set(json.loads(captured.out)) == {str(tmp_path / "s1"), str(tmp_path / "s3")}
    assert f"skipped {corrupt}" in captured.err and f"skipped {only_bad}" in captured.err
    assert "s2: no readable image file" in captured.err
    assert "2 of 3 studies predicted" in captured.err and other


def test_predict_csv_has_a_row_per_study(checkpoints, tmp_path, capsys):
    files = study_files(tmp_path, "a", [1], [".jpg"]) + study_files(tmp_path, "b", [2], [".jpg"])
    assert main(["predict", str(checkpoints["classifier"]), *map(str, files), "--study-from-folder", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ",".join(["study", "views", *LABELS])
    assert [line.split(",")[:2] for line in lines[1:]] == [[str(tmp_path / "a"), "1"], [str(tmp_path / "b"), "1"]]


def test_without_study_from_folder_all_files_are_one_study(tmp_path):
    files = study_files(tmp_path, "x", [1], [".jpg"]) + study_files(tmp_path, "y", [2], [".jpg"])
    assert group_files(files) == {str(tmp_path): files}
    assert group_files(files, by_folder=True) == {str(tmp_path / "x"): files[:1], str(tmp_path / "y"): files[1:]}


def test_a_folder_of_runs_is_named_with_the_runs_it_holds(checkpoints, tmp_path, capsys):
    for run in ("pretrain", "finetune"):
        (tmp_path / "vits" / run).mkdir(parents=True)
        (tmp_path / "vits" / run / "model.safetensors").write_bytes(checkpoints["classifier"].read_bytes())
    files = study_files(tmp_path, "s", [1], [".jpg"])
    assert main(["predict", str(tmp_path / "vits"), str(files[0])]) == 2
    assert "a folder of runs (finetune, pretrain); give one of them" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "vits" / "finetune"), str(files[0])]) == 0


def test_predict_refuses_a_pretraining_model(checkpoints, tmp_path, capsys):
    files = study_files(tmp_path, "s", [1], [".jpg"])
    assert main(["predict", str(checkpoints["vanilla"]), str(files[0])]) == 2
    err = capsys.readouterr().err
    assert "fine-tune it first" in err and len(err.strip().splitlines()) == 1


def test_predict_on_the_real_radiographs(checkpoints, capsys):
    dicom = real_files("mimic-cxr-dicom/files/**/*.dcm")
    jpgs = real_files("mimic-cxr-jpg/files/**/*.jpg")
    assert main(["predict", str(checkpoints["classifier"]), *map(str, dicom + jpgs), "--study-from-folder"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed) == len({f.parent for f in dicom + jpgs})
    for values in printed.values():
        assert list(values) == list(LABELS) and all(0.0 < v < 1.0 for v in values.values())


def test_predict_studies_keeps_unreadable_studies_without_probabilities(checkpoints, tmp_path):
    from raddiffusion.inference.files import read_studies

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    study_files(tmp_path, "good", [1], [".png"])
    studies = read_studies([tmp_path], SIZE, by_folder=True)
    predictions = predict_studies(rd.load(checkpoints["classifier"]), studies)
    assert [p.probabilities is None for p in predictions] == [True, False]
    assert predictions_csv(predictions).count("\n") == 2


# ----------------------------------------------------------------------------------------- reconstruct


def test_reconstruct_real_dicom_writes_an_upright_chest_beside_its_reconstruction(checkpoints, tmp_path, capsys):
    (dicom,) = real_files("mimic-cxr-dicom/files/**/*.dcm")
    out = tmp_path / "out"
    assert main(["reconstruct", str(checkpoints["diffusion"]), str(dicom), "--out", str(out), "--steps", "5"]) == 0
    view = out / dicom.name.split(".")[0]
    original = np.asarray(Image.open(view / "input.png"))
    np.testing.assert_array_equal(original, load_image(dicom, SIZE))  # exactly the preprocessing
    centre, left, right = mediastinum_and_lungs(original)
    assert centre > left + MIN_CONTRAST and centre > right + MIN_CONTRAST  # not inverted
    upper, bottom = upper_lungs_and_below_diaphragm(original)
    assert bottom > upper + MIN_CONTRAST  # upright
    reconstruction = np.asarray(Image.open(view / "reconstruction.png"))
    hidden = np.asarray(Image.open(view / "mask.png")) == 255
    assert 0 < hidden.mean() < 1
    np.testing.assert_array_equal(reconstruction[~hidden], original[~hidden])  # visible patches are the input
    assert not np.array_equal(reconstruction[hidden], original[hidden])
    summary = json.loads((out / "reconstruction.json").read_text())
    assert summary["sampler"] == "DDIM 5 steps" and summary["views"][0]["masked_mse"] > 0
    assert (out / "reconstruction_figure.png").is_file() and (out / "animation.gif").is_file()
    assert "reconstruct: 1 view(s)" in capsys.readouterr().out


def test_reconstruct_takes_the_mask_ratio_and_writes_each_view(checkpoints, tmp_path):
    files = study_files(tmp_path, "s", [1, 2], [".jpg", ".png"])
    out = tmp_path / "out"
    assert main(["reconstruct", str(checkpoints["vanilla"]), *map(str, files), "--out", str(out),
                 "--mask-ratio", "0.25", "--mask-seed", "3"]) == 0
    summary = json.loads((out / "reconstruction.json").read_text())
    assert [v["masked_patches"] for v in summary["views"]] == [4, 4]  # 25 % of 16 patches
    assert sorted(p.name for p in out.iterdir()) == ["reconstruction.json", "reconstruction_figure.png", "view0", "view1"]
    for view in ("view0", "view1"):
        hidden = np.asarray(Image.open(out / view / "mask.png")) == 255
        assert hidden.mean() == pytest.approx(0.25)


@pytest.mark.parametrize("args, words", [
    (["--mask-ratio", "1.0"], "mask ratio"),
    (["--mask-ratio", "0"], "mask ratio"),
])
def test_reconstruct_rejects_a_mask_ratio_that_leaves_nothing(checkpoints, tmp_path, capsys, args, words):
    files = study_files(tmp_path, "s", [1], [".jpg"])
    assert main(["reconstruct", str(checkpoints["vanilla"]), str(files[0]), "--out", str(tmp_path / "o"), *args]) == 2
    assert words in capsys.readouterr().err


def test_reconstruct_refuses_a_classifier_and_unreadable_studies(checkpoints, tmp_path, capsys):
    files = study_files(tmp_path, "s", [1], [".jpg"])
    assert main(["reconstruct", str(checkpoints["classifier"]), str(files[0]), "--out", str(tmp_path / "o")]) == 2
    assert "no decoder" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff")
    assert main(["reconstruct", str(checkpoints["vanilla"]), str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"skipped {bad}" in err and "none of the files could be read" in err


def test_api_reconstruct_of_files_never_reads_masked_pixels(checkpoints, tmp_path):
    from raddiffusion.inference.files import read_study, study_batch

    model = rd.load(checkpoints["diffusion"])
    study = read_study("s", study_files(tmp_path, "s", [1, 2], [".png", ".png"]), SIZE)
    images, lengths = study_batch([study])
    first = model.reconstruct(images, lengths, mask_seed=1, seed=2, steps=3, mask_ratio=0.5)
    hidden = torch.from_numpy(np.stack([np.kron(m.reshape(4, 4).numpy(), np.ones((16, 16))) for m in first["mask"]]))
    tampered = torch.where(hidden[:, None].bool(), torch.rand_like(images), images)
    second = model.reconstruct(tampered, lengths, mask_seed=1, seed=2, steps=3, mask_ratio=0.5)
    torch.testing.assert_close(first["reconstruction"], second["reconstruction"], rtol=0, atol=0)


def test_view_folders_keep_dotted_names_and_number_repeats(tmp_path):
    from raddiffusion.inference.files import FileStudy
    from raddiffusion.inference.reconstruct import view_dirs

    files = [Path("a/1.2.840.5.dcm"), Path("b/1.2.840.5.dcm"), Path("c/frontal.JPG")]
    study = FileStudy("s", files, np.zeros((3, SIZE, SIZE), np.uint8))
    assert [d.name for d in view_dirs(study, tmp_path)] == ["1.2.840.5", "1.2.840.5-2", "frontal"]
