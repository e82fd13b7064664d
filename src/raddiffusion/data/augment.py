"""Augmentation for radiographs: a random resized crop, a small rotation, brightness and contrast.

One draw per image, applied to the whole batch in one ``affine_grid`` + ``grid_sample`` (bilinear, border
padding: no black corners). No horizontal flip by default: the anatomy is lateralised (heart on the left).
The parameters are drawn on the CPU from the given generator, so the result does not depend on the device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PIXEL_RANGE = 2.0  # the width of the [-1, 1] pixel range
MAX_ROTATION = 180.0  # degrees
DRAWS = ("area", "log_ratio", "x", "y", "angle", "flip", "brightness", "contrast")  # uniforms per image


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms; every value is drawn uniformly and independently per image.

    ``crop_scale``: area of the crop as a fraction of the image; ``crop_ratio``: its width / height relative
    to the image's (drawn log-uniformly; a side longer than the image is cut to it); ``rotation``: at most
    this many degrees either way; ``brightness``: an added shift in ``[-b, b]`` in pixel units of the
    ``[-1, 1]`` range (0.1 is 5 % of the full range); ``contrast``: a factor in ``[1 − c, 1 + c]`` about the
    image's mean; ``hflip``: mirror half of the images left-right.
    """

    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    rotation: float = 5.0
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False

    def __post_init__(self) -> None:
        low, high = _float_pair(self, "crop_scale")
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, not {self.crop_scale}")
        low, high = _float_pair(self, "crop_ratio")
        if not 0.0 < low <= high:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, not {self.crop_ratio}")
        if not 0.0 <= self.rotation <= MAX_ROTATION:
            raise ValueError(f"rotation must be in [0, {MAX_ROTATION:g}] degrees, not {self.rotation}")
        if not 0.0 <= self.brightness < PIXEL_RANGE:
            raise ValueError(f"brightness must be in [0, {PIXEL_RANGE:g}), not {self.brightness}")
        if not 0.0 <= self.contrast < 1.0:
            raise ValueError(f"contrast must be in [0, 1), not {self.contrast}")

    @property
    def moves_pixels(self) -> bool:
        """Whether the geometric part (crop, rotation, flip) is not the identity."""
        return self.crop_scale != (1.0, 1.0) or self.crop_ratio != (1.0, 1.0) or self.rotation > 0 or self.hflip

    @property
    def changes_values(self) -> bool:
        """Whether the photometric part (brightness, contrast) is not the identity."""
        return self.brightness > 0 or self.contrast > 0


def _float_pair(settings: Augmentation, name: str) -> tuple[float, float]:
    """The ``(low, high)`` field ``name`` as a tuple of floats, stored back so that equal settings compare equal."""
    bounds = getattr(settings, name)
    if len(bounds) != 2:
        raise ValueError(f"{name} must be a (low, high) pair, not {bounds}")
    pair = (float(bounds[0]), float(bounds[1]))
    object.__setattr__(settings, name, pair)
    return pair


NO_AUGMENTATION = Augmentation(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation=0.0, brightness=0.0, contrast=0.0)


def augment(images: torch.Tensor, settings: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """A randomly transformed copy of a batch ``[N, 1, H, W]`` in ``[-1, 1]`` (same shape, clamped to ``[-1, 1]``).

    ``generator`` is a CPU generator; nothing is drawn (and ``images`` itself is returned) when ``settings``
    change nothing, e.g. :data:`NO_AUGMENTATION`.
    """
    if not (settings.moves_pixels or settings.changes_values):
        return images
    draws = dict(zip(DRAWS, torch.rand(len(DRAWS), images.shape[0], dtype=torch.float64, generator=generator)))
    out = images
    if settings.moves_pixels:
        theta = affine_matrices(draws, settings, aspect=images.shape[-1] / images.shape[-2])
        grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if settings.changes_values:
        out = adjust_values(out, draws, settings)
    return out.clamp(-1.0, 1.0)


def affine_matrices(draws: dict[str, torch.Tensor], settings: Augmentation, aspect: float) -> torch.Tensor:
    """``[N, 2, 3]`` maps from output to input coordinates (``affine_grid``'s ``[-1, 1]`` convention).

    The output is the crop, rotated about its centre by the angle in pixel space (``aspect`` = W / H).
    """
    area = uniform(draws["area"], settings.crop_scale)
    ratio = torch.exp(uniform(draws["log_ratio"], tuple(math.log(r) for r in settings.crop_ratio)))
    width = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the image's sides
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = (1.0 - width) * uniform(draws["x"], (-1.0, 1.0))
    centre_y = (1.0 - height) * uniform(draws["y"], (-1.0, 1.0))
    angle = torch.deg2rad(uniform(draws["angle"], (-settings.rotation, settings.rotation)))
    if settings.hflip:
        width = torch.where(draws["flip"] < 0.5, -width, width)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rows = [
        torch.stack([cos * width, -sin * height / aspect, centre_x], dim=1),
        torch.stack([sin * width * aspect, cos * height, centre_y], dim=1),
    ]
    return torch.stack(rows, dim=1).float()


def adjust_values(images: torch.Tensor, draws: dict[str, torch.Tensor], settings: Augmentation) -> torch.Tensor:
    """Contrast about each image's mean, then a brightness shift (unclamped)."""
    shape = (images.shape[0],) + (1,) * (images.ndim - 1)
    factor = uniform(draws["contrast"], (1.0 - settings.contrast, 1.0 + settings.contrast))
    shift = uniform(draws["brightness"], (-settings.brightness, settings.brightness))
    factor, shift = (t.view(shape).to(images.device, images.dtype) for t in (factor, shift))
    mean = images.mean(dim=tuple(range(1, images.ndim)), keepdim=True)
    return (images - mean) * factor + mean + shift


def uniform(draw: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Uniforms in ``[0, 1)`` mapped to ``[low, high)``."""
    low, high = bounds
    return low + (high - low) * draw
