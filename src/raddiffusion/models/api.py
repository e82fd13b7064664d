"""The public entry point for models: ``create(preset, scheme, **overrides)``."""
from __future__ import annotations

from .classifier import StudyClassifier
from .diffmae import DiffMAE
from .mae import MAE
from .presets import ModelConfig, model_config


def create(preset: str = "xs", scheme: str = "vanilla", **overrides) -> MAE | DiffMAE:
    """An untrained model of a size preset (``xs``, ``s``, ``b``) and scheme (``vanilla``, ``diffusion``).

    ``overrides`` are any :class:`ModelConfig` fields, e.g. ``image_size=512``, ``decoder="joint"``,
    ``schedule="seed"``, ``time_embedding=False``, ``norm_pix_loss=False``. The model keeps its
    ``config``; ``create(**model.config.to_dict())`` rebuilds the same architecture.
    """
    return from_config(model_config(preset, scheme, **overrides))


KINDS = ("pretrainer", "classifier")


def from_config(config: ModelConfig, kind: str = "pretrainer") -> MAE | DiffMAE | StudyClassifier:
    """The (untrained) model of a configuration: its pretraining scheme's model, or the fine-tuning classifier."""
    if kind == "classifier":
        return StudyClassifier(config)
    if kind != "pretrainer":
        raise ValueError(f"model kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return DiffMAE(config) if config.scheme == "diffusion" else MAE(config)


def model_kind(model: MAE | DiffMAE | StudyClassifier) -> str:
    """``classifier`` for a fine-tuning model, else ``pretrainer``."""
    return "classifier" if isinstance(model, StudyClassifier) else "pretrainer"
