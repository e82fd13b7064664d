"""Model weights on disk: safetensors only, with the model's configuration in the file's metadata.

A checkpoint is one ``.safetensors`` file; a run directory holds its current one as
``model.safetensors``. Nothing is ever unpickled: a file that is not safetensors is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import first_line
from ..fileio import atomic_path
from ..models import from_config, model_kind
from ..models.api import KINDS
from ..models.presets import ModelConfig, saved_config

CHECKPOINT_FORMAT = "raddiffusion-model-v1"
RUN_WEIGHTS = "model.safetensors"
HEADER_LENGTH_BYTES = 8  # a safetensors file starts with the length of its JSON header
MAX_HEADER_BYTES = 100_000_000


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line naming the file and the problem."""


def save_model(model: torch.nn.Module, path: str | Path) -> Path:
    """Write ``model``'s weights and configuration to ``path`` (a .safetensors file), atomically."""
    path = Path(path)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    metadata = {"format": CHECKPOINT_FORMAT, "config": json.dumps(model.config.to_dict()), "kind": model_kind(model)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def load(path: str | Path) -> torch.nn.Module:
    """The model stored at ``path``: a checkpoint file, or a run directory holding ``model.safetensors``."""
    file = _weights_file(Path(path))
    config, kind, state = _read_checkpoint(file)
    model = from_config(config, kind)
    _load_state(model, state, file)
    return model.eval()


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        runs = sorted(child.name for child in path.iterdir() if (child / RUN_WEIGHTS).is_file())
        if runs and not (path / RUN_WEIGHTS).is_file():
            raise CheckpointError(f"{path}: not a run but a folder of runs ({', '.join(runs)}); give one of them")
        path = path / RUN_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def read_safetensors(file: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a safetensors file; anything else or a damaged one -> CheckpointError."""
    check_safetensors_header(file)
    try:
        with safe_open(str(file), framework="pt") as handle:
            return handle.metadata() or {}, {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: damaged safetensors file ({first_line(exc)})") from None


def _read_checkpoint(file: Path) -> tuple[ModelConfig, str, dict[str, torch.Tensor]]:
    metadata, state = read_safetensors(file)
    if metadata.get("format") != CHECKPOINT_FORMAT or "config" not in metadata:
        raise CheckpointError(f"{file}: safetensors file without a raddiffusion model configuration")
    try:
        config = saved_config(json.loads(metadata["config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: unusable model configuration ({first_line(exc)})") from None
    kind = metadata.get("kind", "pretrainer")
    if kind not in KINDS:
        raise CheckpointError(f"{file}: unknown model kind {kind!r}")
    return config, kind, state


def check_safetensors_header(file: Path) -> None:
    """Refuse pickles, zip archives and truncated files before any parser sees them."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(HEADER_LENGTH_BYTES + 1)
    if len(head) <= HEADER_LENGTH_BYTES:
        raise CheckpointError(f"{file}: not a safetensors file ({size} bytes)")
    header_length = int.from_bytes(head[:HEADER_LENGTH_BYTES], "little")
    if head[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + 1] != b"{" or header_length > min(size, MAX_HEADER_BYTES):
        raise CheckpointError(f"{file}: not a safetensors file (weights load from safetensors only, never pickles)")


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], file: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [name for name in expected if name in state and state[name].shape != expected[name].shape]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"wrong shape {wrong[:3]}" if wrong else ""]
        raise CheckpointError(f"{file}: weights do not fit the configuration: {'; '.join(p for p in parts if p)}")
    model.load_state_dict(state)

