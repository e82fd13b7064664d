"""Backward-diffusion animation: a GIF of a whole study from pure noise to the reconstruction.

Each GIF frame shows the views side by side under a caption with the reverse-diffusion step; masked
patches are outlined. Pixels go to uint8 as ``(x + 1) · 127.5`` clipped, then to one of
:data:`GREY_LEVELS` fixed greys: all frames share one palette (greys plus the accent colours), so the
grey scale never changes between frames and noise-dominated frames stay small (a 3-view 256² study
of 26 frames is about 1.7 MB).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..fileio import atomic_path
from .reconstruction import check_study, mask_image

GREY_LEVELS = 64  # palette entries for pixels: fewer levels keep the noise-dominated frames small
UINT8_SCALE = 127.5  # [-1, 1] -> [0, 255]: (x + 1) · 127.5
UINT8_MAX = 255
OUTLINE_INDEX, TEXT_INDEX, BACKGROUND_INDEX = GREY_LEVELS, GREY_LEVELS + 1, GREY_LEVELS + 2
OUTLINE_RGB, TEXT_RGB, BACKGROUND_RGB = (255, 140, 0), (255, 255, 255), (24, 24, 24)
HEADER_PIXELS = 22  # caption strip above the views
GAP_PIXELS = 6  # between views
TEXT_MARGIN = 4
FONT_SIZE = 14
DEFAULT_EVERY = 4
DEFAULT_FRAME_MS = 120
LAST_FRAME_HOLD_MS = 2000  # the final reconstruction stays on screen


def frame_indices(count: int, every: int) -> list[int]:
    """Every ``every``-th of ``count`` frames, always with the first and the last."""
    if count < 1:
        raise ValueError("there are no frames to animate")
    if every < 1:
        raise ValueError(f"every must be at least 1, not {every}")
    indices = list(range(0, count, every))
    return indices if indices[-1] == count - 1 else [*indices, count - 1]


def palette() -> list[int]:
    """The shared palette: :data:`GREY_LEVELS` greys, then outline, text and background colours."""
    greys = np.linspace(0, UINT8_MAX, GREY_LEVELS).round().astype(int)
    colours = [(g, g, g) for g in greys] + [OUTLINE_RGB, TEXT_RGB, BACKGROUND_RGB]
    return [channel for colour in colours for channel in colour]


def grey_indices(image: torch.Tensor) -> np.ndarray:
    """``[1, H, W]`` in [-1, 1] -> palette indices ``[H, W]`` via uint8 ``(x + 1) · 127.5`` clipped."""
    grey = ((image[0].detach().float().cpu().numpy() + 1.0) * UINT8_SCALE).clip(0, UINT8_MAX).astype(np.uint8)
    return (grey.astype(np.uint16) * (GREY_LEVELS - 1) // UINT8_MAX).astype(np.uint8)


def outline(hidden: np.ndarray, patch_size: int) -> np.ndarray:
    """Pixels on the border of masked patches (a one-pixel frame inside each masked patch)."""
    border = np.zeros((patch_size, patch_size), dtype=bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    rows, cols = hidden.shape[0] // patch_size, hidden.shape[1] // patch_size
    return hidden & np.tile(border, (rows, cols))


def study_canvas(frame: torch.Tensor, borders: list[np.ndarray]) -> np.ndarray:
    """The views of one frame side by side below a caption strip, as palette indices."""
    views, _, height, width = frame.shape
    canvas = np.full((HEADER_PIXELS + height, views * width + (views - 1) * GAP_PIXELS), BACKGROUND_INDEX, np.uint8)
    for v in range(views):
        left = v * (width + GAP_PIXELS)
        view = grey_indices(frame[v])
        view[borders[v]] = OUTLINE_INDEX
        canvas[HEADER_PIXELS:, left:left + width] = view
    return canvas


def render_frame(canvas: np.ndarray, caption: str, colours: list[int], font: ImageFont.ImageFont) -> Image.Image:
    """A palette image of ``canvas`` with ``caption`` written in the header strip."""
    image = Image.fromarray(canvas, mode="P")
    image.putpalette(colours)
    ImageDraw.Draw(image).text((TEXT_MARGIN, TEXT_MARGIN // 2), caption, fill=TEXT_INDEX, font=font)
    return image


def captions(indices: list[int], count: int, step_numbers: list[int] | None) -> list[str]:
    """``step k / total`` for each shown frame: ``step_numbers`` when given, else the frame index."""
    if step_numbers is None:
        return [f"step {i} / {count - 1}" for i in indices]
    if len(step_numbers) != count:
        raise ValueError(f"{len(step_numbers)} step numbers for {count} frames")
    total = max(step_numbers)
    return [f"step {step_numbers[i]} / {total}" for i in indices]


def diffusion_animation(frames: list[torch.Tensor], mask: torch.Tensor, patch_size: int, path: Path,
                        every: int = DEFAULT_EVERY, step_numbers: list[int] | None = None,
                        frame_ms: int = DEFAULT_FRAME_MS) -> Path:
    """Write a looping GIF of a study's reverse diffusion; returns ``path``.

    ``frames`` are ``[V, 1, H, W]`` images in [-1, 1] from pure noise to the final reconstruction (as in
    ``DiffMAE.reconstruct(...)["frames"]``), ``mask [V, L]`` marks the masked patches (outlined in
    orange). Every ``every``-th frame is shown, always with the first and the last; each is captioned
    with its reverse-diffusion step (``step_numbers[i]`` for frame ``i``, else ``i``). Frames last
    ``frame_ms`` ms, the last one at least :data:`LAST_FRAME_HOLD_MS`.
    """
    indices = frame_indices(len(frames), every)
    check_study(frames[0], mask, patch_size)
    height, width = frames[0].shape[-2:]
    borders = [outline(mask_image(row, patch_size, height, width), patch_size) for row in mask]
    font, colours = ImageFont.load_default(size=FONT_SIZE), palette()
    texts = captions(indices, len(frames), step_numbers)
    images = [render_frame(study_canvas(frames[i], borders), text, colours, font) for i, text in zip(indices, texts)]
    durations = [frame_ms] * (len(images) - 1) + [max(frame_ms, LAST_FRAME_HOLD_MS)]
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0,
                       optimize=True, disposal=1)
    return path
