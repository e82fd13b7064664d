"""Preprocessing throughput per process of a DICOM export (layout dicom) by transfer syntax, prints JSON.

Writes ``--images`` MIMIC-sized (2500 x 3000) 12-bit CR files, radiograph-like with noise (as in
bench_decode.py), into one export-shaped folder per syntax (PT/ST/SE/IM folders, no extension, two
views per study): JPEG Lossless SV1 (the demo's encoder), JPEG-LS lossless (pyjpegls) and
uncompressed. Then ``preprocess`` each with one worker process and reports the images stored per
second (the summary's own count and time: header reading, decoding, resize to ``--size``, assembly),
the time reading the headers alone, the mean file size and the pixel-data plugin used. Then the
header reading rate on many files: ``--header-files`` small (64 x 64) files, read as an export
without decoding. Last, the bare decode time of one image by every installed pydicom plugin, per
compressed syntax (best of ``ROUNDS``; each must give back the stored values exactly): what
``data/codecs.py`` chooses by.

    cd benchmarks && python bench_dicom_export.py [--images 20] [--size 256] [--noise 2] [--header-files 5000]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from raddiffusion.data.codecs import decoding_plugin
from raddiffusion.data.dicom_export import read_dicom_export
from raddiffusion.data.preprocess import preprocess
from raddiffusion.data.synth.dicom import compress

from bench_decode import DEFAULT_NOISE, radiograph_like
from machine import describe_machine

BITS = 12
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
VIEWS_PER_STUDY = 2
SYNTAXES = {"jpeg-lossless-sv1": "jpeg-lossless", "jpeg-ls": "jpeg-ls", "uncompressed": "explicit"}
"""Name in the output -> the demo DICOM writer's transfer (data/synth/dicom.py TRANSFERS)."""
PLUGIN_SYNTAXES = {"jpeg-lossless-sv1": "jpeg-lossless", "jpeg-ls": "jpeg-ls", "rle": "rle",
                   "jpeg2000-lossless": "jpeg2000"}
ROUNDS = 3
SMALL_SHAPE = (64, 64)
FILES_PER_FOLDER = 100


def cr_dataset(pixels: np.ndarray, number: int) -> Dataset:
    """An uncompressed 12-bit chest CR; two views per study, one study per patient."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CR_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(entropy_srcs=["image", str(number)])
    study = number // VIEWS_PER_STUDY
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(study)])
    ds.PatientID = f"BENCH-{study}"
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    ds.ViewPosition = "PA" if number % VIEWS_PER_STUDY == 0 else "LATERAL"
    ds.set_pixel_data(pixels, "MONOCHROME2", BITS)
    return ds


def encoded(ds: Dataset, transfer: str) -> Dataset:
    compress(ds, transfer, BITS)
    return ds


def write_exports(work: Path, images: int, noise: float) -> None:
    for number in range(images):
        pixels = np.rint(radiograph_like(number, noise) * (2**BITS - 1)).astype(np.uint16)
        for name, transfer in SYNTAXES.items():
            path = work / name / f"PT{number // VIEWS_PER_STUDY:06d}" / "ST000000" / f"SE{number:06d}" / "IM000000"
            path.parent.mkdir(parents=True)
            encoded(cr_dataset(pixels, number), transfer).save_as(path, enforce_file_format=True)


def measure(name: str, work: Path, size: int) -> dict:
    root = work / name
    files = list(root.rglob("IM*"))
    syntax = pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    started = time.perf_counter()
    read_dicom_export(root)
    header_seconds = time.perf_counter() - started
    summary = preprocess(root, work / f"{name}-store", image_size=size, workers=1, progress=False)
    available = pydicom.pixels.get_decoder(syntax).available_plugins
    return {"syntax": name, "plugin": decoding_plugin(syntax, BITS, available) or "native",
            "images": summary.stored, "skipped": summary.skipped,
            "mean_file_mb": round(sum(f.stat().st_size for f in files) / len(files) / 1e6, 2),
            "header_files_per_s": round(len(files) / header_seconds, 1),
            "seconds": round(summary.seconds, 2), "images_per_s": round(summary.stored / summary.seconds, 2)}


def header_files_per_second(work: Path, count: int) -> float:
    """Files per second ``read_dicom_export`` reads (walk, headers, table) from ``count`` small files."""
    root = work / "many"
    pixels = np.zeros(SMALL_SHAPE, np.uint16)
    for number in range(count):
        path = root / f"PT{number // FILES_PER_FOLDER:06d}" / f"IM{number:06d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        cr_dataset(pixels, number).save_as(path, enforce_file_format=True)
    started = time.perf_counter()
    read_dicom_export(root)
    return round(count / (time.perf_counter() - started), 1)


def plugin_seconds(pixels: np.ndarray) -> list[dict]:
    """Seconds to decode ``pixels`` by every installed plugin of each compressed syntax (best of ROUNDS)."""
    rows = []
    for name, transfer in PLUGIN_SYNTAXES.items():
        ds = encoded(cr_dataset(pixels, 0), transfer)
        syntax = ds.file_meta.TransferSyntaxUID
        for plugin in pydicom.pixels.get_decoder(syntax).available_plugins:
            times = []
            for _ in range(ROUNDS):
                started = time.perf_counter()
                decoded = pydicom.pixels.pixel_array(ds, decoding_plugin=plugin)
                times.append(time.perf_counter() - started)
            rows.append({"syntax": name, "plugin": plugin, "exact": bool(np.array_equal(decoded, pixels)),
                         "seconds": round(min(times), 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="2500 x 3000 images per syntax (default 20)")
    parser.add_argument("--size", type=int, default=256, help="stored image side (default 256)")
    parser.add_argument("--noise", type=float, default=DEFAULT_NOISE, help="noise std in 8-bit grey levels")
    parser.add_argument("--header-files", type=int, default=5000, help="small files for the header rate (default 5000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_exports(work, args.images, args.noise)
        results = [measure(name, work, args.size) for name in SYNTAXES]
        headers = header_files_per_second(work, args.header_files)
    pixels = np.rint(radiograph_like(0, args.noise) * (2**BITS - 1)).astype(np.uint16)
    print(json.dumps({"machine": describe_machine(), "workers": 1, "size": args.size, "bits_stored": BITS,
                      "results": results, "header_files_per_s": headers, "decode_one_image": plugin_seconds(pixels)},
                     indent=1))


if __name__ == "__main__":
    main()
