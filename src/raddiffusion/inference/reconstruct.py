"""Masked reconstruction of a study read from files: the figure, lossless PNGs per view, the mask, the GIF.

Honest by construction: the model reads only the visible patches of each view (SPEC §3); the
ground truth of masked patches is used only afterwards, to report their error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.studies import to_uint8
from ..fileio import atomic_path, write_json
from ..models import MAE, DiffMAE
from ..visual.reconstruction import mask_image
from ..visual.study import DDIM_STEPS, MASK_SEED, NOISE_SEED, draw_reconstruction
from .files import IMAGE_SUFFIXES, FileStudy, study_batch

FIGURE = "reconstruction_figure.png"
ANIMATION = "animation.gif"
SUMMARY = "reconstruction.json"
VIEW_FILES = ("input.png", "mask.png", "reconstruction.png")
MASKED_WHITE = 255


@dataclass
class ReconstructionOptions:
    """Mask and sampler settings; ``mask_ratio=None`` keeps the model's, ``steps=None`` samples with DDPM."""

    mask_ratio: float | None = None
    mask_seed: int = MASK_SEED
    seed: int = NOISE_SEED
    steps: int | None = DDIM_STEPS


def check_pretrainer(model: torch.nn.Module, source: object) -> MAE | DiffMAE:
    """``model`` if it has a decoder; a fine-tuned classifier gets a ValueError."""
    if not isinstance(model, (MAE, DiffMAE)):
        raise ValueError(f"{source}: a fine-tuned model has no decoder to reconstruct with; "
                         "give its pretraining run or model")
    return model


def view_dirs(study: FileStudy, out: Path) -> list[Path]:
    """One folder per view, named after its file (``-2``, ``-3``, ... when names repeat)."""
    seen: dict[str, int] = {}
    dirs = []
    for file in study.files:
        stem = file.stem if file.suffix.lower() in IMAGE_SUFFIXES else file.name
        seen[stem] = seen.get(stem, 0) + 1
        dirs.append(out / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return dirs


def save_png(pixels: np.ndarray, path: Path) -> Path:
    """A uint8 or bool image as a lossless 8-bit grey PNG, atomically."""
    grey = pixels.astype(np.uint8) * MASKED_WHITE if pixels.dtype == bool else pixels
    with atomic_path(path) as tmp:
        Image.fromarray(grey, mode="L").save(tmp, format="PNG")
    return path


def masked_mse(images: torch.Tensor, reconstruction: torch.Tensor, hidden: np.ndarray) -> list[float]:
    """Mean squared error over the masked pixels of each view, on the [-1, 1] scale."""
    squared = (reconstruction[:, 0].float() - images[:, 0].float()).pow(2).numpy()
    return [float(squared[v][hidden[v]].mean()) for v in range(len(squared))]


def reconstruct_study(model: MAE | DiffMAE, study: FileStudy, out: Path,
                      options: ReconstructionOptions | None = None) -> dict:
    """Reconstruct ``study`` and write its files under ``out``; returns what ``reconstruction.json`` holds."""
    options = options or ReconstructionOptions()
    if not study.views:
        raise ValueError(f"{study.name}: none of the files could be read")
    images, lengths = study_batch([study])
    steps = options.steps if isinstance(model, DiffMAE) else None
    title = f"{study.name}: {model.config.scheme} {model.config.preset}"
    result, paths = draw_reconstruction(
        model, images, lengths, title, out / FIGURE, out / ANIMATION, mask_seed=options.mask_seed,
        seed=options.seed, steps=steps, mask_ratio=options.mask_ratio)
    height, width = images.shape[-2:]
    hidden = np.stack([mask_image(row, model.config.patch_size, height, width) for row in result["mask"]])
    reconstructed = to_uint8(result["reconstruction"])
    views = []
    for v, (file, folder) in enumerate(zip(study.files, view_dirs(study, out))):
        written = [save_png(array, folder / name)
                   for array, name in zip((study.pixels[v], hidden[v], reconstructed[v]), VIEW_FILES)]
        paths.extend(written)
        views.append({"file": str(file), "folder": folder.name, "masked_patches": int(result["mask"][v].sum()),
                      "patches": int(result["mask"].shape[1])})
    errors = masked_mse(images, result["reconstruction"], hidden)
    for view, error in zip(views, errors):
        view["masked_mse"] = error
    summary = {
        "study": study.name, "model": {"scheme": model.config.scheme, "preset": model.config.preset},
        "mask_ratio": model.config.mask_ratio if options.mask_ratio is None else options.mask_ratio,
        "mask_seed": options.mask_seed,
        "sampler": None if isinstance(model, MAE) else (f"DDIM {steps} steps" if steps else "DDPM"),
        "seed": options.seed if isinstance(model, DiffMAE) else None,
        "views": views, "skipped": [{"file": str(f), "reason": r} for f, r in study.skipped],
        "files": [str(p.relative_to(out)) for p in paths],
    }
    write_json(out / SUMMARY, summary)
    return summary
