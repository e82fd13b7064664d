"""The public entry point for models: ``create(preset, scheme, **overrides)``."""
from __future__ import annotations

from pathlib import Path

from .classifier import StudyClassifier
from .diffmae import DiffMAE
from .mae import MAE
from .presets import ModelConfig, model_config


def create(preset: str = "xs", scheme: str = "vanilla", init: str | Path | None = None, **overrides) -> MAE | DiffMAE:
    """An untrained model of a size preset (``xs``, ``s``, ``b``) and scheme (``vanilla``, ``diffusion``).

    ``overrides`` are any :class:`ModelConfig` fields, e.g. ``image_size=512``, ``decoder="joint"``,
    ``schedule="seed"``, ``time_embedding=False``, ``norm_pix_loss=False``. The model keeps its
    ``config``; ``create(**model.config.to_dict())`` rebuilds the same architecture.

    ``init``: start from other weights instead (an MAE / timm checkpoint, a Hugging Face ViTMAE folder, the
    original implementation's checkpoint; see :mod:`raddiffusion.train.interop`); ``model.init_report.line()``
    says what was taken, skipped and re-initialised. A file that does not fit raises CheckpointError.
    """
    model = from_config(model_config(preset, scheme, **overrides))
    if init is not None:
        from ..train.interop import initialise_from  # train/ builds on models/: imported only when asked for

        model.init_report = initialise_from(model, init)
    return model


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
