"""What machine a benchmark ran on, for the JSON every benchmark prints."""
from __future__ import annotations

import os
import platform
import time

import numpy
import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict:
    """CPU model, usable cores, library versions and today's date."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "machine": f"{cpu_model()}, {cores} cores",
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
