"""Study loader throughput from a warm store, in images/s per process; prints JSON.

Builds a store from demo data (synth -> preprocess) once, then times shuffled epochs of
``DataLoader(StudyDataset, batch_size=B studies, collate_fn=collate_studies)`` in this process
(``num_workers=0``: one process does the reading and the float conversion).

    python benchmarks/bench_loader.py [--subjects 600] [--image-size 256] [--epochs 10] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import raddiffusion as rd
from raddiffusion.data.preprocess import preprocess
from raddiffusion.data.synth import synthesize

from machine import describe_machine


def build_store(work: Path, subjects: int, image_size: int) -> rd.Store:
    synthesize(work / "mimic", subjects=subjects, seed=0, progress=False)
    preprocess(work / "mimic", work / "store", image_size=image_size, progress=False)
    return rd.open_store(work / "store")


def time_epochs(store: rd.Store, batch_size: int, epochs: int) -> dict:
    dataset = rd.StudyDataset(store, split=None)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=rd.collate_studies)
    for _ in loader:  # warm the page cache and the allocator
        pass
    images, started = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            images += batch["images"].shape[0]
    seconds = time.perf_counter() - started
    return {"images": images, "seconds": round(seconds, 3), "images_per_s": round(images / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="studies per batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp), args.subjects, args.image_size)
        result = time_epochs(store, args.batch_size, args.epochs)
        print(json.dumps({
            "benchmark": "study loader, warm store, one process",
            "store_images": len(store),
            "image_size": args.image_size,
            "batch_studies": args.batch_size,
            "torch_threads": torch.get_num_threads(),
            **result,
            **describe_machine(),
        }))


if __name__ == "__main__":
    main()
