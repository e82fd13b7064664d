"""Run directories: configuration, the resumable training checkpoint, metrics, the finished mark.

```
RUN_DIR/config.json              everything needed to rebuild the model and repeat the run
        checkpoint.safetensors   model + optimizer tensors, progress in the metadata (resume point)
        model.safetensors        the run's model for users (rd.load): latest (pretrain) or best (finetune)
        metrics.jsonl            one JSON object per logged step and per epoch
        summary.json             written last: the run finished
```
Every file is written to a temporary name and renamed, so a crash leaves the last good one.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import first_line
from ..fileio import atomic_path
from ..models.api import model_kind
from ..models.presets import RUNTIME_FIELDS, saved_config
from ..results.runfiles import METRICS, record_step
from .checkpoint import CheckpointError, read_safetensors

TRAINING_FORMAT = "raddiffusion-training-v1"
MODEL_PREFIX, OPTIMIZER_PREFIX = "model.", "optimizer."


class RunError(Exception):
    """A run directory that cannot be used as asked; one line naming the run and the problem."""


def config_differences(stored: dict, requested: dict, prefix: str = "") -> list[str]:
    """``name: stored -> requested`` for every key of ``requested`` whose value differs from ``stored``."""
    differences = []
    for key, value in requested.items():
        old = stored.get(key) if isinstance(stored, dict) else None
        if isinstance(value, dict):
            differences += config_differences(old or {}, value, f"{prefix}{key}.")
        elif old != value:
            differences.append(f"{prefix}{key} {old!r} -> {value!r}")
    return differences


def check_requested(run_dir: Path, stored: dict, requested: dict) -> None:
    """Refuse to continue a run with settings that differ from those it was started with."""
    differences = config_differences(stored, requested)
    if differences:
        raise RunError(f"{run_dir} was started with other settings ({'; '.join(differences)}); "
                       f"resume without them or choose another --run")


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: dict) -> None:
    """Model and optimizer tensors plus the progress (epoch, step, ...) in one file, atomically."""
    tensors = {MODEL_PREFIX + name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    state = optimizer.state_dict()
    scalars = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER_PREFIX}{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    metadata = {
        "format": TRAINING_FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "kind": model_kind(model),
        "progress": json.dumps(progress),
        "optimizer": json.dumps({"param_groups": state["param_groups"], "scalars": scalars}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore model (and optimizer) from :func:`save_checkpoint`'s file; return its progress."""
    metadata, tensors = read_safetensors(path)
    if metadata.get("format") != TRAINING_FORMAT:
        raise CheckpointError(f"{path}: not a raddiffusion training checkpoint")
    stored = saved_config(json.loads(metadata["config"])).to_dict()  # fields added later take their defaults
    requested = {k: v for k, v in model.config.to_dict().items() if k not in RUNTIME_FIELDS}  # weights unaffected
    differences = config_differences(stored, requested)
    if differences or metadata.get("kind") != model_kind(model):
        raise CheckpointError(f"{path}: checkpoint of another model ({'; '.join(differences) or metadata.get('kind')})")
    model_state = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    try:
        model.load_state_dict(model_state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model ({first_line(exc)})") from None
    if optimizer is not None:
        optimizer.load_state_dict(_optimizer_state(tensors, json.loads(metadata["optimizer"])))
    return json.loads(metadata["progress"])


def _optimizer_state(tensors: dict[str, torch.Tensor], stored: dict) -> dict:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        if name.startswith(OPTIMIZER_PREFIX):
            index, key = name[len(OPTIMIZER_PREFIX):].split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
    for name, value in stored["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": stored["param_groups"]}


class MetricsLog:
    """``metrics.jsonl``: appended one line at a time by the main process; cut back to a checkpoint on resume."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = run_dir / METRICS
        self.enabled = enabled
        self._writer = _tensorboard_writer(run_dir) if enabled else None

    def keep_until(self, step: int) -> None:
        """Drop records after ``step`` (written after the checkpoint a resumed run starts from)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if record_step(line) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    self._writer.add_scalar(f"{record.get('kind', 'step')}/{key}", value, record["step"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _tensorboard_writer(run_dir: Path):
    """TensorBoard events beside the metrics when the ``tensorboard`` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
