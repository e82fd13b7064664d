"""The frontal (PA or AP) view: lungs, heart and mediastinum, bones, findings and devices."""
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
    curve,
    ellipse,
    gauss,
    inside,
    line,
    sigmoid,
    smooth_noise,
    tube,
    vessel_texture,
)
from .findings import Findings, Lesion

LUNG_AIR = 0.72
TRACHEA_AIR = 0.3
AP_HEART_MAGNIFICATION = 1.08
CARDIOMEGALY_CTR_GAIN = (0.07, 0.13)
MEDIASTINUM_WIDENING = 0.7
HEART_TILT = math.radians(36)
APEX_POSITION = 0.42
APEX_DROP = 0.22


@dataclass(frozen=True)
class _Frame:
    """Scalar landmarks of one frontal image."""

    thorax: float
    apex: float
    domes: tuple[float, float]  # image left (patient right), image right
    sulcus: float
    hilum: float
    carina: float
    mediastinum: float
    heart_x: float
    heart_y: float
    heart_major: float
    heart_minor: float

    def dome(self, side: int) -> float:
        return self.domes[0] if side < 0 else self.domes[1]

    def lung_point(self, lesion: Lesion) -> tuple[float, float]:
        medial = self.mediastinum + 0.03
        x = lesion.side * (medial + lesion.lateral * (self.thorax - medial))
        y = self.apex + 0.03 + lesion.level * (self.dome(lesion.side) - self.apex)
        return x, y


def _frontal_frame(anatomy: Anatomy, findings: Findings, ap: bool) -> _Frame:
    ctr = anatomy.ctr + findings.cardiomegaly * float(np.interp(findings.cardiomegaly, (0, 1), CARDIOMEGALY_CTR_GAIN))
    ctr *= AP_HEART_MAGNIFICATION if ap else 1.0
    heart_half = ctr * anatomy.thorax
    minor = 0.105 + 0.03 * findings.cardiomegaly
    major = math.sqrt(max(heart_half**2 - (minor * math.sin(HEART_TILT))**2, 1e-4)) / math.cos(HEART_TILT)
    dome = anatomy.dome
    return _Frame(
        thorax=anatomy.thorax, apex=anatomy.apex, domes=(dome, dome + 0.02), sulcus=anatomy.sulcus,
        hilum=anatomy.apex + 0.3 * (dome - anatomy.apex) + 0.05,
        carina=anatomy.apex + 0.22,
        mediastinum=anatomy.mediastinum * (1 + MEDIASTINUM_WIDENING * findings.mediastinum),
        heart_x=heart_half * 0.42, heart_y=dome - 0.075, heart_major=major, heart_minor=minor,
    )


def render_frontal(anatomy: Anatomy, pose: Pose, findings: Findings, ap: bool,
                   rng: np.random.Generator) -> np.ndarray:
    """X-ray density of a frontal image (PA, or AP with ``ap``): higher is brighter."""
    x, y = grid(anatomy, pose)
    frame = _frontal_frame(anatomy, findings, ap)
    lungs, pleura = _frontal_lungs(x, y, frame)
    soft = _frontal_mediastinum(x, y, frame)
    air = lungs * (1 - soft)
    fill = _lung_markings(x, y, frame, anatomy.marking_seed, findings.pneumothorax, pleura)
    fill += _frontal_opacities(x, y, frame, findings, pleura, rng)
    density = _frontal_body(x, y, frame, anatomy) - LUNG_AIR * air * (1 - np.clip(fill, 0, 1))
    density -= _frontal_air_spaces(x, y, frame, findings, pleura, air)
    density += 0.08 * soft
    density += BONE * _frontal_bones(x, y, frame, anatomy, findings.fracture, ap)
    density += METAL * _frontal_devices(x, y, frame, findings)
    return density


def _frontal_body(x, y, frame: _Frame, anatomy: Anatomy):
    half = frame.thorax + anatomy.soft_tissue + 0.2 * inside(frame.apex + 0.08 - y, 0.04)
    ratio = np.clip(1 - np.square(x / half), 0, 1)
    body = inside(half - np.abs(x)) * (0.6 + 0.4 * np.sqrt(ratio))
    if anatomy.sex == "F":
        for side in (-1, 1):
            d2 = np.square(x - side * frame.thorax * 0.6) + np.square(y - frame.domes[0] + 0.03) * 1.5
            body += 0.12 * inside(0.16 - np.sqrt(d2), 0.02)
    return body


