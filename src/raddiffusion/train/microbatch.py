"""``--micro-batch``: how many studies each process puts through the model at once.

The global batch (``--batch-size`` studies per optimizer step) is split into ``processes ×
accumulation`` micro-batches. Giving the micro-batch size instead of the accumulation lets the
global batch stay the same at any resolution: ``--micro-batch 4`` on 2 GPUs with ``--batch-size
512`` accumulates 64 micro-batches per step. ``--micro-batch auto`` finds, on the GPU in use, the
largest micro-batch of the store's largest studies whose training step fits in memory, by trying.
On the CPU running out of memory kills the process instead of raising an error, so ``auto`` needs a
GPU there. The size is settled when a run starts; a resumed run keeps its accumulation.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

AUTO = "auto"


def check_micro_batch(value: int | str | None) -> None:
    """ValueError unless ``value`` is None, ``"auto"`` or a whole number of studies >= 1."""
    if value is None or value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"micro_batch must be a number of studies >= 1 or {AUTO!r}, not {value!r}")


def accumulation_for(batch_size: int, ranks: int, micro_batch: int) -> int:
    """Micro-batches per process and step so that none holds more than ``micro_batch`` studies."""
    return max(1, math.ceil(batch_size / (ranks * micro_batch)))


def largest_fitting(upper: int, fits: Callable[[int], bool]) -> int:
    """The largest size in ``1 … upper`` for which ``fits`` holds, assuming it holds below any size that fits.

    Halves from ``upper`` until a size fits, then bisects between it and the last size that did not.
    ValueError when not even one study fits.
    """
    size, too_big = upper, None
    while not fits(size):
        if size == 1:
            raise ValueError("not even one study's training step fits in the device's memory; "
                             "use --grad-checkpoint, a smaller --image-size or a smaller preset")
        size, too_big = size // 2, size
    while too_big is not None and too_big - size > 1:
        middle = (size + too_big) // 2
        if fits(middle):
            size = middle
        else:
            too_big = middle
    return size


def step_fits(build_model: Callable[[], torch.nn.Module], studies: int, views: int, device: torch.device,
              precision: str) -> bool:
    """Whether one training step (forward, backward, AdamW) of ``studies`` studies of ``views`` views fits
    in the GPU's memory, tried on a freshly built model that is thrown away afterwards."""
    model = build_model().to(device).train()
    size = model.config.image_size
    images = torch.rand(studies * views, 1, size, size, device=device) * 2 - 1
    lengths = torch.full((studies,), views, dtype=torch.int64, device=device)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            output = model(images, lengths)
        output.float().mean().backward()
        torch.optim.AdamW(model.parameters()).step()
        torch.cuda.synchronize(device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del model, images, lengths
        torch.cuda.empty_cache()


def resolve_micro_batch(micro_batch: int | str, batch_size: int, ranks: int, views: int, device: torch.device,
                        precision: str, build_model: Callable[[], torch.nn.Module]) -> tuple[int, int]:
    """``(micro_batch, accumulation)`` for a new run: the number given, or with ``auto`` the largest
    micro-batch (at most a process's share of the global batch) whose step fits on the GPU."""
    share = math.ceil(batch_size / ranks)
    if micro_batch == AUTO:
        if device.type != "cuda":
            raise ValueError(f"--micro-batch {AUTO} needs a GPU (on the CPU memory runs out by the process being "
                             "killed, not by an error to catch); give a number of studies, or --accumulation")
        micro_batch = largest_fitting(share, lambda n: step_fits(build_model, n, views, device, precision))
    micro_batch = min(int(micro_batch), share)
    return micro_batch, accumulation_for(batch_size, ranks, micro_batch)
