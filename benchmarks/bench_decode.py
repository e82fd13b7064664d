"""Preprocessing throughput of raddiffusion.data.decode.load_image, one process, prints JSON.

Generates MIMIC-sized (2500 x 3000) radiograph-like images into a temporary directory: JPGs at
quality 95 (smooth anatomy-like content plus mild noise, about the 1.5 MB of a MIMIC-CXR-JPG file)
and 16-bit DICOMs, uncompressed and JPEG 2000 lossless. Reports images/s for the reduced-size decode
(``reduced_decode=True``, the default) and for the full decode + resize, and their speed ratio.
For JPG it also reports the ceiling of that ratio: full path time over the time of a bare 1/8-scale
decode, the cheapest decode libjpeg offers (Huffman decoding of the whole file is a fixed cost).

    python benchmarks/bench_decode.py [--size 256] [--images 3] [--seconds 2] [--noise 2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from raddiffusion.data.decode import load_image

from machine import describe_machine

WIDTH, HEIGHT = 2500, 3000
JPEG_QUALITY = 95
DEFAULT_NOISE = 2.0
"""Noise standard deviation in 8-bit grey levels; 2 gives MIMIC-like 1.5 MB JPGs at quality 95."""
SMALLEST_DCT_SCALE = 8
BITS = 16
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
MIN_ROUNDS = 2


def radiograph_like(seed: int, noise_grey_levels: float) -> np.ndarray:
    """Float [0, 1] image: a bright mediastinum, darker lungs, rib stripes and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    y, x = y / HEIGHT, x / WIDTH
    body = 0.45 + 0.25 * np.cos(3 * (x - 0.5 + 0.02 * seed)) * np.exp(-((y - 0.6) ** 2) / 0.3)
    ribs = 0.12 * np.sin((38 + seed) * y) * ((x > 0.2) & (x < 0.8))
    noise = noise_grey_levels / 255 * rng.standard_normal((HEIGHT, WIDTH), dtype=np.float32)
    return np.clip(body + ribs + noise, 0.0, 1.0)


def write_jpeg(path: Path, unit: np.ndarray) -> Path:
    Image.fromarray(np.rint(unit * 255).astype(np.uint8)).save(path, quality=JPEG_QUALITY)
    return path


def write_dicom(path: Path, unit: np.ndarray, compression: str | None) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CR_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.set_pixel_data(np.rint(unit * (2**BITS - 1)).astype(np.uint16), "MONOCHROME2", BITS)
    if compression is not None:
        ds.compress(compression)
    ds.save_as(path, enforce_file_format=True)
    return path


def images_per_second(paths: list[Path], size: int, seconds: float, reduced_decode: bool) -> float:
    """Decode all paths round after round (after one warm-up image) until ``seconds`` have passed."""
    load_image(paths[0], size, reduced_decode=reduced_decode)
    decoded, start = 0, time.perf_counter()
    rounds = 0
    while rounds < MIN_ROUNDS or time.perf_counter() - start < seconds:
        for path in paths:
            load_image(path, size, reduced_decode=reduced_decode)
        decoded += len(paths)
        rounds += 1
    return decoded / (time.perf_counter() - start)


def bare_eighth_scale_decodes_per_second(paths: list[Path], seconds: float) -> float:
    """JPEG decodes per second at 1/8 DCT scale with nothing else: the floor of any JPG path."""

    def decode(path: Path) -> None:
        with Image.open(path) as image:
            image.draft("L", (image.width // SMALLEST_DCT_SCALE, image.height // SMALLEST_DCT_SCALE))
            image.load()

    decoded, start = 0, time.perf_counter()
    while decoded < MIN_ROUNDS * len(paths) or time.perf_counter() - start < seconds:
        for path in paths:
            decode(path)
        decoded += len(paths)
    return decoded / (time.perf_counter() - start)


def measure(name: str, paths: list[Path], size: int, seconds: float) -> dict[str, float]:
    reduced = images_per_second(paths, size, seconds, reduced_decode=True)
    full = images_per_second(paths, size, seconds, reduced_decode=False)
    megabytes = np.mean([path.stat().st_size for path in paths]) / 1e6
    return {
        f"{name}_reduced_images_per_s": round(reduced, 2),
        f"{name}_full_images_per_s": round(full, 2),
        f"{name}_speedup": round(reduced / full, 2),
        f"{name}_mean_file_mb": round(float(megabytes), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="target side in pixels")
    parser.add_argument("--images", type=int, default=3, help="distinct generated images per format")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timing per measurement")
    parser.add_argument("--noise", type=float, default=DEFAULT_NOISE, help="noise std in 8-bit grey levels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        units = [radiograph_like(seed, args.noise) for seed in range(args.images)]
        jpegs = [write_jpeg(root / f"{i}.jpg", unit) for i, unit in enumerate(units)]
        plain = [write_dicom(root / f"{i}.dcm", unit, None) for i, unit in enumerate(units)]
        j2k = [write_dicom(root / f"{i}.j2k.dcm", unit, JPEG2000Lossless) for i, unit in enumerate(units)]
        result = {
            "image": f"{WIDTH}x{HEIGHT}",
            "target_size": args.size,
            **describe_machine(),
        }
        result |= measure("jpg", jpegs, args.size, args.seconds)
        floor_rate = bare_eighth_scale_decodes_per_second(jpegs, args.seconds)
        result["jpg_speedup_ceiling"] = round(floor_rate / result["jpg_full_images_per_s"], 2)
        result |= measure("dicom_uncompressed", plain, args.size, args.seconds)
        result |= measure("dicom_jpeg2000", j2k, args.size, args.seconds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
