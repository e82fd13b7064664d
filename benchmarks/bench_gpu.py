"""The prepared script for a GPU session (issue 13): bf16 training throughput and memory at high resolution,
``--micro-batch auto`` on the device, and one end-to-end pretrain + finetune on a tiled store; prints JSON.

1. Steps: for each case (xs and b at 256², 512² and 1024², vanilla MAE), with activation checkpointing off
   and on: the micro-batch ``--micro-batch auto`` would choose (``microbatch.resolve_micro_batch``: the
   largest number of 2-view studies, at most ``--max-studies``, whose bf16 training step fits, found by
   trying on the device); then at that micro-batch ``--steps`` timed training steps (forward, backward,
   fused AdamW; after ``WARMUP_STEPS``), giving images/s, and the peak device memory of a step above what
   the weights and optimizer state hold, per image. The same peak at a fixed micro-batch of
   ``--fixed-studies`` studies makes checkpointing off and on comparable at equal work.
2. Probe: the linear probe's 14 regressions on synthetic study vectors (``bench_scale.probe_data``,
   ``--probe-train`` train studies × a MIMIC-validate-sized eval, 768-d), fitted by the batched torch solver on the
   GPU and on the host's CPU cores and by the sequential scikit-learn fits, on the same vectors: seconds and the
   largest per-label AUROC difference from scikit-learn.
3. End to end: a store of ``--e2e-images`` tiled demo images (``bench_scale.build_store``), then
   ``raddiffusion pretrain`` (bf16, ``--micro-batch auto``, ``--e2e-epochs``) and ``raddiffusion finetune``
   from it, each timed, with their summary lines.

Every result is also appended to ``--out/bench_gpu.jsonl`` as it is measured, so a run stopped at its time
limit keeps what it finished; ``--budget-s`` stops starting new step cases past that many seconds.
Without CUDA, ``--smoke`` runs a tiny version on the CPU (xs at 64², fixed micro-batch, a small store) so
the script itself can be checked anywhere.

    python benchmarks/bench_gpu.py --out OUT [--cases xs@256,b@1024] [--budget-s 360] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from raddiffusion.models import create
from raddiffusion.train.microbatch import resolve_micro_batch
from raddiffusion.train.optim import build_optimizer

from bench_scale import MIMIC_SPLIT, build_store, probe_data, probe_model
from machine import describe_machine

CASES = [f"{preset}@{size}" for preset in ("xs", "b") for size in (256, 512, 1024)]
SMOKE_CASES = ["xs@64"]
VIEWS = 2  # every study of the step benchmark has two views
WARMUP_STEPS = 2
LR, WEIGHT_DECAY = 1.5e-4, 0.05
GIB = 2**30
SMOKE_MICRO_BATCH = 2  # studies per step in --smoke (auto needs a GPU)
DEMO_SUBJECTS = 30  # demo subjects whose images are tiled into the end-to-end store
PROBE_WIDTH = 768  # b's width
SMOKE_PROBE_TRAIN = 2000


def parse_case(name: str) -> tuple[str, int]:
    preset, size = name.split("@")
    return preset, int(size)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def step_peak_bytes(model, optimizer, images, lengths, device: torch.device) -> int:
    """Peak device memory of one bf16 training step above what is allocated before it (0 on the CPU)."""
    synchronize(device)
    before = allocated(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_step(model, optimizer, images, lengths, device)
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) if device.type == "cuda" else 0


def train_step(model, optimizer, images, lengths, device: torch.device) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = model(images, lengths)
    loss.float().backward()
    optimizer.step()


def random_batch(studies: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(studies * VIEWS, 1, size, size, device=device) * 2 - 1
    return images, torch.full((studies,), VIEWS, dtype=torch.int64, device=device)


def measure_case(preset: str, size: int, checkpoint: bool, args: argparse.Namespace, device: torch.device) -> dict:
    """Auto micro-batch, throughput at it, and the step's peak memory per image (at it and at --fixed-studies)."""
    def build() -> torch.nn.Module:
        return create(preset, "vanilla", image_size=size, grad_checkpoint=checkpoint)

    started = time.perf_counter()
    if args.smoke:
        micro = SMOKE_MICRO_BATCH
    else:
        micro, _ = resolve_micro_batch("auto", args.max_studies, 1, VIEWS, device, "bf16", build)
    search_s = time.perf_counter() - started
    model = build().to(device).train()
    optimizer = build_optimizer(model, LR, WEIGHT_DECAY)
    fixed = min(args.fixed_studies, micro)
    images, lengths = random_batch(fixed, size, device)
    train_step(model, optimizer, images, lengths, device)  # creates the optimizer state
    fixed_peak = step_peak_bytes(model, optimizer, images, lengths, device)
    images, lengths = random_batch(micro, size, device)
    micro_peak = step_peak_bytes(model, optimizer, images, lengths, device)
    for _ in range(WARMUP_STEPS):
        train_step(model, optimizer, images, lengths, device)
    synchronize(device)
    timed = time.perf_counter()
    for _ in range(args.steps):
        train_step(model, optimizer, images, lengths, device)
    synchronize(device)
    seconds = time.perf_counter() - timed
    result = {
        "case": f"{preset}@{size}", "grad_checkpoint": checkpoint, "patch_size": model.config.patch_size,
        "mask_ratio": model.config.mask_ratio, "auto_micro_batch_studies": micro, "auto_search_s": round(search_s, 1),
        "images_per_s": round(micro * VIEWS * args.steps / seconds, 1), "step_s": round(seconds / args.steps, 4),
        "step_peak_gib_per_image_at_auto": round(micro_peak / GIB / (micro * VIEWS), 4),
        "fixed_studies": fixed, "step_peak_gib_per_image_at_fixed": round(fixed_peak / GIB / (fixed * VIEWS), 4),
        "weights_and_optimizer_gib": round(allocated(device) / GIB, 3),
    }
    del model, optimizer, images, lengths
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def raddiffusion(*args: str) -> dict:
    """Run one ``raddiffusion`` command; its wall time, exit status and last printed line."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "raddiffusion", *args], capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {"command": "raddiffusion " + " ".join(args), "exit": done.returncode,
            "seconds": round(time.perf_counter() - started, 1), "last_line": lines[-1] if lines else ""}


def end_to_end(work: Path, args: argparse.Namespace, device: str) -> dict:
    """Tiled store -> pretrain (bf16, auto micro-batch) -> finetune, each timed."""
    size = 64 if args.smoke else 256
    store = build_store(work / "store", work, args.e2e_images, size, DEMO_SUBJECTS)
    common = ["--device", device, "--quiet"]
    precision = [] if args.smoke else ["--precision", "bf16"]
    micro = ["--micro-batch", str(SMOKE_MICRO_BATCH) if args.smoke else "auto"]
    pretrain = raddiffusion("pretrain", str(work / "store"), "--run", str(work / "run"), "--image-size", str(size),
                            "--epochs", str(args.e2e_epochs), "--batch-size", str(args.e2e_batch), "--workers",
                            str(args.workers), *micro, *precision, *common)
    finetune = raddiffusion("finetune", str(work / "store"), "--run", str(work / "finetune"), "--from",
                            str(work / "run"), "--epochs", str(args.e2e_epochs), "--workers", str(args.workers),
                            *precision, *common)
    return {"store": {k: store[k] for k in ("images", "studies", "image_size")}, "pretrain": pretrain,
            "finetune": finetune}


def device_probe(train: int, device: torch.device) -> dict:
    """The probe's solvers on the same vectors: torch on ``device`` and on the CPU, scikit-learn on the CPU."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from raddiffusion.data.labels import CHEXPERT_LABELS
    from raddiffusion.train.probe import linear_probe_scores

    rng = np.random.default_rng(0)
    signal, mixing = probe_model(PROBE_WIDTH)
    train_x, train_y, train_mask = probe_data(train, PROBE_WIDTH, rng, signal, mixing)
    eval_x, eval_y, eval_mask = probe_data(MIMIC_SPLIT["validate"][1], PROBE_WIDTH, rng, signal, mixing)

    def fit(solver: str, where: torch.device) -> tuple[float, list[float]]:
        started = time.perf_counter()
        probabilities, _ = linear_probe_scores(train_x, train_y, train_mask, eval_x, CHEXPERT_LABELS, solver=solver,
                                               device=where)
        synchronize(where)
        seconds = time.perf_counter() - started
        return seconds, [roc_auc_score(eval_y[eval_mask[:, k] > 0, k], probabilities[eval_mask[:, k] > 0, k])
                         for k in range(len(CHEXPERT_LABELS))]

    fit("torch", device)  # warm-up: CUDA context and kernels
    runs = {"torch_" + device.type: fit("torch", device), "torch_cpu": fit("torch", torch.device("cpu")),
            "sklearn_cpu": fit("sklearn", torch.device("cpu"))}
    reference = np.array(runs["sklearn_cpu"][1])
    return {"probe": {"train_studies": train, "eval_studies": len(eval_x), "width": PROBE_WIDTH,
                      "cpu_threads": torch.get_num_threads(),
                      "seconds": {name: round(seconds, 3) for name, (seconds, _) in runs.items()},
                      "max_abs_auroc_difference_from_sklearn": {
                          name: round(float(np.abs(np.array(aurocs) - reference).max()), 5)
                          for name, (_, aurocs) in runs.items() if name != "sklearn_cpu"}}}


