"""Drawing primitives, vectorised over coordinate grids, and the densities both views share.

Lengths are in units of the image height; y grows downwards, x to the image right.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

EDGE = 0.0025
BONE = 0.2
METAL = 0.9
LEAD_RADIUS = 0.013
VESSEL_CELLS = 18
VESSEL_KNOTS = 110
# How much of the lung's air each finding replaces at full severity (the learnability knobs)
EDEMA_FILL = 0.45
CONSOLIDATION_FILL = 1.1
NODULE_FILL = 0.9
ATELECTASIS_FILL = 0.8
THICKENING_FILL = 1.2
EFFUSION_FILL = 1.0


def sigmoid(z, scale: float = 1.0):
    """Logistic function of ``scale * z``, computed in place on one temporary."""
    result = np.multiply(z, 0.5 * scale, dtype=np.float32)
    np.tanh(result, out=result)
    result *= 0.5
    result += 0.5
    return result


def inside(distance, width: float = EDGE):
    """Soft indicator of ``distance > 0`` with an edge of about ``width``."""
    return sigmoid(distance, 1.0 / width)


def gauss(d2, sigma: float):
    """Gaussian bump of the squared distance ``d2``."""
    return np.exp(-d2 / (2 * sigma * sigma))


def line(distance, half_width: float):
    """A thin ridge along ``distance == 0``."""
    return np.exp(-np.square(distance / half_width))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise varying over about ``cells`` blobs per axis."""
    low = rng.standard_normal((cells[0] + 3, cells[1] + 3)).astype(np.float32)
    image = Image.fromarray(low).resize((shape[1], shape[0]), Image.Resampling.BICUBIC,
                                        box=(1, 1, cells[1] + 2, cells[0] + 2))
    return np.asarray(image, dtype=np.float32)


def superellipse(x, y, cx: float, cy: float, ax: float, ay: float, power: float):
    """Level function of a superellipse (1 on its outline)."""
    return np.abs((x - cx) / ax) ** power + np.abs((y - cy) / ay) ** power


def ellipse(x, y, cx: float, cy: float, major: float, minor: float, tilt: float):
    """Level function of a tilted ellipse (1 on its outline)."""
    cos, sin = math.cos(tilt), math.sin(tilt)
    u = (x - cx) * cos + (y - cy) * sin
    v = (y - cy) * cos - (x - cx) * sin
    return np.square(u / major) + np.square(v / minor)


def curve(x, y, path_x, slope, y_start: float, y_end: float, half_width: float):
    """A thin line ``x = path_x(y)`` between two heights (``slope`` = dx/dy)."""
    distance = (x - path_x) / np.sqrt(1 + np.square(slope))
    return line(distance, half_width) * inside(y - y_start, 0.003) * inside(y_end - y, 0.003)


def tube(x, y, path_x, slope, y_start: float, y_end: float, width: float):
    """A radiographic tube: faint wall plus a bright radio-opaque stripe."""
    wall = curve(x, y, path_x, slope, y_start, y_end, width)
    stripe = curve(x, y, path_x + width * 0.5, slope, y_start, y_end, width * 0.25)
    return 0.35 * wall + stripe


def vessel_texture(rng: np.random.Generator, angle, shape: tuple[int, int]) -> np.ndarray:
    """Radial streaks broken into segments by smooth noise: vessels branching out of the hila."""
    knots = np.linspace(-math.pi - 1, math.pi + 1, VESSEL_KNOTS)
    streaks = np.clip(np.interp(angle, knots, rng.standard_normal(knots.size)), 0, None).astype(np.float32)
    segments = np.clip(0.5 + 0.5 * smooth_noise(rng, shape, (VESSEL_CELLS, VESSEL_CELLS)), 0, 1)
    return streaks * segments