def _frontal_lungs(x, y, frame: _Frame):
    """Soft mask of both lungs and the depth of each pixel below the outer (parietal) pleura."""
    dx = np.abs(x)
    apex_x = frame.thorax * APEX_POSITION
    lateral = np.clip((dx - apex_x) / (frame.thorax - apex_x), 0, None)
    medial = np.clip((apex_x - dx) / apex_x, 0, None)
    top = frame.apex + APEX_DROP * np.square(lateral) + 2 * APEX_DROP * np.square(medial)
    wall = frame.thorax * (1 - 0.05 * np.square((y - frame.domes[0]) / 0.4))
    pleura = np.minimum(wall - dx, 0.7 * (y - top))
    left = x < 0
    side = np.where(left, np.float32(-1), np.float32(1))
    dome = np.where(left, np.float32(frame.domes[0]), np.float32(frame.domes[1]))
    diaphragm = dome + frame.sulcus * np.square((dx - frame.thorax * 0.45) / (frame.thorax * 0.55))
    lungs = inside(pleura) * inside(diaphragm - y)
    return lungs * inside(side * x, 0.002), pleura


def _frontal_mediastinum(x, y, frame: _Frame):
    half = frame.mediastinum * (0.85 + 0.5 * np.clip((y - frame.carina) / 0.2, 0, 1))
    knob = 0.03 * gauss(np.square(y - frame.apex - 0.17), 0.025)
    trunk = 0.03 * inside(y - frame.apex - 0.2, 0.03)
    band = inside(x + half) * inside(half + np.maximum(knob, trunk) - x)
    heart = inside((1 - ellipse(x, y, frame.heart_x, frame.heart_y, frame.heart_major,
                                frame.heart_minor, HEART_TILT)) * 0.02)
    return np.maximum(band, heart)


def _lung_markings(x, y, frame: _Frame, seed: int, pneumothorax: Lesion | None, pleura):
    """Branching vessels (ridges of smooth noise), densest at the hila and fading outwards."""
    rng = np.random.default_rng(seed)
    dx = np.abs(x) - (frame.mediastinum + 0.03)
    dy = y - frame.hilum
    radius = np.sqrt(dx * dx + dy * dy)
    angle = np.arctan2(dy, dx + 0.06) + 0.6 * np.sign(x)
    taper = np.exp(-radius / 0.15) * (1 - np.exp(-radius / 0.04))
    vessels = vessel_texture(rng, angle, x.shape) * taper * 0.4
    vessels += 0.15 * np.exp(-radius / 0.2)
    vessels += 0.35 * gauss(dx * dx + dy * dy * 0.4, 0.03)
    if pneumothorax is not None:
        vessels *= 1 - _pneumothorax_space(x, y, frame, pneumothorax, pleura)
    return vessels


def _pneumothorax_gap(lesion: Lesion) -> float:
    return 0.012 + 0.05 * lesion.radius * lesion.strength


def _pneumothorax_space(x, y, frame: _Frame, lesion: Lesion, pleura):
    upper = inside(frame.hilum + 0.12 * lesion.strength - y, 0.03)
    return inside(_pneumothorax_gap(lesion) - pleura, 0.002) * upper * inside(lesion.side * x)


def _frontal_opacities(x, y, frame: _Frame, findings: Findings, pleura, rng: np.random.Generator):
    fill = np.zeros_like(x)
    for lesion in findings.lesions:
        fill += _frontal_lesion(x, y, frame, lesion, rng)
    if findings.edema > 0:
        for side in (-1, 1):
            d2 = np.square(x - side * (frame.mediastinum + 0.06)) + 0.6 * np.square(y - frame.hilum - 0.03)
            fill += EDEMA_FILL * findings.edema * gauss(d2, 0.08)
    for side, severity in zip((-1, 1), findings.effusion):
        if severity > 0:
            fill += _effusion(x, y, frame, side, severity)
    if findings.thickening is not None:
        lesion = findings.thickening
        _, level_y = frame.lung_point(lesion)
        band = inside(0.004 + 0.15 * lesion.radius - pleura, 0.002) * inside(lesion.side * x)
        fill += THICKENING_FILL * lesion.strength * band * gauss(np.square(y - level_y), 0.07)
    return fill


