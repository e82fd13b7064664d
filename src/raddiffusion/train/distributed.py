"""Processes and devices: one process on one device by default, DDP under ``torchrun``.

``--device`` accepts ``auto`` (the first GPU if there is one, else the CPU), ``cpu``, ``cuda`` or a
list of GPU numbers (``0,1,2`` or the original ``[0, 1, 2]``). A list of several GPUs outside
``torchrun`` relaunches the same command under ``torchrun`` with one process per GPU.
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters
COLLECTIVE_TIMEOUT = timedelta(hours=2)  # the other ranks wait at a barrier while rank 0 probes a large store
NEVER_TRIM = 2**31 - 1


@dataclass(frozen=True)
class Process:
    """This process's place in the job."""

    rank: int
    ranks: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.ranks > 1


def parse_device(text: str) -> str | list[int]:
    """``auto`` / ``cpu`` / ``cuda`` or a list of GPU numbers (``0,1,2``, ``[0, 1, 2]``, ``1``)."""
    text = text.strip()
    if text in ("auto", "cpu", "cuda"):
        return text
    numbers = re.split(r"[\s,]+", text.strip("[]() ").strip())
    if not numbers or not all(n.isdigit() for n in numbers):
        raise ValueError(f"--device must be auto, cpu, cuda or GPU numbers like 0,1,2, not {text!r}")
    return [int(n) for n in numbers]


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def needs_relaunch(device: str | list[int]) -> bool:
    """Several GPUs asked for outside ``torchrun`` (and there are GPUs): the command must run once per GPU."""
    return isinstance(device, list) and len(device) > 1 and not under_torchrun() and torch.cuda.is_available()


def relaunch_under_torchrun(device: list[int], argv: list[str]) -> int:
    """Run ``raddiffusion argv`` under ``torchrun`` on one node, one process per GPU of ``device``."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, device)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(device)}",
               "-m", "raddiffusion", *torchrun_safe(argv)]
    print(f"launching {len(device)} processes on GPUs {device} with torchrun", file=sys.stderr)
    return subprocess.call(command, env=env)


def torchrun_safe(argv: list[str]) -> list[str]:
    """``argv`` with ``--run`` spelled ``--run-dir``: torchrun reads an abbreviation of its own ``--run-path``
    anywhere on its command line, even after the module name, and stops with "ambiguous option"."""
    return ["--run-dir" if arg == "--run" else "--run-dir=" + arg[len("--run="):] if arg.startswith("--run=") else arg
            for arg in argv]


def start(device: str | list[int] = "auto") -> Process:
    """Join the ``torchrun`` process group if there is one and pick this process's device."""
    if not under_torchrun():
        return Process(0, 1, 0, single_device(device))
    local_rank = int(os.environ["LOCAL_RANK"])
    use_gpu = device != "cpu" and torch.cuda.is_available()
    if use_gpu:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_gpu else "gloo", timeout=COLLECTIVE_TIMEOUT)
    chosen = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    return Process(dist.get_rank(), dist.get_world_size(), local_rank, chosen)


def single_device(device: str | list[int]) -> torch.device:
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        print(f"--device {device}: PyTorch sees no GPU; running one process on the CPU", file=sys.stderr)
        return torch.device("cpu")
    return torch.device("cuda", device[0] if isinstance(device, list) else 0)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(process: Process) -> None:
    if process.distributed:
        dist.barrier()


def global_sum(value: torch.Tensor, process: Process) -> torch.Tensor:
    """Sum of ``value`` over all processes (``value`` itself in a single process)."""
    if process.distributed:
        value = value.clone()
        dist.all_reduce(value)
    return value


def global_max(value: int, process: Process) -> int:
    """The largest of every process's ``value`` (``value`` itself in a single process, without communication)."""
    if not process.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=process.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def global_any(flag: bool, process: Process) -> bool:
    """Is ``flag`` true in any process?"""
    return global_max(int(flag), process) > 0


def gather_rows(rows: torch.Tensor, counts: list[int], process: Process) -> list[torch.Tensor]:
    """Every process's ``rows`` (``[counts[rank], ...]`` on this process's device), in rank order, on every process.

    ``counts``: how many rows each process holds, known to all (no round trip to ask).
    """
    if not process.distributed:
        return [rows]
    padded = rows.new_zeros((max(counts), *rows.shape[1:]))
    padded[: len(rows)] = rows
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return [tensor[:count] for tensor, count in zip(gathered, counts)]


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory instead of returning every large block to the system.

    Activations over 128 KiB are otherwise a fresh ``mmap`` whose pages fault in on first touch every
    step: 5-15 % of a CPU training step. Returns whether it applied (False off glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
