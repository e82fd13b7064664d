"""Vanilla MAE: encoder on the visible patches, a light decoder that predicts the masked ones.

With ``norm_pix_loss`` (default) the target of each masked patch is the patch normalised by its own
mean and standard deviation, so a prediction is a *normalised* patch. To return pixels honestly, a
small extra head predicts each masked patch's mean and log standard deviation (trained alongside,
MSE); the reconstruction is ``prediction · exp(log_std) + mean`` from that head only, never from the
masked patch's own statistics. Visible patches are returned as the input pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bottleneck import Studies, fuse_cls
from .encoder import StudyPretrainer, seeded_generator
from .presets import ModelConfig
from .vit import (
    Block,
    grid_shape,
    layer_norm,
    patchify,
    run_block,
    select_patches,
    sincos_2d,
    unpatchify,
)

NORM_PIX_EPS = 1e-6
PATCH_STATISTICS = 2  # mean and log standard deviation of a patch


def normalise_patches(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each patch minus its mean over its standard deviation (unbiased variance + 1e-6): ``(normalised, mean, std)``."""
    mean = patches.mean(dim=-1, keepdim=True)
    centered = patches - mean
    std = (centered.square().sum(dim=-1, keepdim=True) / (patches.shape[-1] - 1) + NORM_PIX_EPS).sqrt()
    return centered / std, mean, std


def with_positions(tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Add ``position [N, K, C]`` to tokens ``[N, 1 + K, C]`` after the CLS (which gets none)."""
    return tokens + F.pad(position, (0, 0, 1, 0))


class MAE(StudyPretrainer):
    """Masked autoencoder with the study bottleneck CLS in its encoder and decoder blocks."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        width = config.decoder_width
        rows, cols = grid_shape(config.image_size, config.patch_size)
        self.decoder_embed = nn.Linear(config.width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("decoder_pos_embed", sincos_2d(width, rows, cols, config.position_layout), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(width, config.decoder_heads, config.decoder_mlp_hidden) for _ in range(config.decoder_depth)
        )
        self.decoder_norm = layer_norm(width)
        self.decoder_pred = nn.Linear(width, config.patch_size**2)
        self.statistics_pred = nn.Linear(width, PATCH_STATISTICS) if config.norm_pix_loss else None
        self.init_parameters()

    def decode(
        self, latent: torch.Tensor, visible: torch.Tensor, masked: torch.Tensor, studies: Studies
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predictions for the masked patches ``[N, M, patch²]`` (and their statistics ``[N, M, 2]``).

        Tokens are [CLS, visible, mask tokens], each with its own position: attention does not care
        about order, so there is no unshuffle; norm and prediction run on the masked tokens only.
        """
        position = self.decoder_pos_embed
        x = with_positions(self.decoder_embed(latent), position[visible])
        x = torch.cat([x, self.mask_token + position[masked]], dim=1)
        for block in self.decoder_blocks:
            x = fuse_cls(run_block(block, x, checkpoint=self.config.grad_checkpoint), studies)
        x = self.decoder_norm(x[:, latent.shape[1] :])
        statistics = self.statistics_pred(x) if self.statistics_pred is not None else None
        return self.decoder_pred(x), statistics

    def forward_masked(
        self, images: torch.Tensor, lengths: torch.Tensor | list[int], generator: torch.Generator | None = None,
        mask_ratio: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mask, encode the visible patches, decode the masked ones; the pieces ``loss`` and ``reconstruct`` need."""
        grid, studies = self.prepare(images, lengths)
        visible, masked, mask = self.random_mask(grid, generator, mask_ratio)
        latent = self.encoder(select_patches(grid, visible), studies, visible)
        prediction, statistics = self.decode(latent, visible, masked, studies)
        return {"grid": grid, "masked": masked, "mask": mask, "prediction": prediction, "statistics": statistics}

    def loss(
        self, images: torch.Tensor, lengths: torch.Tensor | list[int], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """MSE on the masked patches (normalised per patch with ``norm_pix_loss``, plus the statistics head's).

        The mask comes from ``generator`` (default: the global random state).
        """
        out = self.forward_masked(images, lengths, generator)
        target = select_patches(out["grid"], out["masked"])
        if self.statistics_pred is None:
            return F.mse_loss(out["prediction"], target)
        normalised, mean, std = normalise_patches(target)
        pixel_loss = F.mse_loss(out["prediction"], normalised)
        statistics_loss = F.mse_loss(out["statistics"], torch.cat([mean, std.log()], dim=-1))
        return pixel_loss + statistics_loss

    def to_pixels(self, prediction: torch.Tensor, statistics: torch.Tensor | None) -> torch.Tensor:
        """Predicted masked patches in [-1, 1], de-normalised with the *predicted* statistics."""
        if statistics is not None:
            mean, log_std = statistics.split(1, dim=-1)
            prediction = prediction * log_std.exp() + mean
        return prediction.clamp(-1.0, 1.0)

    @torch.no_grad()
    def reconstruct(
        self, images: torch.Tensor, lengths: torch.Tensor | list[int], mask_seed: int = 0, seed: int = 0,
        steps: int | None = None, mask_ratio: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """``reconstruction [N, 1, H, W]``: input pixels where visible, predictions where masked; ``mask [N, L]``.

        ``mask_ratio`` defaults to the configured one. ``seed`` and ``steps`` are accepted for a common
        signature with DiffMAE (the MAE is deterministic).
        """
        out = self.forward_masked(images, lengths, seeded_generator(mask_seed), mask_ratio)
        pixels = self.to_pixels(out["prediction"], out["statistics"])
        masked = out["masked"][..., None].expand(-1, -1, pixels.shape[-1])
        patches = patchify(images, self.patch).scatter(1, masked, pixels)
        height, width = images.shape[-2:]
        return {"reconstruction": unpatchify(patches, self.patch, height, width), "mask": out["mask"]}