def record(out: Path, entry: dict) -> None:
    with open(out / "bench_gpu.jsonl", "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_gpu.jsonl (and nothing else)")
    parser.add_argument("--cases", default=None, help=f"comma-separated preset@size (default {','.join(CASES)})")
    parser.add_argument("--max-studies", type=int, default=256, help="largest micro-batch auto may choose")
    parser.add_argument("--fixed-studies", type=int, default=2, help="micro-batch of the equal-work memory figure")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case")
    parser.add_argument("--budget-s", type=float, default=360.0, help="start no new step case after this")
    parser.add_argument("--e2e-images", type=int, default=20_000)
    parser.add_argument("--e2e-epochs", type=int, default=1)
    parser.add_argument("--e2e-batch", type=int, default=256, help="pretraining batch, studies")
    parser.add_argument("--workers", type=int, default=8, help="loader workers of the end-to-end run")
    parser.add_argument("--probe-train", type=int, default=25_000, help="train studies of the probe benchmark")
    parser.add_argument("--smoke", action="store_true", help="a tiny CPU version, to check the script anywhere")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --smoke for the tiny CPU check")
    device = torch.device("cpu" if args.smoke else "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = {"machine": describe_machine(), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "smoke": args.smoke, "steps": [], "skipped_for_budget": []}
    record(args.out, {"machine": result["machine"], "device": result["device"]})
    cases = args.cases.split(",") if args.cases else (SMOKE_CASES if args.smoke else CASES)
    for case in cases:
        for checkpoint in (False, True):
            if time.perf_counter() - started > args.budget_s:
                result["skipped_for_budget"].append(f"{case} checkpoint={checkpoint}")
                continue
            entry = measure_case(*parse_case(case), checkpoint, args, device)
            result["steps"].append(entry)
            record(args.out, entry)
    result["probe"] = device_probe(SMOKE_PROBE_TRAIN if args.smoke else args.probe_train, device)["probe"]
    record(args.out, {"probe": result["probe"]})
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        result["end_to_end"] = end_to_end(work, args, device.type)
        record(args.out, {"end_to_end": result["end_to_end"]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
