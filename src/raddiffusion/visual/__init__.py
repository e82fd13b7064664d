"""Figures researchers look at: reconstructions, the backward-diffusion GIF, attention maps, probe curves.

Everything is drawn with Matplotlib's Agg canvas (no display needed) or Pillow and written atomically.
"""
from .animation import diffusion_animation
from .attention import (
    attention_figure,
    attention_note,
    attention_rollout,
    cls_attention,
    encoder_attention,
)
from .curves import (
    label_bars_figure,
    probe_curves_figure,
    read_probe_history,
    run_label,
)
from .reconstruction import mask_image, reconstruction_figure

__all__ = [
    "attention_figure", "attention_note", "attention_rollout", "cls_attention", "diffusion_animation",
    "encoder_attention", "label_bars_figure", "mask_image", "probe_curves_figure", "read_probe_history",
    "reconstruction_figure", "run_label",
]
