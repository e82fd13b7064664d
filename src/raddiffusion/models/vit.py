"""ViT pieces: patchify, fixed 2-D sin-cos position embeddings, random masking, attention, blocks.

The encoder embeds only the patches it is given (the visible ones), so nothing about a masked patch
can reach it. Its patch embedding is a stride-``patch`` convolution stored as ``nn.Conv2d`` but applied
as one matrix product to already-gathered patches (the same weights, no work on masked patches).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

LAYER_NORM_EPS = 1e-12
INIT_STD = 0.02
POSITION_TEMPERATURE = 10000.0
MAE_LAYOUT = "mae"  # 2-D position tables as MAE, Hugging Face ViTMAE and timm: column in the first half of the channels
ROW_FIRST_LAYOUT = "row-first"  # the row in the first half: models saved before the layout was recorded
POSITION_LAYOUTS = (MAE_LAYOUT, ROW_FIRST_LAYOUT)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[N, 1, H, W]`` -> ``[N, L, patch²]``, patches in row-major order, pixels row-major inside."""
    grid = patch_grid(images, patch)
    return grid.reshape(grid.shape[0], grid.shape[1] * grid.shape[2], patch * patch)


def patch_grid(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[N, 1, H, W]`` images as ``[N, rows, cols, patch, patch]`` (a view of contiguous images)."""
    n, _, height, width = images.shape
    return images.reshape(n, height // patch, patch, width // patch, patch).permute(0, 1, 3, 2, 4)


def select_patches(grid: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The patches at ``index [N, K]`` (row-major patch numbers) of a :func:`patch_grid`: ``[N, K, patch²]``.

    Copies only the selected patches: the others are never read.
    """
    cols = grid.shape[2]
    images = torch.arange(grid.shape[0], device=index.device)[:, None]
    return grid[images, index // cols, index % cols].flatten(2)


def unpatchify(patches: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[N, L, patch²]`` -> ``[N, 1, H, W]``."""
    n = patches.shape[0]
    rows, cols = height // patch, width // patch
    x = patches.reshape(n, rows, cols, patch, patch)
    return x.permute(0, 1, 3, 2, 4).reshape(n, 1, height, width)


def sincos_1d(width: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos embedding of 1-D positions: ``[P]`` -> ``[P, width]`` (half sines, half cosines)."""
    omega = torch.arange(width // 2, dtype=torch.float64, device=positions.device) / (width / 2.0)
    omega = 1.0 / POSITION_TEMPERATURE**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(width: int, rows: int, cols: int, layout: str = MAE_LAYOUT) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings of a ``rows × cols`` patch grid: ``[rows·cols, width]``, float32.

    Patches in row-major order. ``layout`` ``mae`` (the MAE recipe, as Hugging Face ViTMAE and timm): the
    first half of the channels encodes the column, the second the row; ``row-first``: the row first.
    """
    if width % 4:
        raise ValueError(f"the embedding width must be a multiple of 4 for 2-D sin-cos, not {width}")
    if layout not in POSITION_LAYOUTS:
        raise ValueError(f"position layout must be one of {', '.join(POSITION_LAYOUTS)}, not {layout!r}")
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    halves = [sincos_1d(width // 2, col.flatten()), sincos_1d(width // 2, row.flatten())]
    if layout == ROW_FIRST_LAYOUT:
        halves.reverse()
    return torch.cat(halves, dim=1).float()


def timestep_embedding(timesteps: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoidal embedding of integer diffusion timesteps: ``[N]`` -> ``[N, width]``."""
    return sincos_1d(width, timesteps.flatten()).float().to(timesteps.device)


def keep_count(num_patches: int, mask_ratio: float) -> int:
    """How many patches of an image stay visible: ``int(L·(1 − mask_ratio))``."""
    return int(num_patches * (1.0 - mask_ratio))


def random_masking(
    num_images: int,
    num_patches: int,
    mask_ratio: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random mask per image: argsort of uniform noise, the first ``keep_count`` patches stay.

    Returns ``(visible [N, K], masked [N, L−K], mask [N, L] bool True = masked)``, index tensors in
    noise order. Pass ``noise [N, L]`` (or a seeded ``generator``) for a reproducible mask.
    """
    if noise is None:
        noise = torch.rand(num_images, num_patches, generator=generator, device=device)
    elif noise.shape != (num_images, num_patches):
        raise ValueError(f"mask noise must have shape {(num_images, num_patches)}, not {tuple(noise.shape)}")
    order = torch.argsort(noise, dim=1)
    keep = keep_count(num_patches, mask_ratio)
    visible, masked = order[:, :keep], order[:, keep:]
    mask = torch.ones(num_images, num_patches, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, visible, False)
    return visible, masked, mask


def layer_norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=LAYER_NORM_EPS)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[N, L, C]`` -> ``[N, heads, L, C / heads]`` (a view)."""
    n, length, width = x.shape
    return x.view(n, length, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[N, heads, L, d]`` -> ``[N, L, heads·d]``."""
    n, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * dim)


class SelfAttention(nn.Module):
    """Multi-head self-attention: one qkv projection (with bias), SDPA, an output projection."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` (queries) over ``context`` (keys and values)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, length, width = context.shape
        kv = self.kv(context).view(n, length, 2, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        q = split_heads(self.q(x), self.heads)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class Mlp(nn.Sequential):
    """Linear -> GELU -> linear."""

    def __init__(self, width: int, hidden: int):
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero each sample (batch row) with probability ``rate``, scale the others by 1/(1 − rate).

    The identity (no random draw) in eval mode or at rate 0.
    """
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    kept = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * kept / keep


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``.

    With ``drop_path`` > 0 each residual branch is dropped per sample while training (:func:`drop_path`).
    """

    def __init__(self, width: int, heads: int, hidden: int, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = layer_norm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = layer_norm(width)
        self.mlp = Mlp(width, hidden)
        self.drop_path_rate = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


def run_block(block: nn.Module, *inputs: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
    """``block(*inputs)``; with ``checkpoint``, while training with gradients on, under activation checkpointing.

    A checkpointed block keeps only its inputs and runs its forward again in the backward pass
    (``torch.utils.checkpoint``, non-reentrant): the same values and gradients, since the random state
    is restored for the rerun (drop path draws the same samples). In eval mode or under ``no_grad`` it
    is a plain call.
    """
    if checkpoint and block.training and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, *inputs, use_reentrant=False, preserve_rng_state=True)
    return block(*inputs)


def init_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) linear and conv weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def grid_shape(image_size: int, patch: int) -> tuple[int, int]:
    """Rows and columns of patches of a square image."""
    if image_size % patch:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
    return image_size // patch, image_size // patch

