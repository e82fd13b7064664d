"""The study encoder (ViT with the bottleneck CLS) and what both pretraining schemes share around it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bottleneck import Studies, check_batch, fuse_cls
from .presets import ModelConfig
from .vit import (
    INIT_STD,
    Block,
    grid_shape,
    init_weights,
    keep_count,
    layer_norm,
    patch_grid,
    patchify,
    random_masking,
    run_block,
    sincos_2d,
)


class StudyEncoder(nn.Module):
    """Patch embedding + fixed sin-cos positions, a learned CLS, pre-norm blocks, final LayerNorm.

    After every block the CLS tokens of a study are replaced by their mean (the study bottleneck): the
    only path between the views of a study. Only the patches it is given are embedded. While training,
    block ``i`` drops its residual branches per image at :func:`drop_path_rates` (``config.drop_path``).
    With ``config.grad_checkpoint`` each block runs under activation checkpointing while training
    (:func:`run_block`); the CLS fusion stays outside, between the checkpointed blocks.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.patch = config.patch_size
        self.patch_embed = nn.Conv2d(1, config.width, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        rows, cols = grid_shape(config.image_size, config.patch_size)
        self.register_buffer("pos_embed", sincos_2d(config.width, rows, cols, config.position_layout), persistent=False)
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_hidden, rate)
            for rate in drop_path_rates(config.drop_path, config.depth)
        )
        self.norm = layer_norm(config.width)
        self.grad_checkpoint = config.grad_checkpoint

    def embed_patches(self, patches: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """``patches [N, K, patch²]`` at patch numbers ``positions [N, K]`` (``None``: all, in order) -> tokens."""
        position = self.pos_embed if positions is None else self.pos_embed[positions]
        weight = self.patch_embed.weight.view(self.patch_embed.out_channels, -1)  # the conv as a linear layer
        return F.linear(patches, weight, self.patch_embed.bias) + position

    def forward(self, patches: torch.Tensor, studies: Studies, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``[N, 1 + K, width]`` after the final norm; token 0 is the study's shared CLS.

        ``patches [N, K, patch²]`` are the patches at ``positions [N, K]`` (``None``: all of them, in order).
        """
        x = self.embed_patches(patches, positions)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = fuse_cls(run_block(block, x, checkpoint=self.grad_checkpoint), studies)
        return self.norm(x)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate of each of ``depth`` blocks: linear from 0 (first block) to ``rate`` (last block)."""
    if depth == 1:
        return [0.0]
    return [rate * i / (depth - 1) for i in range(depth)]


class StudyPretrainer(nn.Module):
    """Base of both schemes: input checks, masking and the study vector (``embed``).

    Subclasses add a decoder, ``loss(images, lengths, generator)`` and ``reconstruct(images, lengths, ...)``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.patch = config.patch_size
        self.encoder = StudyEncoder(config)

    def init_parameters(self) -> None:
        """MAE initialisation: std-0.02 weights, zero biases; the patch embedding like a linear layer."""
        self.apply(init_weights)
        weight = self.encoder.patch_embed.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        for name, parameter in self.named_parameters():
            if name.endswith("_token"):
                nn.init.normal_(parameter, std=INIT_STD)

    def prepare(self, images: torch.Tensor, lengths: torch.Tensor | list[int]) -> tuple[torch.Tensor, Studies]:
        """Check a batch; return its patch grid (a view, see :func:`patch_grid`) and its studies."""
        studies = check_batch(images, lengths, self.config.image_size)
        return patch_grid(images, self.patch), studies

    def random_mask(
        self, grid: torch.Tensor, generator: torch.Generator | None = None, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(visible [N, K], masked [N, L−K], mask [N, L])`` at ``mask_ratio`` (default: the configured one)."""
        n, length = grid.shape[0], grid.shape[1] * grid.shape[2]
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        if not 0 < keep_count(length, ratio) < length:
            raise ValueError(f"mask ratio {ratio} must leave at least one visible and one masked patch of {length}")
        device = generator.device if generator is not None else grid.device
        noise = torch.rand(n, length, generator=generator, device=device).to(grid.device)
        return random_masking(n, length, ratio, noise=noise)

    def forward(
        self, images: torch.Tensor, lengths: torch.Tensor | list[int], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The pretraining loss, so that a DDP-wrapped model trains through ``model(images, lengths)``."""
        return self.loss(images, lengths, generator)

    def embed(self, images: torch.Tensor, lengths: torch.Tensor | list[int]) -> torch.Tensor:
        """Study vectors ``[n_studies, width]``: the shared CLS after the final norm, no masking."""
        return embed_studies(self.encoder, images, lengths, self.config.image_size)


def embed_studies(
    encoder: StudyEncoder, images: torch.Tensor, lengths: torch.Tensor | list[int], image_size: int
) -> torch.Tensor:
    """Study vectors ``[n_studies, width]`` of an encoder: every patch of every view, the shared CLS."""
    studies = check_batch(images, lengths, image_size)
    tokens = encoder(patchify(images, encoder.patch), studies)
    first_image = torch.cumsum(studies.sizes[:, 0].long(), 0) - studies.sizes[:, 0].long()
    return tokens[first_image, 0]


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (the same masks and noise on every device)."""
    return torch.Generator().manual_seed(seed)
