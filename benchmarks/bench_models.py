"""Model speed on the CPU: pretraining steps per second, achieved FLOP rate, DiffMAE inpainting time; prints JSON.

One training step = forward + backward + AdamW on 16 studies of 2–3 views (random images, fixed
seed), 2 threads. FLOPs of one forward + backward are counted with ``torch.utils.flop_counter`` and
compared with the matrix-product peak (``torch.mm`` 2048², in the training dtype) measured in the
same run. On a GPU: ``--device cuda --bf16 --compile --cases "b vanilla,b diffusion cross-self"``.

    python benchmarks/bench_models.py [--threads 2] [--studies 16] [--repeats 3] [--cases NAMES]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from raddiffusion.models import create

from machine import describe_machine

CASES = {  # name: preset, scheme, timed steps
    "xs vanilla": ("xs", "vanilla", 20),
    "xs diffusion cross-self": ("xs", "diffusion", 20),
    "s vanilla": ("s", "vanilla", 6),
    "b vanilla": ("b", "vanilla", 6),
    "b diffusion cross-self": ("b", "diffusion", 6),
}
DEFAULT_CASES = "xs vanilla,xs diffusion cross-self,s vanilla"
PEAK_SIZE = 2048
WARMUP_STEPS = 3
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters
NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc malloc serve large blocks from its heap and keep freed memory (no mmap / munmap).

    By default each activation over 128 KiB is a fresh ``mmap`` whose pages fault in on first touch
    every step; on the CPU that is a large share of the non-matmul time. Returns whether it applied.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, size: int = PEAK_SIZE, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def study_batch(studies: int, image_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 4, (studies,), generator=generator)
    images = torch.rand(int(lengths.sum()), 1, image_size, image_size, generator=generator) * 2 - 1
    return images, lengths


def step_flops(model: torch.nn.Module, images: torch.Tensor, lengths: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        model.loss(images, lengths).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_training(
    preset: str, scheme: str, steps: int, studies: int, repeats: int, device: torch.device, bf16: bool, compile: bool
) -> dict:
    torch.manual_seed(0)
    model = create(preset, scheme).train().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.4e-4, weight_decay=0.05, fused=True)
    images, lengths = study_batch(studies, model.config.image_size)
    images, lengths = images.to(device), lengths.to(device)
    flops = step_flops(model, images, lengths)
    loss = torch.compile(model.loss) if compile else model.loss

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            value = loss(images, lengths)
        value.backward()
        optimizer.step()

    for _ in range(WARMUP_STEPS):
        train_step()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            train_step()
        synchronize(device)
        best = min(best, (time.perf_counter() - started) / steps)
    return {
        "images_per_step": len(images),
        "images_per_s": round(len(images) / best, 1),
        "gflop_per_image": round(flops / len(images) / 1e9, 3),
        "gflop_per_s": round(flops / best / 1e9, 1),
    }


def time_reconstruction(steps: int | None, schedule: str, repeats: int, device: torch.device) -> float:
    """Seconds for one inpainting of a 3-view xs study (all frames kept)."""
    torch.manual_seed(0)
    model = create("xs", "diffusion", schedule=schedule).eval().to(device)
    images = study_batch(1, model.config.image_size)[0][:1].expand(3, -1, -1, -1).contiguous().to(device)
    model.reconstruct(images, [3], steps=steps)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        model.reconstruct(images, [3], steps=steps)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated, from: {', '.join(CASES)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the peak is then measured in bf16)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training loss")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc malloc's mmap threshold alone")
    args = parser.parse_args()
    malloc_tuned = False if args.default_malloc else keep_freed_memory()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = matmul_peak_gflops(device, torch.bfloat16 if args.bf16 else torch.float32)
    training = {}
    for name in args.cases.split(","):
        preset, scheme, steps = CASES[name.strip()]
        result = time_training(preset, scheme, steps, args.studies, args.repeats, device, args.bf16, args.compile)
        result["fraction_of_peak"] = round(result["gflop_per_s"] / peak, 3)
        training[name.strip()] = result
    print(json.dumps({
        **describe_machine(),
        "threads": args.threads,
        "device": str(device),
        "bf16": args.bf16,
        "compile": args.compile,
        "malloc_keeps_freed_memory": malloc_tuned,
        "matmul_peak_gflop_per_s": round(peak, 1),
        "training_step": training,
        "reconstruction_s_xs_3_views": {
            "ddim_100_steps_cosine_T1000": time_reconstruction(100, "cosine", args.repeats, device),
            "ddpm_all_100_steps_seed_schedule": time_reconstruction(None, "seed", args.repeats, device),
        },
    }, indent=2))


if __name__ == "__main__":
    main()
