"""The figures of one reference study: what pretraining, fine-tuning and ``raddiffusion figures`` draw.

The reference study is fixed for a run: a validation study with at least two views (the first in
store order, or the one asked for), shown with a fixed mask seed and noise seed every time.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data.store import Store
from ..data.studies import StudyDataset, collate_studies
from ..models import MAE, DiffMAE
from .animation import diffusion_animation
from .attention import attention_figure, attention_note, cls_attention
from .reconstruction import reconstruction_figure

FIGURES = "figures"
REFERENCE_SPLIT = "validate"
MIN_REFERENCE_VIEWS = 2
MASK_SEED, NOISE_SEED = 0, 0
DDIM_STEPS = 100  # reverse-diffusion steps of the figures and the animation
ANIMATION_FRAMES = 25  # about this many reverse-diffusion steps become frames of the GIF
ANIMATION = "animation.gif"
ATTENTION = "attention.png"


def reference_study(store: Store, study_id: int | None = None) -> tuple[dict, int]:
    """The batch of one study (``images``, ``lengths``) and its id: ``study_id``, else the first validation
    study with at least two views (any split when asked for by id)."""
    dataset = StudyDataset(store, split=None if study_id is not None else REFERENCE_SPLIT)
    if study_id is not None:
        matches = [i for i, sid in enumerate(dataset.study_ids) if sid == study_id]
        if not matches:
            raise ValueError(f"study {study_id} is not in the store")
        index = matches[0]
    else:
        sizes = [len(dataset.image_rows(i)) for i in range(len(dataset))]
        many = [i for i, size in enumerate(sizes) if size >= MIN_REFERENCE_VIEWS]
        if not sizes:
            raise ValueError(f"the store has no {REFERENCE_SPLIT} study to draw")
        index = many[0] if many else max(range(len(sizes)), key=sizes.__getitem__)
    return collate_studies([dataset[index]]), int(dataset.study_ids[index])


def space_note(model: nn.Module, steps: int | None = DDIM_STEPS) -> str:
    """Which space a reconstruction is shown in, and where its masked pixels come from."""
    if isinstance(model, DiffMAE):
        sampler = f"{steps} DDIM steps" if steps else f"DDPM over all {model.schedule.timesteps} steps"
        return (f"pixel space; masked patches inpainted from pure noise by {sampler}, "
                f"the encoder saw only the visible patches")
    if model.config.norm_pix_loss:
        return ("pixel space; masked patches de-normalised with the mean / std predicted by the model's "
                "statistics head (no statistic of a masked patch is used)")
    return "pixel space; the decoder predicts pixels"


@torch.no_grad()
def draw_reconstruction(
    model: MAE | DiffMAE, images: torch.Tensor, lengths: torch.Tensor, title: str, figure: Path,
    animation: Path | None = None, mask_seed: int = MASK_SEED, seed: int = NOISE_SEED,
    steps: int | None = DDIM_STEPS, mask_ratio: float | None = None,
) -> tuple[dict, list[Path]]:
    """Reconstruct one study and draw original | masked input | reconstruction to ``figure``; for DiffMAE
    also the reverse-diffusion GIF if ``animation`` names a file. Returns the result (on the CPU) and
    the files written. ``steps=None`` samples with DDPM over all steps."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        result = model.reconstruct(images.to(device), lengths.to(device), mask_seed=mask_seed, seed=seed,
                                   steps=steps, mask_ratio=mask_ratio)
    finally:
        model.train(was_training)
    result = {k: [f.cpu() for f in v] if k == "frames" else v.cpu() for k, v in result.items()}
    paths = [reconstruction_figure(images.cpu(), result, model.config.patch_size, figure, title,
                                   space_note(model, steps))]
    if animation is not None and isinstance(model, DiffMAE):
        paths.append(diffusion_animation(result["frames"], result["mask"], model.config.patch_size, animation,
                                         every=max(1, round(len(result["frames"]) / ANIMATION_FRAMES))))
    return result, paths


def reconstruction_figures(
    model: MAE | DiffMAE, batch: dict, study_id: int, out_dir: Path, name: str, animation: Path | None = None
) -> list[Path]:
    """Original | masked input | reconstruction of a store study (``reconstruction_<name>.png``); for
    DiffMAE the reverse-diffusion GIF if ``animation`` names a file for it."""
    title = f"study {study_id}: {model.config.scheme} {model.config.preset}, {name.replace('_', ' ')}"
    _, paths = draw_reconstruction(model, batch["images"], batch["lengths"], title,
                                   out_dir / f"reconstruction_{name}.png", animation)
    return paths


@torch.no_grad()
def attention_map_figure(model: nn.Module, batch: dict, study_id: int, path: Path, mode: str = "rollout") -> Path:
    """CLS → patch attention over every view of the study, averaged over heads."""
    device = next(model.parameters()).device
    images, lengths = batch["images"].to(device), batch["lengths"].to(device)
    maps = cls_attention(model.encoder, images, lengths, mode=mode).cpu()
    title = f"study {study_id}: CLS → patch attention ({model.config.preset} encoder)"
    return attention_figure(images.cpu(), maps, path, title, attention_note(mode, model.config.depth))
