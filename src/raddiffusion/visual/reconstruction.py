"""Reconstruction figure: original | masked input | reconstruction, one row per view of a study.

Pixels are shown on the model's fixed scale ([-1, 1], grey), never rescaled per image, so a
reconstruction that is too dark or too flat looks it.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..fileio import atomic_path

PIXEL_MIN, PIXEL_MAX = -1.0, 1.0
PANEL_INCHES = 2.8  # side of one image panel
HEADER_INCHES = 0.8  # room for the title and the column titles
MARGIN_INCHES = 0.15
GAP_INCHES = 0.4  # between panels (room for a label)
LEFT_INCHES = 0.35  # room for the row labels
NOTE_LINE_INCHES = 0.18  # one line of a note at NOTE_SIZE
DPI = 110
TITLE_SIZE = 12
NOTE_SIZE = 9
LABEL_SIZE = 9
CHARS_PER_INCH = 14  # wrap width of a note at NOTE_SIZE
TITLE_CHARS_PER_INCH, TITLE_LINE_INCHES = 10, 0.25  # wrap width and line height of a title at TITLE_SIZE
GRID_COLOUR, GRID_ALPHA, GRID_WIDTH = "#4fc3f7", 0.45, 0.5
MASK_FILL = "#8c8c8c"  # masked patches in the masked input
HATCH, HATCH_COLOUR = "///", "#5a5a5a"
MASKED_OUTLINE, MASKED_OUTLINE_WIDTH = "#ff8c00", 0.9
PIXEL_EDGE = 0.5  # imshow puts pixel centres on integers: edges are at k − 0.5
COLUMNS = ("original", "masked input", "reconstruction")


def image_array(x: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 NumPy array on the CPU (no gradient)."""
    return x.detach().to("cpu", torch.float64).numpy()


