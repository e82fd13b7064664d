"""Peak resident memory and throughput of `embed` over a whole store; prints JSON.

Each measurement runs in a fresh process (an untrained model of the preset: speed and memory do not
depend on the weights) and reports its own peak RSS (``ru_maxrss``), its RSS once the model and store
are open (before embedding), and studies/s of the embedding itself. The parent samples the child's
RSS while it runs, so the JSON also shows the peak in the first and in the second half of the run:
bounded memory means the second half does not climb above the first. ``--compare-no-release`` adds a
run in which the store pages read are kept resident (what a plain memory-mapped pass would cost).

    python benchmarks/bench_embed.py STORE [--preset xs] [--format parquet] [--compare-no-release]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import raddiffusion as rd

from machine import describe_machine

SAMPLE_SECONDS = 0.1
KIB_PER_MIB = 1024
PAGE_BYTES_PER_MIB = 1 << 20

CHILD = r"""
import json, resource, sys, time
import raddiffusion as rd
from raddiffusion.data.store import ImageArray
from raddiffusion.inference.embed import embed_store
store_path, out, preset, batch_size, keep_pages, result = sys.argv[1:7]
if keep_pages == "keep":
    ImageArray.release_pages = lambda self: None
model = rd.create(preset, "vanilla")
store = rd.open_store(store_path)
opened = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = embed_store(model, store, out, batch_size=int(batch_size), progress=False)
with open(result, "w") as handle:
    json.dump({"rss_before_embedding_kib": opened, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               "studies": summary.studies, "images": summary.images, "seconds": summary.seconds}, handle)
"""


def current_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(store: Path, preset: str, fmt: str, batch_size: int, keep_pages: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out, result = Path(tmp) / f"vectors.{fmt}", Path(tmp) / "result.json"
        argv = [sys.executable, "-c", CHILD, str(store), str(out), preset, str(batch_size),
                "keep" if keep_pages else "release", str(result)]
        child = subprocess.Popen(argv)
        samples: list[tuple[float, int]] = []
        started = time.perf_counter()
        while child.poll() is None:
            rss = current_rss_kib(child.pid)
            if rss is not None:
                samples.append((time.perf_counter() - started, rss))
            time.sleep(SAMPLE_SECONDS)
        if child.returncode != 0:
            raise SystemExit(f"the embedding process failed with exit code {child.returncode}")
        measured = json.loads(result.read_text())
        output_mib = out.stat().st_size / PAGE_BYTES_PER_MIB
    half = samples[-1][0] / 2 if samples else 0.0
    first = max((rss for t, rss in samples if t <= half), default=0)
    second = max((rss for t, rss in samples if t > half), default=0)
    return {
        "store_pages_kept_resident": keep_pages,
        "studies": measured["studies"], "images": measured["images"],
        "studies_per_s": round(measured["studies"] / measured["seconds"], 1),
        "images_per_s": round(measured["images"] / measured["seconds"], 1),
        "embed_seconds": round(measured["seconds"], 1),
        "rss_before_embedding_mib": round(measured["rss_before_embedding_kib"] / KIB_PER_MIB),
        "peak_rss_mib": round(measured["peak_rss_kib"] / KIB_PER_MIB),
        "sampled_peak_rss_first_half_mib": round(first / KIB_PER_MIB),
        "sampled_peak_rss_second_half_mib": round(second / KIB_PER_MIB),
        "output_mib": round(output_mib, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path, help="a store written by `raddiffusion preprocess`")
    parser.add_argument("--preset", default="xs", help="model size preset (default xs)")
    parser.add_argument("--format", default="parquet", choices=("parquet", "npz"))
    parser.add_argument("--batch-size", type=int, default=64, help="studies per forward pass (default 64)")
    parser.add_argument("--compare-no-release", action="store_true",
                        help="also run with the store pages kept resident, for comparison")
    args = parser.parse_args()
    store = rd.open_store(args.store)
    store_mib = len(store) * store.image_size**2 / PAGE_BYTES_PER_MIB
    runs = [measure(args.store, args.preset, args.format, args.batch_size, keep_pages=False)]
    if args.compare_no_release:
        runs.append(measure(args.store, args.preset, args.format, args.batch_size, keep_pages=True))
    print(json.dumps({"benchmark": "embed", **describe_machine(), "preset": args.preset, "format": args.format,
                      "batch_size": args.batch_size, "store_images": len(store), "image_size": store.image_size,
                      "store_pixels_mib": round(store_mib), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