def _frontal_lesion(x, y, frame: _Frame, lesion: Lesion, rng: np.random.Generator):
    cx, cy = frame.lung_point(lesion)
    if lesion.kind == "nodule":
        distance = np.sqrt(np.square(x - cx) + np.square(y - cy))
        return NODULE_FILL * inside(lesion.radius - distance, 0.003)
    if lesion.kind == "band":
        along = (x - cx) * math.cos(lesion.angle) + (y - cy) * math.sin(lesion.angle)
        across = (y - cy) * math.cos(lesion.angle) - (x - cx) * math.sin(lesion.angle)
        thickness = 0.012 + 0.015 * lesion.strength
        return ATELECTASIS_FILL * lesion.strength * line(across, thickness) * gauss(along**2, lesion.radius * 0.5)
    texture = 0.6 + 0.4 * smooth_noise(rng, x.shape, (12, 12))
    blob = gauss(np.square(x - cx) + np.square(y - cy), lesion.radius)
    if lesion.kind == "wedge":
        blob = np.maximum(blob, inside(y - cy) * gauss(np.square(x - cx), lesion.radius * 0.6))
    return CONSOLIDATION_FILL * lesion.strength * blob * texture


def _effusion(x, y, frame: _Frame, side: int, severity: float):
    base = frame.dome(side) + frame.sulcus
    level = base - (0.02 + 0.3 * severity * severity) * (base - frame.apex)
    lateral = np.clip((side * x - frame.mediastinum) / frame.thorax, 0, 1.2)
    surface = level - (0.05 + 0.08 * severity) * np.square(lateral)
    denser_below = 1 + 0.5 * inside(y - surface - 0.05, 0.03)
    return EFFUSION_FILL * denser_below * inside(y - surface, 0.012) * inside(side * x)


def _frontal_air_spaces(x, y, frame: _Frame, findings: Findings, pleura, air):
    """Air outside the lungs: trachea, main bronchi, gastric bubble, pneumothorax rim."""
    trachea = line(x, 0.014) * inside(frame.carina - y, 0.01)
    for side in (-1, 1):
        along = side * x * 0.8 + (y - frame.carina) * 0.6
        across = (y - frame.carina) * 0.8 - side * x * 0.6
        trachea += line(across, 0.01) * inside(along, 0.005) * inside(0.07 - along, 0.01)
    bubble = gauss(np.square(x - frame.thorax * 0.45) + 2 * np.square(y - frame.domes[1] - 0.05), 0.03)
    spaces = TRACHEA_AIR * np.clip(trachea, 0, 1) + 0.25 * bubble
    if findings.pneumothorax is not None:
        lesion = findings.pneumothorax
        space = _pneumothorax_space(x, y, frame, lesion, pleura)
        edge = line(pleura - _pneumothorax_gap(lesion), 0.0022) * inside(frame.hilum + 0.1 - y, 0.03)
        edge *= inside(lesion.side * x)
        spaces += (0.14 * space - 0.3 * edge) * lesion.strength * air
    return spaces


def _frontal_bones(x, y, frame: _Frame, anatomy: Anatomy, fracture: Lesion | None, ap: bool):
    bones = _ribs(x, y, frame, anatomy.rib_spacing, fracture)
    spine = inside(0.032 - np.abs(x), 0.006) * (0.8 + 0.2 * np.cos(2 * math.pi * y / 0.045))
    bones += 0.8 * spine
    dx = np.abs(x)
    clavicle_y = frame.apex + 0.07 - 0.3 * dx + 0.3 * dx * dx
    bones += 1.0 * line(y - clavicle_y, 0.017) * inside(dx - 0.03, 0.01) * inside(frame.thorax + 0.08 - dx, 0.01)
    head = np.sqrt(np.square(dx - frame.thorax - 0.12) + np.square(y - frame.apex - 0.02))
    bones += 1.5 * inside(0.075 - head, 0.006)
    scapula_x = frame.thorax * (0.8 if ap else 0.98)
    bones += 0.4 * line(dx - scapula_x + 0.3 * (y - frame.apex), 0.006) * inside(frame.hilum - y, 0.03)
    return bones


