"""Models: the study encoder, vanilla MAE and DiffMAE, their presets, and ``create``."""
from .api import create, from_config, model_kind
from .classifier import StudyClassifier
from .diffmae import DiffMAE
from .mae import MAE
from .presets import PRESETS, ModelConfig, model_config

__all__ = [
    "MAE", "PRESETS", "DiffMAE", "ModelConfig", "StudyClassifier", "create", "from_config", "model_config", "model_kind",
]
