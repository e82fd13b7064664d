"""The public entry point for models: ``create(preset, scheme, **overrides)``."""
from __future__ import annotations

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


def from_config(config: ModelConfig) -> MAE | DiffMAE:
    """The (untrained) model of a configuration."""
    return DiffMAE(config) if config.scheme == "diffusion" else MAE(config)
