"""The image renderer: one view of a patient with its findings, as display values."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .anatomy import Anatomy, Pose
from .draw import smooth_noise
from .findings import Findings
from .frontal import render_frontal
from .lateral import render_lateral

FRONTAL_POSITIONS = ("PA", "AP")
FILM_GAIN = 0.9
DISPLAY_PERCENTILES = (0.5, 99.7)
PERCENTILE_STRIDE = 4
GRAIN_PIXELS = 4
MOTTLE_CELLS = 10
MOTTLE = 0.02
DETECTOR_HEIGHT_MM = 430.0


@dataclass(frozen=True)
class Radiograph:
    """``values``: unclipped display values (0 black .. 1 white); ``display`` is them clipped."""

    values: np.ndarray

    @property
    def display(self) -> np.ndarray:
        return np.clip(self.values, 0.0, 1.0)

    @property
    def pixel_spacing_mm(self) -> float:
        """Detector pixel size: every image spans the same detector height."""
        return DETECTOR_HEIGHT_MM / self.values.shape[0]

    def picture(self) -> Image.Image:
        """The image as 8-bit grey."""
        return Image.fromarray(np.rint(self.display * 255).astype(np.uint8))


def render(anatomy: Anatomy, pose: Pose, findings: Findings, position: str,
           rng: np.random.Generator) -> Radiograph:
    """One view (``position``: PA, AP, LATERAL or LL) of the patient, upright."""
    if position in FRONTAL_POSITIONS:
        density = render_frontal(anatomy, pose, findings, position == "AP", rng)
    else:
        density = render_lateral(anatomy, pose, findings, rng)
    return Radiograph(_to_display(density, anatomy, rng))


def _to_display(density: np.ndarray, anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Film response, exposure, smooth mottle and grain; windowed by percentiles."""
    film = (1 - np.exp(-FILM_GAIN * np.clip(density, 0, None))) ** anatomy.gamma
    shape = film.shape
    film += MOTTLE * smooth_noise(rng, shape, (MOTTLE_CELLS, MOTTLE_CELLS))
    grain = (shape[0] // GRAIN_PIXELS, shape[1] // GRAIN_PIXELS)
    film += anatomy.noise * smooth_noise(rng, shape, grain)
    film += 0.4 * anatomy.noise * rng.standard_normal(shape, dtype=np.float32)
    low, high = np.percentile(film[::PERCENTILE_STRIDE, ::PERCENTILE_STRIDE], DISPLAY_PERCENTILES)
    return ((film - low) / (high - low)).astype(np.float32)
