"""The study bottleneck: the CLS tokens of the images of one study are replaced by their mean.

A batch holds whole studies, in order, described by ``lengths`` (images per study). The mean is one
vectorised segment sum (``index_add``) over a study index per image; no loop over studies or images.
A one-image study is unchanged by it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Studies:
    """How the images of a batch group into studies: ``index [N]`` (study of each image), ``sizes [S, 1]``."""

    index: torch.Tensor
    sizes: torch.Tensor

    @property
    def count(self) -> int:
        return self.sizes.shape[0]


def check_batch(images: torch.Tensor, lengths: torch.Tensor | list[int], image_size: int) -> Studies:
    """Validate a study batch (``ValueError`` with the reason) and return its :class:`Studies`."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError("images must be a float tensor [N, 1, H, W] in [-1, 1]")
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape [N, 1, H, W], not {list(images.shape)}")
    if images.shape[2] != image_size or images.shape[3] != image_size:
        raise ValueError(
            f"images are {images.shape[2]}×{images.shape[3]} but this model takes {image_size}×{image_size}"
        )
    if images.shape[0] == 0:
        raise ValueError("the batch holds no images")
    if not torch.isfinite(images.sum()):  # one reduction instead of an elementwise mask
        raise ValueError("images contain NaN or infinite values")
    lengths = torch.as_tensor(lengths, device=images.device)
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.numel() == 0:
        raise ValueError(f"lengths must be a 1-D integer tensor of images per study, not {lengths!r}")
    if (lengths < 1).any():
        raise ValueError(f"every study needs at least one image, lengths are {lengths.tolist()}")
    if int(lengths.sum()) != images.shape[0]:
        raise ValueError(f"lengths sum to {int(lengths.sum())} but the batch holds {images.shape[0]} images")
    index = torch.repeat_interleave(torch.arange(len(lengths), device=images.device), lengths)
    return Studies(index=index, sizes=lengths.to(images.dtype)[:, None])


def study_mean(per_image: torch.Tensor, studies: Studies) -> torch.Tensor:
    """Mean of ``per_image [N, C]`` over the images of each study: ``[S, C]``."""
    sums = per_image.new_zeros(studies.count, per_image.shape[1]).index_add_(0, studies.index, per_image)
    return sums / studies.sizes


def fuse_cls(tokens: torch.Tensor, studies: Studies) -> torch.Tensor:
    """Write each study's mean CLS (token 0) back to every image of that study; returns ``tokens``."""
    cls = tokens[:, 0].clone()  # not a view: the in-place write below must not change what autograd saved
    tokens[:, 0] = study_mean(cls, studies)[studies.index]
    return tokens
