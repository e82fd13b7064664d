"""Preprocessing throughput per process for the NIH and CheXpert-small layouts, prints JSON.

Writes a demo tree in each layout with `raddiffusion synth` (NIH: 1024² 8-bit PNG; CheXpert-small:
8-bit JPG, short side 320) into a temporary directory, then preprocesses each with one worker
process and reports the images decoded per second (the preprocess summary's own count and time,
which includes reading the layout's CSVs and assembling the store), with the files' mean size.
Demo radiographs are smoother than real ones, so their files are smaller and decode faster.

    python benchmarks/bench_layouts.py [--subjects 60] [--size 256]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from PIL import Image

from raddiffusion.data.preprocess import preprocess
from raddiffusion.data.synth import synthesize

from machine import describe_machine

ROOTS = {"nih": ".", "chexpert": "CheXpert-v1.0-small"}  # where each layout's ROOT sits under synth's OUT
PATTERNS = {"nih": "images/*.png", "chexpert": "*/patient*/study*/*.jpg"}


def measure(layout: str, subjects: int, size: int, work: Path) -> dict:
    """Synthesize ``layout`` then preprocess it with one process; the preprocess summary's numbers."""
    out = work / layout
    synthesize(out, subjects=subjects, seed=0, workers=1, progress=False, layout=layout)
    root = out / ROOTS[layout]
    files = list(root.glob(PATTERNS[layout]))
    summary = preprocess(root, work / f"{layout}-store", image_size=size, workers=1, progress=False)
    return {"layout": layout, "images": summary.decoded, "skipped": summary.skipped,
            "mean_file_kib": round(sum(f.stat().st_size for f in files) / len(files) / 1024, 1),
            "mean_pixels": _mean_pixels(files),
            "seconds": round(summary.seconds, 2), "images_per_s": round(summary.decoded / summary.seconds, 1)}


def _mean_pixels(files: list[Path]) -> str:
    """The mean width x height of the files (read from their headers)."""
    sizes = [Image.open(f).size for f in files]
    return f"{sum(w for w, _ in sizes) / len(sizes):.0f} x {sum(h for _, h in sizes) / len(sizes):.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=60, help="demo subjects per layout (default 60)")
    parser.add_argument("--size", type=int, default=256, help="stored image side (default 256)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(layout, args.subjects, args.size, Path(tmp)) for layout in ROOTS]
    print(json.dumps({"machine": describe_machine(), "workers": 1, "size": args.size, "results": results}, indent=1))


if __name__ == "__main__":
    main()
