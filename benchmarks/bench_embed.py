"""Peak resident memory and throughput of `embed` over a store; prints JSON.

Each measurement runs in a fresh process with an untrained model of the preset (speed and memory do
not depend on the weights) and reports its RSS once the model and store are open, its peak RSS
(``ru_maxrss``) after each pass over the studies, and studies/s. Bounded memory shows as a peak that
does not grow with the number of studies: the validation split alone (a tenth of the studies) against
the whole store, and the whole store embedded ``--passes`` times in one process (as many studies
again each pass). ``--compare-no-release`` adds a run in which the store pages read stay resident
(what a plain memory-mapped pass costs).

    python benchmarks/bench_embed.py STORE [--preset xs] [--format parquet] [--passes 3] [--compare-no-release]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import raddiffusion as rd

from machine import describe_machine

KIB_PER_MIB = 1024
BYTES_PER_MIB = 1 << 20

CHILD = r"""
import json, resource, sys
import raddiffusion as rd
from raddiffusion.data.store import ImageArray
from raddiffusion.inference.embed import embed_store
store_path, out, preset, batch_size, keep_pages, passes, split, result = sys.argv[1:9]
if keep_pages == "keep":
    ImageArray.release_pages = lambda self: None
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = rd.create(preset, "vanilla")
store = rd.open_store(store_path)
opened, peaks, seconds = peak(), [], 0.0
for _ in range(int(passes)):
    summary = embed_store(model, store, out, split=split or None, batch_size=int(batch_size), progress=False)
    peaks.append(peak())
    seconds += summary.seconds
with open(result, "w") as handle:
    json.dump({"opened_kib": opened, "peaks_kib": peaks, "studies": summary.studies, "images": summary.images,
               "seconds": seconds}, handle)
"""


def measure(store: Path, preset: str, fmt: str, batch_size: int, split: str | None, passes: int = 1,
            keep_pages: bool = False) -> dict:
    """One fresh process embedding ``split`` of ``store`` ``passes`` times."""
    with tempfile.TemporaryDirectory() as tmp:
        out, result = Path(tmp) / f"vectors.{fmt}", Path(tmp) / "result.json"
        subprocess.run([sys.executable, "-c", CHILD, str(store), str(out), preset, str(batch_size),
                        "keep" if keep_pages else "release", str(passes), split or "", str(result)], check=True)
        measured = json.loads(result.read_text())
        output_mib = out.stat().st_size / BYTES_PER_MIB
    embedded = measured["studies"] * passes
    return {
        "split": split or "all", "passes": passes, "store_pages_kept_resident": keep_pages,
        "studies": measured["studies"], "images": measured["images"],
        "studies_per_s": round(embedded / measured["seconds"], 1),
        "images_per_s": round(measured["images"] * passes / measured["seconds"], 1),
        "rss_before_embedding_mib": round(measured["opened_kib"] / KIB_PER_MIB),
        "peak_rss_after_each_pass_mib": [round(kib / KIB_PER_MIB) for kib in measured["peaks_kib"]],
        "output_mib": round(output_mib, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path, help="a store written by `raddiffusion preprocess`")
    parser.add_argument("--preset", default="xs", help="model size preset (default xs)")
    parser.add_argument("--format", default="parquet", choices=("parquet", "npz"))
    parser.add_argument("--batch-size", type=int, default=64, help="studies per forward pass (default 64)")
    parser.add_argument("--passes", type=int, default=3, help="passes over the whole store in one process (default 3)")
    parser.add_argument("--compare-no-release", action="store_true",
                        help="also run once with the store pages kept resident, for comparison")
    args = parser.parse_args()
    store = rd.open_store(args.store)
    settings = (args.store, args.preset, args.format, args.batch_size)
    runs = [measure(*settings, split="validate"), measure(*settings, split=None, passes=args.passes)]
    if args.compare_no_release:
        runs.append(measure(*settings, split=None, keep_pages=True))
    print(json.dumps({"benchmark": "embed", **describe_machine(), "preset": args.preset, "format": args.format,
                      "batch_size": args.batch_size, "store_images": len(store), "image_size": store.image_size,
                      "store_pixels_mib": round(len(store) * store.image_size**2 / BYTES_PER_MIB), "runs": runs},
                     indent=2))


if __name__ == "__main__":
    main()
