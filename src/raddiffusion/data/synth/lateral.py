"""The lateral view: anterior to the image left, spine to the right; both lungs overlap."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .anatomy import Anatomy, Pose, grid
from .draw import (
    ATELECTASIS_FILL,
    BONE,
    CONSOLIDATION_FILL,
    EDEMA_FILL,
    EFFUSION_FILL,
    LEAD_RADIUS,
    METAL,
    NODULE_FILL,
    THICKENING_FILL,
    ellipse,
    gauss,
    inside,
    line,
    smooth_noise,
    superellipse,
    tube,
    vessel_texture,
)
from .findings import Findings, Lesion

LATERAL_HEART_TILT = math.radians(-40)
LATERAL_LUNG_AIR = 0.55
LATERAL_VISIBILITY = 0.7  # findings are overlapped by the other lung in a lateral view


@dataclass(frozen=True)
class _LateralFrame:
    """Scalar landmarks of one lateral image."""

    front: float  # x of the anterior chest wall (inner)
    back: float  # x of the posterior chest wall (inner, in front of the spine)
    apex: float
    dome: float
    sulcus: float
    carina: float
    heart_x: float
    heart_y: float
    heart_major: float
    heart_minor: float

    def lung_point(self, lesion: Lesion, dome: float) -> tuple[float, float]:
        x = self.front + (lesion.depth + 1) / 2 * (self.back - self.front)
        y = self.apex + 0.03 + lesion.level * (dome - self.apex)
        return x, y


def _lateral_frame(anatomy: Anatomy, findings: Findings) -> _LateralFrame:
    depth = anatomy.thorax * 0.82
    heart_grow = 1 + 0.25 * findings.cardiomegaly + 1.5 * (anatomy.ctr - 0.42)
    return _LateralFrame(
        front=-depth, back=depth * 0.7, apex=anatomy.apex + 0.01, dome=anatomy.dome - 0.02,
        sulcus=anatomy.sulcus + 0.04, carina=anatomy.apex + 0.22,
        heart_x=-depth * 0.45, heart_y=anatomy.dome - 0.08,
        heart_major=0.19 * heart_grow, heart_minor=0.13 * heart_grow,
    )


def render_lateral(anatomy: Anatomy, pose: Pose, findings: Findings,
                   rng: np.random.Generator) -> np.ndarray:
    """X-ray density of a lateral image: higher is brighter."""
    x, y = grid(anatomy, pose)
    frame = _lateral_frame(anatomy, findings)
    lungs, shell, diaphragm = _lateral_lungs(x, y, frame)
    heart = inside((1 - ellipse(x, y, frame.heart_x, frame.heart_y, frame.heart_major,
                                frame.heart_minor, LATERAL_HEART_TILT)) * 0.1, 0.012)
    upper = findings.mediastinum * gauss(np.square(x - frame.front - 0.08) + np.square(y - frame.carina), 0.06)
    air = lungs * (1 - 0.5 * heart) * (1 - 0.8 * np.clip(upper, 0, 1))
    fill = _lateral_fill(x, y, frame, findings, shell, diaphragm, rng)
    density = _lateral_body(x, y, frame, anatomy) - LATERAL_LUNG_AIR * air * (1 - np.clip(fill, 0, 1))
    trachea = line(x - frame.front * 0.1 - 0.1 * (y - frame.carina), 0.02) * inside(frame.carina - y, 0.02)
    density -= 0.1 * trachea
    density += BONE * _lateral_bones(x, y, frame, anatomy)
    density += METAL * _lateral_devices(x, y, frame, findings)
    return density


def _lateral_body(x, y, frame: _LateralFrame, anatomy: Anatomy):
    back = frame.back + 0.16 + anatomy.soft_tissue
    front = frame.front - anatomy.soft_tissue
    half, center = (back - front) / 2, (back + front) / 2
    ratio = np.clip(1 - np.square((x - center) / half), 0, 1)
    body = inside(half - np.abs(x - center), 0.006) * (0.75 + 0.25 * np.sqrt(ratio))
    arms = gauss(np.square(x - frame.front * 0.4) + 0.6 * np.square(y - frame.apex + 0.05), 0.1)
    return 1.1 * body + 0.45 * arms


def _lateral_lungs(x, y, frame: _LateralFrame):
    base = frame.dome + frame.sulcus
    middle = (frame.apex + base) / 2
    narrowing = 1 - 0.4 * np.square(np.clip((middle - y) / (middle - frame.apex), 0, 1))
    shell = superellipse(x, y, (frame.front + frame.back) / 2, middle,
                         (frame.back - frame.front) / 2 * narrowing, (base - frame.apex) / 2, 2.4)
    position = (x - frame.front) / (frame.back - frame.front)
    diaphragm = frame.dome + 0.03 * np.square(position - 0.35) * 4 + 0.05 * np.clip(position - 0.6, 0, None) * 4
    lungs = inside((1 - shell) * 0.05, 0.006) * inside(diaphragm - y, 0.004)
    lungs *= 1 - 0.25 * inside(y - diaphragm + 0.025, 0.004)
    return lungs, shell, diaphragm


def _lateral_fill(x, y, frame: _LateralFrame, findings: Findings, shell, diaphragm, rng):
    """Lung markings and findings seen from the side: both lungs overlap, so sides merge."""
    hilum_y = frame.carina + 0.05
    radius = np.sqrt(np.square(x - frame.heart_x * 0.2) + np.square(y - hilum_y))
    fill = 0.35 * gauss(radius * radius, 0.04) + 0.1 * np.exp(-radius / 0.15)
    angle = np.arctan2(y - hilum_y, x - frame.heart_x * 0.2)
    fill += 0.3 * vessel_texture(rng, angle, x.shape) * np.exp(-radius / 0.15) * (1 - np.exp(-radius / 0.08))
    for lesion in findings.lesions:
        fill += _lateral_lesion(x, y, frame, lesion, rng)
    fill += LATERAL_VISIBILITY * EDEMA_FILL * findings.edema * gauss(radius * radius, 0.09)
    if max(findings.effusion) > 0:
        fill += _lateral_effusion(x, y, frame, max(findings.effusion))
    if findings.thickening is not None:
        posterior_wall = inside((shell - 0.9) * 0.05) * inside(x - frame.back * 0.3, 0.02)
        fill += LATERAL_VISIBILITY * THICKENING_FILL * findings.thickening.strength * posterior_wall
    if findings.pneumothorax is not None:
        fill -= 0.15 * findings.pneumothorax.strength * inside(frame.apex + 0.12 - y, 0.04)
    return fill


def _lateral_lesion(x, y, frame: _LateralFrame, lesion: Lesion, rng: np.random.Generator):
    cx, cy = frame.lung_point(lesion, frame.dome)
    d2 = np.square(x - cx) + np.square(y - cy)
    if lesion.kind == "nodule":
        return LATERAL_VISIBILITY * NODULE_FILL * inside(lesion.radius - np.sqrt(d2), 0.003)
    if lesion.kind == "band":
        band = line(y - cy - 0.2 * (x - cx), 0.012) * gauss(np.square(x - cx), lesion.radius * 0.6)
        return LATERAL_VISIBILITY * ATELECTASIS_FILL * lesion.strength * band
    texture = 0.6 + 0.4 * smooth_noise(rng, x.shape, (12, 12))
    return LATERAL_VISIBILITY * CONSOLIDATION_FILL * lesion.strength * gauss(d2, lesion.radius) * texture


def _lateral_effusion(x, y, frame: _LateralFrame, severity: float):
    """Fluid in the posterior costophrenic sulcus, its meniscus rising towards the back."""
    position = (x - frame.front) / (frame.back - frame.front)
    level = frame.dome + frame.sulcus - (0.05 + 0.25 * severity) * (frame.dome - frame.apex)
    return 1.2 * EFFUSION_FILL * inside(y - level + 0.08 * np.square(position), 0.015)


def _lateral_bones(x, y, frame: _LateralFrame, anatomy: Anatomy):
    spine_x = frame.back + 0.07 + 0.05 * np.square(y - 0.45)
    vertebrae = 0.75 + 0.25 * np.clip((np.cos(2 * math.pi * y / 0.048) + 0.7) / 1.7, 0, 1) ** 3
    bones = inside(0.035 - np.abs(x - spine_x), 0.004) * vertebrae
    bones += 0.5 * inside(0.025 - np.abs(x - spine_x - 0.06), 0.01)
    sternum = inside(y - frame.apex - 0.12, 0.01) * inside(frame.dome - 0.05 - y, 0.01)
    bones += 1.0 * line(x - frame.front + 0.012 + 0.03 * (y - frame.apex), 0.008) * sternum
    rib_phase = (y - 0.4 * (x - frame.back) - frame.apex) / anatomy.rib_spacing
    ribs = np.clip((np.cos(2 * math.pi * rib_phase) - 0.5) / 0.5, 0, 1)
    behind_heart = inside(x - frame.back * 0.2, 0.05) * inside(spine_x - x, 0.01) * inside(y - frame.apex, 0.02)
    bones += 0.4 * ribs * behind_heart
    return bones


def _lateral_devices(x, y, frame: _LateralFrame, findings: Findings):
    metal = np.zeros_like(x)
    devices = set(findings.devices)
    trachea = frame.front * 0.1 + 0.1 * (y - frame.carina)
    if "ett" in devices:
        metal += tube(x, y, trachea, np.full_like(x, 0.1), -0.2, frame.carina - 0.05, 0.008)
    if "ng" in devices:
        metal += tube(x, y, trachea + 0.06, np.full_like(x, 0.1), -0.2, frame.dome + 0.1, 0.005)
    if "cvc" in devices:
        metal += tube(x, y, trachea - 0.04, np.full_like(x, 0.1), -0.2, frame.carina + 0.04, 0.004)
    if "pacemaker" in devices:
        box = np.maximum(np.abs(x - frame.front + 0.02), 0.5 * np.abs(y - frame.apex - 0.09))
        metal += 1.5 * inside(0.02 - box, 0.004)
    if "ecg" in devices:
        for _, level in findings.leads[:2]:
            ly = frame.apex + level * (frame.dome - frame.apex)
            distance = np.sqrt(np.square(x - frame.front + 0.03) + np.square(y - ly))
            metal += line(distance - LEAD_RADIUS, 0.003)
    return metal


# ============================================================================================
