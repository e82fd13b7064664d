"""Models: the study encoder, vanilla MAE and DiffMAE, their presets, and ``create``."""
from .api import create, from_config
from .diffmae import DiffMAE
from .mae import MAE
from .presets import PRESETS, ModelConfig, model_config

__all__ = ["MAE", "PRESETS", "DiffMAE", "ModelConfig", "create", "from_config", "model_config"]
