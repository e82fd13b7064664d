"""What the pretraining and fine-tuning loops share: settings on resume, loaders, one optimizer step."""
from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data.studies import StudyDataset, collate_study_pixels, loader_workers, unit_range
from ..fileio import read_json
from . import distributed
from .batches import EpochPlan
from .distributed import Process
from .preemption import ignore_in_worker
from ..results.runfiles import CONFIG
from .runlock import lock_run
from .runs import RunError, check_requested

PRECISIONS = ("fp32", "bf16")


class TrainingError(Exception):
    """Training cannot go on (a NaN loss); the message names the step and the checkpoint kept."""


def resolve_settings(cls, stored: dict | None, requested: dict, may_change: set[str], run_dir: Path):
    """Settings dataclass ``cls`` for a run: ``requested`` on a new run; the stored ones when resuming.

    On resume, requested values outside ``may_change`` must equal the stored ones.
    """
    if stored is None:
        return cls(**requested)
    known = {f.name for f in fields(cls)}
    settings = cls(**{k: v for k, v in stored.items() if k in known})
    check_requested(run_dir, asdict(settings), {k: v for k, v in requested.items() if k not in may_change})
    return replace(settings, **{k: v for k, v in requested.items() if k in may_change})


def open_run(run_dir: Path, resume: bool, device: str | list[int]) -> tuple[Process, dict | None]:
    """Start this process (see :func:`distributed.start`) and read a resumed run's stored configuration.

    Returns ``(process, stored)``; ``stored`` is None for a new run. A run directory that another
    process is training in (see :mod:`.runlock`), or that already holds a run without ``resume``, is refused.
    """
    process = distributed.start(device)
    lock_run(run_dir, process)
    config = run_dir / CONFIG
    if config.is_file() and not resume:
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --run")
    return process, read_json(config) if config.is_file() else None


def tune_allocator(process: Process, config) -> None:
    """On the CPU, let glibc keep freed memory (no fresh page faults for each step's large tensors) unless the
    model checkpoints activations: the recomputed blocks then fragment a kept heap (BENCHMARKS.md, memory)."""
    if process.device.type == "cpu" and not config.grad_checkpoint:
        distributed.keep_freed_memory()


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


class EpochBatches:
    """The batch sampler of a training loader: this rank's micro-batches of the epoch set last, from a step on.

    Set a new epoch with :meth:`start`; the loader's worker processes stay alive across epochs.
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def start(self, plan: EpochPlan, first_step: int) -> None:
        """Yield ``plan``'s micro-batches of this rank from ``first_step`` to the end of the epoch, in order."""
        self.batches = [mb.studies.tolist() for step in range(first_step, plan.steps) for mb in plan.micro_batches(step)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def training_loader(dataset: StudyDataset, workers: int, device: torch.device) -> tuple[DataLoader, EpochBatches]:
    """A loader of uint8 micro-batches (converted on the device by :func:`to_device`), pinned for a GPU,
    its workers kept across epochs, and the sampler that says which batches an epoch takes."""
    sampler = EpochBatches()
    workers = loader_workers(workers)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_study_pixels, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        worker_init_fn=ignore_in_worker)  # SIGTERM / SIGUSR1 are the main process's (preemption.py)
    return loader, sampler


def wrap_for_training(model: torch.nn.Module, process: Process, compile: bool) -> torch.nn.Module:
    """DDP when several processes run (the model's ``forward`` is its training objective); compiled if asked."""
    if process.distributed:
        device_ids = [process.device.index] if process.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    if compile:
        model.compile()
    return model


def accumulate_gradients(
    model: torch.nn.Module, micro_batches: list[dict], shares: list[float], ranks: int, objective, precision: str
) -> torch.Tensor:
    """Backward through this rank's micro-batches of one step; return their part of the step's mean loss.

    ``objective(model, batch)`` is a micro-batch's mean loss; ``shares`` are each micro-batch's share
    of the global batch. Each loss is backpropagated times its share and the number of ranks (DDP
    averages gradients over ranks), so the gradient is that of the global batch's mean loss however
    the batch is spread over ranks and accumulation. Only the last micro-batch synchronises.
    """
    total = torch.zeros((), dtype=torch.float32)
    for i, (batch, share) in enumerate(zip(micro_batches, shares)):
        last = i == len(micro_batches) - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else nullcontext()
        with sync:
            with torch.autocast(batch["images"].device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = objective(model, batch)
            (loss * (share * ranks)).backward()
        total = total.to(loss.device) + loss.detach().float() * share
    return total


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on ``device``; uint8 images cross as uint8 and become the float input there."""
    non_blocking = device.type == "cuda"
    moved = {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}
    if moved["images"].dtype == torch.uint8:
        moved["images"] = unit_range(moved["images"])
    return moved


def check_finite(loss: float, step: int, checkpoint: Path) -> None:
    if not math.isfinite(loss):
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint.is_file() else "no checkpoint was written yet"
        raise TrainingError(f"loss is {loss} at step {step}; stopped ({kept})")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under DDP / compile wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def check_store_fits(store, config, store_path) -> None:
    """ValueError in one line when the store's image size (or, for a classifier, its label names) does not fit."""
    if config.label_names and tuple(config.label_names) != tuple(store.label_names):
        raise ValueError(f"{store_path} has the {len(store.label_names)} {store.dataset} labels but the model was "
                         f"fine-tuned for {len(config.label_names)} others; fine-tune a new run on this store")
    if store.image_size != config.image_size:
        raise ValueError(f"{store_path} holds {store.image_size}² images but the model takes {config.image_size}²; "
                         f"pass --image-size {store.image_size} or preprocess again")
