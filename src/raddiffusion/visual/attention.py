"""CLS→patch attention maps of the study encoder, and a figure of them over each view.

The encoder's attention runs through SDPA, which does not return its probabilities; here the encoder
is re-run block by block exactly as ``StudyEncoder.forward`` does, with the softmax(q·kᵀ/√d) of each
block computed alongside from the same q and k. Its final tokens equal ``encoder(...)``'s.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from ..models.bottleneck import check_batch, fuse_cls
from ..models.encoder import StudyEncoder
from ..models.vit import Block, patchify
from .reconstruction import framed_figure, image_array, save_figure, show_grey

MODES = ("last", "rollout")
OVERLAY_CMAP, OVERLAY_ALPHA = "inferno", 0.45
UPSAMPLE_MODE = "bilinear"
COLORBAR_INCHES = 1.35  # figure width right of the panels, for the colorbar
GAP_INCHES = 0.1
COLORBAR_GAP, COLORBAR_WIDTH = 0.1, 0.15  # inches
COLORBAR_LABEL = "CLS → patch attention"
LABEL_SIZE = 9
FLAT_MAP_RANGE = 1e-6  # colour range of a perfectly uniform map


def study_encoder(model: nn.Module) -> StudyEncoder:
    """``model`` itself if it is a :class:`StudyEncoder`, else its ``.encoder``; ``TypeError`` if neither."""
    encoder = model if isinstance(model, StudyEncoder) else getattr(model, "encoder", None)
    if not isinstance(encoder, StudyEncoder):
        raise TypeError(f"{type(model).__name__} is not a StudyEncoder and has no StudyEncoder .encoder")
    return encoder


def encoder_image_size(encoder: StudyEncoder) -> int:
    """The side of the square images the encoder's position embeddings were built for."""
    side = math.isqrt(encoder.pos_embed.shape[0])
    return side * encoder.patch


def attention_probabilities(block: Block, x: torch.Tensor) -> torch.Tensor:
    """The probabilities ``[N, heads, T, T]`` of ``block``'s self-attention on tokens ``x [N, T, C]``."""
    n, length, width = x.shape
    heads = block.attn.heads
    qkv = block.attn.qkv(block.norm1(x)).view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    return (q @ k.transpose(-2, -1) / math.sqrt(width // heads)).softmax(dim=-1)


@torch.no_grad()
def encoder_attention(model: nn.Module, images: torch.Tensor,
                      lengths: torch.Tensor | list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Re-run the study encoder on all patches: ``(final tokens [N, 1 + L, C], per-block attention)``.

    The attention of each block is averaged over heads, ``[N, 1 + L, 1 + L]`` (token 0 = CLS). The CLS
    tokens of a study are fused (replaced by their mean) after every block, as in the real forward.
    """
    encoder = study_encoder(model)
    studies = check_batch(images, lengths, encoder_image_size(encoder))
    x = encoder.embed_patches(patchify(images, encoder.patch), None)
    x = torch.cat([encoder.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    layers = []
    for block in encoder.blocks:
        layers.append(attention_probabilities(block, x).mean(dim=1))
        x = fuse_cls(block(x), studies)
    return encoder.norm(x), layers


def attention_rollout(layers: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of head-averaged ``[N, T, T]`` maps, first layer first.

    Each layer's ``A + I`` is renormalised by rows; the result is their product, later layers on the left.
    """
    eye = torch.eye(layers[0].shape[-1], dtype=layers[0].dtype, device=layers[0].device)
    joint = None
    for attention in layers:
        residual = attention + eye
        residual = residual / residual.sum(dim=-1, keepdim=True)
        joint = residual if joint is None else residual @ joint
    return joint


def cls_attention(encoder: nn.Module, images: torch.Tensor, lengths: torch.Tensor | list[int],
                  mode: str = "rollout") -> torch.Tensor:
    """CLS→patch attention ``[N, rows, cols]`` per image, averaged over heads.

    ``encoder`` is a :class:`StudyEncoder` or any module with one as ``.encoder`` (MAE, DiffMAE,
    classifier); all patches of ``images [N, 1, H, W]`` are used (no masking). ``mode="last"``: the
    last block's attention of the CLS query over the patch keys (the CLS key's share left out, so a
    row sums to at most 1). ``mode="rollout"``: attention rollout over all blocks, CLS row over patches.
    The CLS is fused across the views of a study after every block, so a view's map also reflects what
    the other views' CLS tokens gathered; the rollout follows tokens within one image only.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    enc = study_encoder(encoder)
    _, layers = encoder_attention(enc, images, lengths)
    attention = layers[-1] if mode == "last" else attention_rollout(layers)
    side = math.isqrt(enc.pos_embed.shape[0])
    return attention[:, 0, 1:].reshape(-1, side, side)


def attention_note(mode: str, depth: int) -> str:
    """The method line for :func:`attention_figure`, e.g. ``attention rollout over 6 layers, mean over heads``."""
    if mode == "rollout":
        return f"attention rollout over {depth} layers, mean over heads"
    return "last layer, mean over heads"


def upsample(maps: torch.Tensor, height: int, width: int) -> np.ndarray:
    """``[V, rows, cols]`` maps -> ``[V, H, W]`` (bilinear)."""
    resized = F.interpolate(maps.detach().float().cpu()[:, None], size=(height, width), mode=UPSAMPLE_MODE,
                            align_corners=False)
    return resized[:, 0].numpy()


def colorbar_axes(fig: Figure, neighbour: Axes) -> Axes:
    """A thin axes for a colorbar just right of ``neighbour``, as tall as it."""
    box = neighbour.get_position()
    fig_width = fig.get_figwidth()
    return fig.add_axes((box.x1 + COLORBAR_GAP / fig_width, box.y0, COLORBAR_WIDTH / fig_width, box.height))


def attention_figure(images: torch.Tensor, maps: torch.Tensor, path: Path, title: str, mode_note: str) -> Path:
    """Write a PNG: each view with its CLS→patch map overlaid; one colour scale (min to max of all views).

    ``images [V, 1, H, W]`` in [-1, 1], ``maps [V, rows, cols]`` from :func:`cls_attention`; ``mode_note``
    names the method (see :func:`attention_note`) and is printed under the panels.
    """
    if images.dim() != 4 or maps.dim() != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"images [V, 1, H, W] and maps [V, rows, cols] do not match: "
                         f"{list(images.shape)}, {list(maps.shape)}")
    views, _, height, width = images.shape
    overlays = upsample(maps, height, width)
    low, high = float(overlays.min()), float(overlays.max())
    high = high if high > low else low + FLAT_MAP_RANGE
    fig, axes = framed_figure(1, views, title, mode_note, gap=GAP_INCHES, right=COLORBAR_INCHES)
    for v, ax in enumerate(axes[0]):
        show_grey(ax, image_array(images[v, 0]))
        shown = ax.imshow(overlays[v], cmap=OVERLAY_CMAP, alpha=OVERLAY_ALPHA, vmin=low, vmax=high,
                          extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        ax.set_title(f"view {v + 1}", fontsize=LABEL_SIZE + 1)
    bar = fig.colorbar(shown, cax=colorbar_axes(fig, axes[0][-1]))
    bar.set_label(COLORBAR_LABEL, fontsize=LABEL_SIZE)
    bar.solids.set_alpha(1.0)
    return save_figure(fig, path)

