"""What a study's CheXpert labels look like: the findings the renderer draws, and how severe."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..labels import CHEXPERT_LABELS

UNCERTAIN_VISIBLE_PROBABILITY = 0.5
INVISIBLE_POSITIVE_PROBABILITY = 0.12
POSITIVE_SEVERITY = (0.15, 1.0)
UNCERTAIN_SEVERITY = (0.2, 0.55)
OPACITY_LABELS = ("Atelectasis", "Consolidation", "Edema", "Pneumonia", "Lung Lesion")
LUNG_OPACITY_ONLY_STRENGTH = 0.8
DEVICE_PROBABILITY = {"ett": 0.5, "ng": 0.5, "cvc": 0.55, "ecg": 0.6, "pacemaker": 0.12}


@dataclass(frozen=True)
class Lesion:
    """A localised finding: side (-1 image left = patient right, +1), position inside the lung
    (lateral 0 medial .. 1 lateral, level 0 apex .. 1 base, depth -1 anterior .. 1 posterior),
    size (``radius``, image heights for blobs; a relative extent for pleural findings) and
    severity (``strength``, 0..1)."""

    side: int
    lateral: float
    level: float
    depth: float
    radius: float
    strength: float
    kind: str = "patchy"
    angle: float = 0.0


@dataclass(frozen=True)
class Findings:
    """Everything abnormal drawn into one study's images (severities 0..1, 0 = absent)."""

    cardiomegaly: float = 0.0
    mediastinum: float = 0.0
    edema: float = 0.0
    effusion: tuple[float, float] = (0.0, 0.0)
    lesions: tuple[Lesion, ...] = ()
    pneumothorax: Lesion | None = None
    thickening: Lesion | None = None
    fracture: Lesion | None = None
    devices: tuple[str, ...] = ()
    leads: tuple[tuple[float, float], ...] = ()


def findings_from_labels(labels: tuple[float, ...], rng: np.random.Generator) -> Findings:
    """Draw the findings of a study with these CheXpert values (in ``CHEXPERT_LABELS`` order)."""
    severity = {name: _visible_severity(value, rng) for name, value in zip(CHEXPERT_LABELS, labels)}
    lesions = _opacity_lesions(severity, rng)
    return Findings(
        cardiomegaly=severity["Cardiomegaly"],
        mediastinum=severity["Enlarged Cardiomediastinum"],
        edema=severity["Edema"],
        effusion=_effusion_sides(severity["Pleural Effusion"], rng),
        lesions=lesions,
        pneumothorax=_located(rng, severity["Pneumothorax"], radius=(0.35, 0.75)),
        thickening=_located(rng, severity["Pleural Other"], radius=(0.04, 0.1)),
        fracture=_located(rng, severity["Fracture"], radius=(0.3, 0.8)),
        devices=_devices(severity["Support Devices"], rng),
        leads=tuple((float(rng.uniform(-1, 1)), float(rng.uniform(0.05, 0.6))) for _ in range(4)),
    )


def _visible_severity(value: float, rng: np.random.Generator) -> float:
    """Severity of the drawn finding for a label value (0 when nothing is drawn)."""
    if value == 1.0 and rng.random() >= INVISIBLE_POSITIVE_PROBABILITY:
        return float(rng.uniform(*POSITIVE_SEVERITY))
    if value == -1.0 and rng.random() < UNCERTAIN_VISIBLE_PROBABILITY:
        return float(rng.uniform(*UNCERTAIN_SEVERITY))
    return 0.0


def _located(rng: np.random.Generator, severity: float, radius: tuple[float, float],
             kind: str = "patchy", level: tuple[float, float] = (0.15, 0.85)) -> Lesion | None:
    if severity <= 0:
        return None
    return Lesion(side=int(rng.choice((-1, 1))), lateral=float(rng.uniform(0.25, 0.85)),
                  level=float(rng.uniform(*level)), depth=float(rng.uniform(-0.8, 0.8)),
                  radius=float(rng.uniform(*radius)), strength=severity, kind=kind,
                  angle=float(rng.uniform(-0.45, 0.45)))


def _effusion_sides(severity: float, rng: np.random.Generator) -> tuple[float, float]:
    if severity <= 0:
        return (0.0, 0.0)
    other = severity * rng.uniform(0.3, 1.0) if rng.random() < 0.45 else 0.0
    return (severity, other) if rng.random() < 0.5 else (other, severity)


def _opacity_lesions(severity: dict[str, float], rng: np.random.Generator) -> tuple[Lesion, ...]:
    lesions = []
    for name in ("Consolidation", "Pneumonia"):
        lesion = _located(rng, severity[name], radius=(0.05, 0.1), level=(0.35, 0.9))
        lesions += [lesion] if lesion else []
    atelectasis = severity["Atelectasis"]
    if atelectasis > 0:
        kind = "band" if rng.random() < 0.7 else "wedge"
        lesions.append(_located(rng, atelectasis, radius=(0.1, 0.2), kind=kind, level=(0.6, 0.9)))
    nodule = _located(rng, severity["Lung Lesion"], radius=(0.012, 0.03), kind="nodule")
    lesions += [nodule] if nodule else []
    other_opacity = any(severity[name] > 0 for name in OPACITY_LABELS)
    if severity["Lung Opacity"] > 0 and not other_opacity:
        lesions.append(_located(rng, severity["Lung Opacity"] * LUNG_OPACITY_ONLY_STRENGTH, radius=(0.05, 0.1),
                                level=(0.3, 0.9)))
    return tuple(lesions)


def _devices(severity: float, rng: np.random.Generator) -> tuple[str, ...]:
    if severity <= 0:
        return ()
    chosen = tuple(name for name, p in DEVICE_PROBABILITY.items() if rng.random() < p)
    return chosen or (str(rng.choice(list(DEVICE_PROBABILITY))),)
