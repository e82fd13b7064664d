"""A demo patient's body and how it lies on the detector for one view."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

IMAGE_HEIGHT_RANGE = (496, 577)
IMAGE_WIDTH_RANGE = (448, 545)


@dataclass(frozen=True)
class Anatomy:
    """One patient's image size, chest shape, exposure and sex (lengths in image heights)."""

    height: int
    width: int
    thorax: float  # half-width of the rib cage
    soft_tissue: float  # chest wall thickness beyond the ribs
    apex: float  # y of the lung apices
    dome: float  # y of the right hemidiaphragm dome
    sulcus: float  # depth of the costophrenic sulcus below the dome
    ctr: float  # cardiothoracic ratio
    mediastinum: float  # half-width of the upper mediastinum
    rib_spacing: float
    rotation: float  # degrees
    gamma: float
    noise: float
    marking_seed: int
    sex: str


@dataclass(frozen=True)
class Pose:
    """Shift and rotation of the patient in one image."""

    shift_x: float
    shift_y: float
    rotation: float


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A new patient."""
    height = int(rng.integers(*IMAGE_HEIGHT_RANGE))
    width = int(rng.integers(*IMAGE_WIDTH_RANGE))
    width += 1 if width == height else 0
    apex = rng.uniform(0.1, 0.15)
    return Anatomy(
        height=height, width=width,
        thorax=0.5 * width / height * rng.uniform(0.74, 0.86),
        soft_tissue=rng.uniform(0.025, 0.06),
        apex=apex,
        dome=apex + rng.uniform(0.48, 0.56),
        sulcus=rng.uniform(0.08, 0.12),
        ctr=rng.uniform(0.38, 0.47),
        mediastinum=rng.uniform(0.045, 0.06),
        rib_spacing=rng.uniform(0.048, 0.058),
        rotation=rng.normal(0, 1.5),
        gamma=rng.uniform(1.2, 1.8),
        noise=rng.uniform(0.006, 0.016),
        marking_seed=int(rng.integers(2**31)),
        sex=str(rng.choice(("F", "M"))),
    )


def jitter_anatomy(anatomy: Anatomy, rng: np.random.Generator) -> Anatomy:
    """Same patient on another day: inspiration and exposure change a little."""
    inspiration = rng.normal(0, 0.012)
    return replace(anatomy, dome=anatomy.dome + inspiration,
                   gamma=anatomy.gamma * rng.uniform(0.93, 1.07))


def sample_pose(rng: np.random.Generator) -> Pose:
    """How the patient stands for one image."""
    return Pose(shift_x=rng.normal(0, 0.012), shift_y=rng.normal(0, 0.01), rotation=rng.normal(0, 0.7))


def grid(anatomy: Anatomy, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Patient coordinates of every pixel (units of image height, x = 0 on the midline)."""
    h, w = anatomy.height, anatomy.width
    ys = ((np.arange(h, dtype=np.float32) + 0.5) / h - 0.5 - pose.shift_y)[:, None]
    xs = ((np.arange(w, dtype=np.float32) + 0.5 - w / 2) / h - pose.shift_x)[None, :]
    theta = math.radians(anatomy.rotation + pose.rotation)
    cos, sin = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    return cos * xs + sin * ys, cos * ys - sin * xs + np.float32(0.5)
