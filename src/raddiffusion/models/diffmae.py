"""DiffMAE: a diffusion model of the masked patches, conditioned on the encoded visible patches.

Training: the visible patches go through the encoder as in the MAE; the masked patches are noised
to one random timestep per image, embedded by the decoder's own patch embedding (+ positions, +
timestep embedding unless switched off) and the decoder predicts the clean patches x0 in pixel
space. Loss: MSE on the masked patches.

Decoders (``config.decoder``):
- ``joint``: self-attention over [CLS, visible, noised] tokens with the study CLS fused per block;
- ``cross``: noised tokens attend to [CLS, visible] by cross-attention only;
- ``cross-self`` (default): cross-attention, self-attention among the noised tokens, MLP; half as
  many blocks as the preset's decoder depth.

Inpainting is honest: the masked patches start from pure Gaussian noise drawn from ``seed``, the
encoder sees the visible patches only and runs once; no masked pixel or statistic is ever read.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bottleneck import Studies, fuse_cls
from .diffusion import NoiseSchedule
from .encoder import StudyPretrainer, seeded_generator
from .mae import with_positions
from .presets import ModelConfig
from .vit import (
    Block,
    CrossAttention,
    Mlp,
    SelfAttention,
    grid_shape,
    layer_norm,
    patchify,
    run_block,
    select_patches,
    sincos_2d,
    timestep_embedding,
    unpatchify,
)


class CrossBlock(nn.Module):
    """Pre-norm cross-attention to the context, optionally self-attention among the queries, then MLP."""

    def __init__(self, width: int, heads: int, hidden: int, self_attention: bool):
        super().__init__()
        self.norm_query = layer_norm(width)
        self.norm_context = layer_norm(width)
        self.cross_attn = CrossAttention(width, heads)
        self.norm_self = layer_norm(width) if self_attention else None
        self.self_attn = SelfAttention(width, heads) if self_attention else None
        self.norm_mlp = layer_norm(width)
        self.mlp = Mlp(width, hidden)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm_query(x), self.norm_context(context))
        if self.self_attn is not None:
            x = x + self.self_attn(self.norm_self(x))
        return x + self.mlp(self.norm_mlp(x))


def decoder_blocks(config: ModelConfig) -> nn.ModuleList:
    width, heads, hidden = config.decoder_width, config.decoder_heads, config.decoder_mlp_hidden
    if config.decoder == "joint":
        return nn.ModuleList(Block(width, heads, hidden) for _ in range(config.decoder_depth))
    if config.decoder == "cross":
        return nn.ModuleList(CrossBlock(width, heads, hidden, False) for _ in range(config.decoder_depth))
    depth = max(1, config.decoder_depth // 2)
    return nn.ModuleList(CrossBlock(width, heads, hidden, True) for _ in range(depth))


class DiffMAE(StudyPretrainer):
    """Study encoder + a denoising decoder of the masked patches (x0 prediction in [-1, 1])."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        width = config.decoder_width
        rows, cols = grid_shape(config.image_size, config.patch_size)
        self.schedule = NoiseSchedule(config.schedule, config.timesteps)
        self.decoder_embed = nn.Linear(config.width, width)
        self.noised_embed = nn.Linear(config.patch_size**2, width)
        self.register_buffer("decoder_pos_embed", sincos_2d(width, rows, cols, config.position_layout), persistent=False)
        self.time_embed = Mlp(width, width) if config.time_embedding else None
        self.decoder_blocks = decoder_blocks(config)
        self.decoder_norm = layer_norm(width)
        self.decoder_pred = nn.Linear(width, config.patch_size**2)
        self.init_parameters()

    def condition(self, latent: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Decoder context ``[N, 1 + K, decoder_width]``: the projected encoder tokens with positions."""
        return with_positions(self.decoder_embed(latent), self.decoder_pos_embed[visible])

    def denoise(
        self, context: torch.Tensor, noised: torch.Tensor, t: torch.Tensor, masked: torch.Tensor, studies: Studies
    ) -> torch.Tensor:
        """Predicted clean masked patches ``[N, M, patch²]`` from the noised ones at timesteps ``t [N]``."""
        x = self.noised_embed(noised) + self.decoder_pos_embed[masked]
        if self.time_embed is not None:
            x = x + self.time_embed(timestep_embedding(t, x.shape[-1]))[:, None]
        checkpoint = self.config.grad_checkpoint
        if self.config.decoder == "joint":
            x = torch.cat([context, x], dim=1)
            for block in self.decoder_blocks:
                x = fuse_cls(run_block(block, x, checkpoint=checkpoint), studies)
            x = x[:, context.shape[1] :]
        else:
            for block in self.decoder_blocks:
                x = run_block(block, x, context, checkpoint=checkpoint)
        return self.decoder_pred(self.decoder_norm(x))

    def loss(
        self, images: torch.Tensor, lengths: torch.Tensor | list[int], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """MSE between predicted and clean masked patches, one random timestep per image.

        Masks, timesteps and noise come from ``generator`` (default: the global random state).
        """
        grid, studies = self.prepare(images, lengths)
        visible, masked, _ = self.random_mask(grid, generator)
        context = self.condition(self.encoder(select_patches(grid, visible), studies, visible), visible)
        target = select_patches(grid, masked)
        device = generator.device if generator is not None else images.device
        t = torch.randint(0, self.schedule.timesteps, (len(images),), generator=generator, device=device)
        noise = torch.randn(target.shape, generator=generator, device=device, dtype=target.dtype)
        t, noise = t.to(images.device), noise.to(images.device)
        noised = self.schedule.add_noise(target, t, noise)
        return F.mse_loss(self.denoise(context, noised, t, masked, studies), target)

    @torch.no_grad()
    def reconstruct(
        self, images: torch.Tensor, lengths: torch.Tensor | list[int], mask_seed: int = 0, seed: int = 0,
        steps: int | None = None, return_frames: bool = True, mask_ratio: float | None = None,
    ) -> dict:
        """Inpaint the masked patches from pure noise: DDPM over all T steps (``steps=None``) or DDIM.

        ``mask_ratio`` defaults to the configured one (the ratio the model was trained at).

        Returns ``reconstruction [N, 1, H, W]``, ``mask [N, L]`` (True = masked) and ``frames``: the
        image at the start and after every step (visible patches are the input throughout). Frames of
        all 1000 DDPM steps of the default schedule take about 0.8 GB for a 3-view 256² study:
        ``return_frames=False`` keeps none.
        """
        grid, studies = self.prepare(images, lengths)
        visible, masked, mask = self.random_mask(grid, seeded_generator(mask_seed), mask_ratio)
        context = self.condition(self.encoder(select_patches(grid, visible), studies, visible), visible)
        patches = patchify(images, self.patch)
        index = masked[..., None].expand(-1, -1, patches.shape[-1])
        height, width = images.shape[-2:]

        def to_image(x: torch.Tensor) -> torch.Tensor:
            return unpatchify(patches.scatter(1, index, x.clamp(-1.0, 1.0)), self.patch, height, width)

        frames: list[torch.Tensor] = []
        final = self.schedule.sample(
            lambda x, t: self.denoise(context, x, t, masked, studies),
            tuple(index.shape), seeded_generator(seed), patches.device, steps,
            on_step=(lambda x: frames.append(to_image(x))) if return_frames else None,
        )
        return {"reconstruction": to_image(final), "mask": mask, "frames": frames}