def _ribs(x, y, frame: _Frame, spacing: float, fracture: Lesion | None):
    dx = np.abs(x)
    start = frame.apex - 0.03
    phase = (_rib_curve(y, dx) - start) / spacing
    break_gap = 0.0
    if fracture is not None:
        bx = fracture.side * (0.1 + fracture.lateral * (frame.thorax - 0.12))
        rib = 2 + round(fracture.level * 5)
        by = start + rib * spacing - _rib_curve(0.0, abs(bx))
        near = gauss(np.square(y - by), 0.025) * inside(fracture.side * x)
        phase = phase + 0.3 * fracture.strength * near * inside(fracture.side * (x - bx), 0.002)
        break_gap = line(x - bx, 0.003 + 0.003 * fracture.strength) * near
    wave = np.cos(2 * math.pi * phase)
    posterior = np.clip((wave - 0.1) / 0.9, 0, 1) ** 0.6 * (1 - break_gap)
    posterior *= inside(phase - 0.4, 0.1) * inside(10.5 - phase, 0.1)
    anterior_phase = (y + 0.5 * dx - frame.apex - 0.14) / (spacing * 1.2)
    anterior = np.clip((np.cos(2 * math.pi * anterior_phase) - 0.5) / 0.5, 0, 1)
    anterior *= inside(dx - 0.12, 0.02) * inside(anterior_phase, 0.1) * inside(5.5 - anterior_phase, 0.1)
    cage = inside(dx - 0.04, 0.008) * inside(frame.thorax + 0.015 - dx, 0.004)
    cage *= 1 - 0.75 * inside(y - frame.domes[0] - frame.sulcus + 0.04, 0.03)
    return (0.5 * posterior + 0.25 * anterior) * cage


def _rib_curve(y, dx):
    """Posterior ribs are the level sets of this function: flat at the spine, curving down laterally."""
    return y + 0.3 * dx - 2.4 * dx * dx


def _frontal_devices(x, y, frame: _Frame, findings: Findings):
    metal = np.zeros_like(x)
    devices = set(findings.devices)
    top = -0.2
    if "ett" in devices:
        metal += tube(x, y, 0.002 * np.ones_like(x), 0 * x, top, frame.carina - 0.05, 0.008)
    if "ng" in devices:
        turn = sigmoid((y - frame.domes[1] - 0.03) / 0.02)
        path = 0.02 + 0.12 * turn
        slope = 0.12 * turn * (1 - turn) / 0.02
        metal += tube(x, y, path, slope, top, frame.domes[1] + 0.12, 0.005)
    if "cvc" in devices:
        path = -0.06 + 0.03 * np.clip((y - frame.apex) / (frame.carina - frame.apex), 0, 1)
        metal += tube(x, y, path, np.full_like(x, 0.03 / (frame.carina - frame.apex)), top,
                      frame.carina + 0.04, 0.004)
    if "pacemaker" in devices:
        metal += _pacemaker(x, y, frame)
    if "ecg" in devices:
        metal += _ecg_leads(x, y, frame, findings.leads)
    return metal


def _pacemaker(x, y, frame: _Frame):
    box_x, box_y = frame.thorax * 0.7, frame.apex + 0.09
    box = inside(0.035 - np.maximum(np.abs(x - box_x), 0.8 * np.abs(y - box_y)), 0.004)
    t = np.clip((y - box_y) / (frame.heart_y - box_y), 0, 1)
    path = box_x + (frame.heart_x - box_x) * np.sin(t * math.pi / 2)
    slope = (frame.heart_x - box_x) * math.pi / 2 * np.cos(t * math.pi / 2) / (frame.heart_y - box_y)
    return 1.5 * box + curve(x, y, path, slope, box_y, frame.heart_y, 0.003)


def _ecg_leads(x, y, frame: _Frame, leads: tuple[tuple[float, float], ...]):
    metal = np.zeros_like(x)
    for side_fraction, level in leads:
        lx = side_fraction * (frame.thorax + 0.04)
        ly = frame.apex + level * (frame.domes[0] - frame.apex)
        distance = np.sqrt(np.square(x - lx) + np.square(y - ly))
        metal += line(distance - LEAD_RADIUS, 0.003) + 0.6 * inside(LEAD_RADIUS * 0.4 - distance, 0.002)
        outward = np.sign(side_fraction) or 1.0
        wire_y = ly + 0.04 * np.sin((x - lx) * 12 + level * 9) * np.abs(x - lx) * 6
        metal += 0.6 * line(y - wire_y, 0.0025) * inside(outward * (x - lx) - LEAD_RADIUS, 0.002)
    return metal
