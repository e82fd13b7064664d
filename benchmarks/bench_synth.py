"""Time the demo data generator: about 1,000 images per format, one JSON line per format.

Usage: python benchmarks/bench_synth.py [--images 1000] [--workers N] [--formats jpg dicom]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

from raddiffusion.data.synth import EXPECTED_IMAGES_PER_SUBJECT, FORMATS, synthesize

from machine import describe_machine

DEFAULT_IMAGES = 1000
BENCH_SEED = 0
SUBJECT_HEADROOM = 1.05  # images per subject vary; aim a little high to reach the requested count


def bench(fmt: str, images: int, workers: int) -> dict:
    """Synthesize about ``images`` images of ``fmt`` into a temporary directory and time it."""
    subjects = max(1, math.ceil(SUBJECT_HEADROOM * images / EXPECTED_IMAGES_PER_SUBJECT))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = synthesize(Path(tmp) / fmt, subjects=subjects, fmt=fmt, seed=BENCH_SEED,
                             workers=workers, progress=False)
        seconds = time.perf_counter() - start
    return {"format": fmt, "images": summary.images, "seconds": round(seconds, 2),
            "images_per_s": round(summary.images / seconds, 1), "workers": workers, **describe_machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=["jpg", "dicom"])
    args = parser.parse_args()
    for fmt in args.formats:
        print(json.dumps(bench(fmt, args.images, args.workers)), flush=True)


if __name__ == "__main__":
    main()
