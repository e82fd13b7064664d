"""Pretraining throughput on the CPU: one process (2 threads, accumulation 2) against two gloo processes
under torchrun (1 thread each, torchrun's default), the same global batch; prints JSON.

Builds a demo store (synth -> preprocess), then runs `raddiffusion pretrain` both ways for one epoch
and reads the images/s of every step from each run's metrics.jsonl (the median over the steps after
the first). The two runs compute the same steps (tests/test_pretrain.py checks the weights agree).

    python benchmarks/bench_ddp.py [--subjects 200] [--batch-size 16] [--image-size 256]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from raddiffusion.data.preprocess import preprocess
from raddiffusion.data.synth import synthesize
from raddiffusion.results.runfiles import read_metrics

from machine import describe_machine

PROCESSES = 2


def pretrain_command(store: Path, run: Path, batch_size: int, image_size: int, accumulation: int) -> list[str]:
    """The `raddiffusion pretrain` arguments of one measured run (xs vanilla, one epoch, no loader workers)."""
    return ["pretrain", str(store), "--run-dir", str(run), "--encoder-size", "xs", "--image-size", str(image_size),
            "--epochs", "1", "--batch-size", str(batch_size), "--accumulation", str(accumulation),
            "--probe-every", "0", "--workers", "0", "--device", "cpu", "--quiet"]


def step_rate(run: Path) -> dict:
    """Median images/s of the steps after the first, and how many steps that is."""
    rates = [r["images_per_s"] for r in read_metrics(run) if r["kind"] == "step"][1:]
    return {"steps": len(rates), "images_per_s": round(statistics.median(rates), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16, help="studies per step, over all processes")
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthesize(work / "mimic", subjects=args.subjects, seed=0, workers=1, progress=False)
        preprocess(work / "mimic", work / "store", image_size=args.image_size, workers=1, progress=False)
        one = pretrain_command(work / "store", work / "one", args.batch_size, args.image_size, PROCESSES)
        subprocess.run([sys.executable, "-m", "raddiffusion", *one], check=True)
        two = pretrain_command(work / "store", work / "two", args.batch_size, args.image_size, 1)
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={PROCESSES}", "-m", "raddiffusion", *two], check=True)
        single, ddp = step_rate(work / "one"), step_rate(work / "two")
    print(json.dumps({
        "benchmark": "CPU pretraining, xs vanilla: 1 process with accumulation 2 vs 2 gloo processes (torchrun)",
        "batch_studies": args.batch_size, "image_size": args.image_size,
        "one_process": single, "two_processes": ddp,
        "two_over_one": round(ddp["images_per_s"] / single["images_per_s"], 2),
        **describe_machine(),
    }, indent=1))


if __name__ == "__main__":
    main()