def save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` with Agg to ``path`` as PNG, atomically; returns ``path``."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def wrap_note(note: str, width_inches: float) -> str:
    """``note`` wrapped to fit a figure ``width_inches`` wide at :data:`NOTE_SIZE`."""
    return textwrap.fill(note, width=max(1, int(width_inches * CHARS_PER_INCH)))


def framed_figure(rows: int, cols: int, title: str, note: str, panel: tuple[float, float] = (PANEL_INCHES,) * 2,
                  left: float = MARGIN_INCHES, right: float = MARGIN_INCHES, gap: float = GAP_INCHES,
                  axis: float = MARGIN_INCHES) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows × cols`` panels (``panel`` inches) with a title above and a wrapped ``note`` below.

    ``left``, ``right``, ``gap`` (between panels) and ``axis`` (under the panels, for x labels) are inches.
    """
    width = left + cols * panel[0] + (cols - 1) * gap + right
    note = wrap_note(note, width)
    title = textwrap.fill(title, width=max(1, int(width * TITLE_CHARS_PER_INCH)))
    header = HEADER_INCHES + TITLE_LINE_INCHES * title.count("\n")
    footer = axis + NOTE_LINE_INCHES * (note.count("\n") + 1) + MARGIN_INCHES
    height = header + rows * panel[1] + (rows - 1) * gap + footer
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - header / height,
                        bottom=footer / height, wspace=gap / panel[0], hspace=gap / panel[1])
    fig.suptitle(title, fontsize=TITLE_SIZE, y=1 - MARGIN_INCHES / height, va="top")
    fig.text(0.5, MARGIN_INCHES / height, note, ha="center", va="bottom", fontsize=NOTE_SIZE)
    return fig, axes


def mask_image(mask_row: torch.Tensor, patch_size: int, height: int, width: int) -> np.ndarray:
    """A per-image patch mask ``[L]`` (True = masked, row-major patches) as an ``[H, W]`` bool image."""
    rows, cols = height // patch_size, width // patch_size
    if mask_row.numel() != rows * cols:
        raise ValueError(f"a mask of {mask_row.numel()} patches does not fit a {rows}×{cols} patch grid")
    grid = mask_row.detach().to("cpu", torch.bool).numpy().reshape(rows, cols)
    return np.kron(grid, np.ones((patch_size, patch_size), dtype=bool)).astype(bool)


def show_grey(ax: Axes, image: np.ndarray, cmap: matplotlib.colors.Colormap | str = "gray") -> None:
    """``image`` on the fixed [-1, 1] grey scale, without ticks."""
    ax.imshow(image, cmap=cmap, vmin=PIXEL_MIN, vmax=PIXEL_MAX, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_patch_grid(ax: Axes, patch_size: int, height: int, width: int) -> None:
    """Thin lines on every patch boundary."""
    lines = [[(x - PIXEL_EDGE, -PIXEL_EDGE), (x - PIXEL_EDGE, height - PIXEL_EDGE)]
             for x in range(patch_size, width, patch_size)]
    lines += [[(-PIXEL_EDGE, y - PIXEL_EDGE), (width - PIXEL_EDGE, y - PIXEL_EDGE)]
              for y in range(patch_size, height, patch_size)]
    ax.add_collection(LineCollection(lines, colors=GRID_COLOUR, alpha=GRID_ALPHA, linewidths=GRID_WIDTH))


def masked_rectangles(mask_row: torch.Tensor, patch_size: int, width: int) -> list[Rectangle]:
    """One rectangle per masked patch, in pixel coordinates."""
    cols = width // patch_size
    index = torch.nonzero(mask_row.detach().cpu()).flatten().tolist()
    return [Rectangle(((i % cols) * patch_size - PIXEL_EDGE, (i // cols) * patch_size - PIXEL_EDGE),
                      patch_size, patch_size) for i in index]


def check_study(images: torch.Tensor, mask: torch.Tensor, patch_size: int) -> None:
    """``ValueError`` unless ``images [V, 1, H, W]`` and ``mask [V, L]`` agree with ``patch_size``."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape [V, 1, H, W], not {list(images.shape)}")
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"{height}×{width} images are not a whole number of {patch_size}-pixel patches")
    expected = (images.shape[0], (height // patch_size) * (width // patch_size))
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask must have shape {list(expected)}, not {list(mask.shape)}")


def draw_view(axes: np.ndarray, original: torch.Tensor, reconstruction: torch.Tensor, mask_row: torch.Tensor,
              patch_size: int) -> None:
    """One row: the original, the masked input (masked patches greyed and hatched), the reconstruction."""
    height, width = original.shape[-2:]
    pixels = image_array(original[0])
    hidden = mask_image(mask_row, patch_size, height, width)
    show_grey(axes[0], pixels)
    masked_cmap = matplotlib.colormaps["gray"].with_extremes(bad=MASK_FILL)
    show_grey(axes[1], np.ma.masked_array(pixels, mask=hidden), masked_cmap)
    axes[1].add_collection(PatchCollection(masked_rectangles(mask_row, patch_size, width), facecolor="none",
                                           edgecolor=HATCH_COLOUR, hatch=HATCH, linewidth=0))
    show_grey(axes[2], image_array(reconstruction[0]))
    for ax in axes[1:]:
        draw_patch_grid(ax, patch_size, height, width)
    axes[2].add_collection(PatchCollection(masked_rectangles(mask_row, patch_size, width), facecolor="none",
                                           edgecolor=MASKED_OUTLINE, linewidth=MASKED_OUTLINE_WIDTH))


def reconstruction_figure(images: torch.Tensor, result: dict, patch_size: int, path: Path, title: str,
                          space_note: str) -> Path:
    """Write a PNG: per view of one study, original | masked input | reconstruction.

    ``images [V, 1, H, W]`` in [-1, 1] are all views of the study, ``result`` is ``model.reconstruct``'s
    output for them (``reconstruction``, ``mask``). Masked patches are greyed and hatched on the input
    and outlined in orange on the reconstruction; the patch grid is drawn on both. ``space_note`` (how
    the reconstruction was brought to pixel space) is printed under the panels.
    """
    reconstruction, mask = result["reconstruction"], result["mask"]
    check_study(images, mask, patch_size)
    if reconstruction.shape != images.shape:
        raise ValueError(f"reconstruction {list(reconstruction.shape)} does not match images {list(images.shape)}")
    views = images.shape[0]
    fig, axes = framed_figure(views, len(COLUMNS), title, space_note, left=LEFT_INCHES, gap=GAP_INCHES,
                              axis=GAP_INCHES)
    for v in range(views):
        draw_view(axes[v], images[v], reconstruction[v], mask[v], patch_size)
        masked = int(mask[v].sum())
        axes[v, 0].set_ylabel(f"view {v + 1}", fontsize=LABEL_SIZE)
        axes[v, 1].set_xlabel(f"{masked}/{mask.shape[1]} patches masked", fontsize=LABEL_SIZE)
    for ax, name in zip(axes[0], COLUMNS):
        ax.set_title(name, fontsize=LABEL_SIZE + 1)
    return save_figure(fig, path)
