"""Preprocessing into a store: content, skip report, shards, resume after SIGKILL, argument checks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from raddiffusion.data.mimic import DataError, image_path
from raddiffusion.data.preprocess import CHUNKS_DIR, parse_shard, preprocess
from raddiffusion.data.store import DONE_FILE, IMAGES_FILE, SKIPPED_FILE, open_store, shard_dirname

from conftest import TREE_IMAGE_SHAPE, TreeImage, grey_jpg, labels_row, small_labels, write_tree

SIZE = 16
PATIENT_NAME = "Secret^Person"
BIRTH_DATE = "19010203"


def _run(root: Path, store: Path, **kwargs):
    return preprocess(root, store, **({"image_size": SIZE, "workers": 1, "progress": False} | kwargs))


def test_store_holds_every_image_with_its_ids_and_pixels(small_tree, tmp_path):
    summary = _run(small_tree.root, tmp_path / "store")
    n = len(small_tree.images)
    assert (summary.stored, summary.skipped, summary.decoded, summary.reused) == (n, 0, n, 0)
    store = open_store(tmp_path / "store")
    assert store.images.shape == (n, SIZE, SIZE) and store.images.dtype == np.uint8
    assert list(store.index.columns) == ["image_id", "subject_id", "study_id", "view", "split"]
    by_id = {im.dicom_id: im for im in small_tree.images}
    for row, entry in enumerate(store.index.itertuples()):
        source = by_id[entry.image_id]
        assert (entry.subject_id, entry.study_id, entry.view, entry.split) == (
            source.subject_id, source.study_id, source.view, source.split
        )
        assert abs(int(np.median(store.images[row])) - source.grey) <= 2
    assert set(store.labels.index) == set(small_labels())
    np.testing.assert_array_equal(store.labels.loc[50000001, ["Cardiomegaly", "Edema"]], [1.0, -1.0])
    assert np.isnan(store.labels.loc[50000001, "Fracture"])


def test_images_are_memory_mapped_uint8_files(small_tree, tmp_path):
    _run(small_tree.root, tmp_path / "store")
    store = open_store(tmp_path / "store")
    assert all(isinstance(m, np.memmap) for m in store.images._open())
    size = (tmp_path / "store" / shard_dirname(1, 1) / IMAGES_FILE).stat().st_size
    assert size == len(small_tree.images) * SIZE * SIZE


def _dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2") -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.PatientName, ds.PatientBirthDate, ds.Modality = PATIENT_NAME, BIRTH_DATE, "CR"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    if pixels is not None:
        colour = pixels.ndim == 3
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = 3 if colour else 1
        ds.PhotometricInterpretation = photometric
        if colour:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = 8 if colour else 12
        ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
        ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _bad_dicom_tree(root: Path) -> list[TreeImage]:
    """Three good DICOMs (one RGB) and one of each kind of bad input, each in its own study."""
    names = ["good-1", "good-2", "zero-bytes", "no-pixels", "colour", "text", "missing"]
    images = [TreeImage(10000001 + k, 50000001 + k, name, "PA", 0, "train") for k, name in enumerate(names)]
    write_tree(root, images, {50000001: labels_row(Edema=1.0)}, write_images=False)
    path = {im.dicom_id: root / image_path(im.subject_id, im.study_id, im.dicom_id, ".dcm") for im in images}
    ramp = (np.arange(np.prod(TREE_IMAGE_SHAPE)) % 4096).astype(np.uint16).reshape(TREE_IMAGE_SHAPE)
    _dicom(path["good-1"], ramp)
    _dicom(path["good-2"], ramp, photometric="MONOCHROME1")
    _dicom(path["no-pixels"], None)
    _dicom(path["colour"], np.zeros((*TREE_IMAGE_SHAPE, 3), np.uint8), photometric="RGB")
    for name, content in (("zero-bytes", b""), ("text", b"this is not an image\n")):
        path[name].parent.mkdir(parents=True)
        path[name].write_bytes(content)
    return images


def test_bad_dicoms_are_skipped_with_reasons_and_good_ones_stored(tmp_path, capsys):
    _bad_dicom_tree(tmp_path / "mimic")
    summary = _run(tmp_path / "mimic", tmp_path / "store")
    assert (summary.stored, summary.skipped) == (3, 4)
    store = open_store(tmp_path / "store")
    assert sorted(store.index["image_id"]) == ["colour", "good-1", "good-2"]  # colour is read as its luminance
    reasons = dict(zip(store.skipped["image_id"], store.skipped["reason"].str.lower()))
    assert set(reasons) == {"zero-bytes", "no-pixels", "text", "missing"}
    assert all(reasons.values())
    assert "pixel" in reasons["no-pixels"] and "not found" in reasons["missing"]
    assert "skipped" in summary.line() and SKIPPED_FILE in summary.line()


def test_truncated_jpg_is_skipped(small_tree, tmp_path):
    victim = small_tree.images[3]
    path = small_tree.root / image_path(victim.subject_id, victim.study_id, victim.dicom_id, ".jpg")
    grey_jpg(path, 128)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    summary = _run(small_tree.root, tmp_path / "store")
    store = open_store(tmp_path / "store")
    assert summary.skipped == 1 and list(store.skipped["image_id"]) == [victim.dicom_id]
    assert len(store.index) == len(small_tree.images) - 1


def test_no_patient_field_reaches_the_store_or_the_output(tmp_path):
    _bad_dicom_tree(tmp_path / "mimic")
    result = subprocess.run(
        [sys.executable, "-m", "raddiffusion", "preprocess", str(tmp_path / "mimic"), str(tmp_path / "store"),
         "--image-size", str(SIZE), "--workers", "1"],
        capture_output=True, text=True, check=True,
    )
    written = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    for secret in (PATIENT_NAME, "Secret", BIRTH_DATE):
        assert secret.encode() not in written
        assert secret not in result.stdout + result.stderr
    assert "stored 3 of 7" in result.stdout


def test_workers_do_not_change_the_store(small_tree, tmp_path):
    _run(small_tree.root, tmp_path / "one", workers=1, chunk_size=2)
    _run(small_tree.root, tmp_path / "two", workers=2, chunk_size=2)
    assert _store_bytes(tmp_path / "one") == _store_bytes(tmp_path / "two")


def _store_bytes(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_shards_read_as_one_store(small_tree, tmp_path):
    _run(small_tree.root, tmp_path / "whole")
    _run(small_tree.root, tmp_path / "sharded", shard=(2, 2))
    with pytest.raises(DataError, match="1/2 missing or unfinished"):
        open_store(tmp_path / "sharded")
    _run(small_tree.root, tmp_path / "sharded", shard=(1, 2))
    whole, sharded = open_store(tmp_path / "whole"), open_store(tmp_path / "sharded")
    assert len(sharded) == len(whole)
    for name in ("shard-001-of-002", "shard-002-of-002"):
        assert 0 < len(open(tmp_path / "sharded" / name / "index.csv").readlines()) - 1 < len(whole)
    order_w = np.argsort(whole.index["image_id"].to_numpy())
    order_s = np.argsort(sharded.index["image_id"].to_numpy())
    np.testing.assert_array_equal(whole.images[order_w], sharded.images[order_s])
    assert whole.labels.sort_index().equals(sharded.labels.sort_index())
    one = len(sharded.images._maps[0])
    np.testing.assert_array_equal(sharded.images[[one - 1, one, -1]], np.stack([
        sharded.images._maps[0][one - 1], sharded.images._maps[1][0], sharded.images._maps[1][-1]]))


def test_rerun_of_a_finished_store_does_nothing(small_tree, tmp_path):
    _run(small_tree.root, tmp_path / "store")
    again = _run(small_tree.root, tmp_path / "store")
    assert (again.decoded, again.reused, again.stored) == (0, len(small_tree.images), len(small_tree.images))


def test_rerun_with_other_arguments_is_refused(small_tree, tmp_path):
    _run(small_tree.root, tmp_path / "store")
    with pytest.raises(DataError, match="image_size 16 \\(now 32\\)"):
        _run(small_tree.root, tmp_path / "store", image_size=32)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1-2", "a/b"])
def test_bad_shard_spec(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


SLOW_PREPROCESS = textwrap.dedent(
    """
    import sys, time
    import raddiffusion.data.preprocess as pre
    decode = pre.read_image
    def slow_decode(path, size):
        time.sleep(0.02)
        return decode(path, size)
    pre.read_image = slow_decode
    pre.preprocess(sys.argv[1], sys.argv[2], image_size=16, workers=int(sys.argv[3]), chunk_size=2, progress=False)
    """
)


def _many_images_tree(root: Path) -> list[TreeImage]:
    images = [
        TreeImage(10000000 + s, 50000000 + s, f"img-{s:03d}-{v}", "PA" if v == 0 else "LATERAL", (s * 7 + v) % 256, "train")
        for s in range(40) for v in range(2)
    ]
    return write_tree(root, images, {50000000: labels_row(Edema=1.0)}).images


def _kill_when(process: subprocess.Popen, chunk_dir: Path, marks: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if chunk_dir.is_dir() and len(list(chunk_dir.glob("chunk-*.json"))) >= marks:
            break
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, workers):
    images = _many_images_tree(tmp_path / "mimic")
    _run(tmp_path / "mimic", tmp_path / "reference", chunk_size=2)
    store = tmp_path / "store"
    shard_dir = store / shard_dirname(1, 1)
    for marks in (3, 15):
        process = subprocess.Popen(
            [sys.executable, "-c", SLOW_PREPROCESS, str(tmp_path / "mimic"), str(store), str(workers)],
            start_new_session=True,
        )
        _kill_when(process, shard_dir / CHUNKS_DIR, marks)
        assert not (shard_dir / DONE_FILE).exists(), "the run finished before it was killed"
    finished = len(list((shard_dir / CHUNKS_DIR).glob("chunk-*.json")))
    summary = _run(tmp_path / "mimic", store, chunk_size=2)
    assert summary.reused == 2 * finished >= 2 * 15
    assert summary.decoded == len(images) - summary.reused
    assert _store_bytes(store) == _store_bytes(tmp_path / "reference")
