"""A study's CheXpert values, drawn from the real joint distribution in ``chexpert_label_stats.json``."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ..labels import CHEXPERT_LABELS

LABEL_STATS_PACKAGE = "raddiffusion.data"
LABEL_STATS_RESOURCE = "chexpert_label_stats.json"
NOT_MENTIONED = -9
TOP_VECTOR_PROBABILITY = 0.8
NEGATIVE_MENTION_PROBABILITY = 0.12
PRESENT_VALUES = (1.0, -1.0)


@dataclass(frozen=True)
class LabelStats:
    """The most frequent label vectors with their probabilities, and per-label prevalences."""

    vectors: np.ndarray  # (n, 14) with NaN for not mentioned
    probabilities: np.ndarray
    positive: np.ndarray
    uncertain: np.ndarray


@functools.lru_cache(maxsize=1)
def label_stats() -> LabelStats:
    """The packaged label statistics (loaded once)."""
    text = resources.files(LABEL_STATS_PACKAGE).joinpath(LABEL_STATS_RESOURCE).read_text()
    raw = json.loads(text)
    if tuple(raw["labels"]) != CHEXPERT_LABELS:
        raise ValueError(f"{LABEL_STATS_RESOURCE} label order differs from raddiffusion CHEXPERT_LABELS")
    vectors = np.array([row["vector"] for row in raw["top_label_vectors"]], dtype=np.float64)
    vectors[vectors == NOT_MENTIONED] = np.nan
    counts = np.array([row["count"] for row in raw["top_label_vectors"]], dtype=np.float64)
    positive = np.array([raw["prevalence_positive_only"][name] for name in CHEXPERT_LABELS])
    uncertain = np.array([raw["prevalence_u_ones"][name] for name in CHEXPERT_LABELS]) - positive
    return LabelStats(vectors, counts / counts.sum(), positive, np.clip(uncertain, 0, None))


def sample_labels(rng: np.random.Generator) -> tuple[float, ...]:
    """One study's CheXpert values: 1.0, 0.0, -1.0 or NaN (not mentioned)."""
    stats = label_stats()
    if rng.random() < TOP_VECTOR_PROBABILITY:
        vector = stats.vectors[rng.choice(len(stats.vectors), p=stats.probabilities)]
    else:
        vector = _independent_labels(rng, stats)
    return tuple(float(v) for v in vector)


def is_present(value: float) -> bool:
    """Whether a layout without uncertain values calls the finding present: positive or uncertain (U-ones)."""
    return value in PRESENT_VALUES


def _independent_labels(rng: np.random.Generator, stats: LabelStats) -> np.ndarray:
    draw = rng.random(len(CHEXPERT_LABELS))
    vector = np.full(len(CHEXPERT_LABELS), np.nan)
    vector[draw < stats.positive + stats.uncertain] = -1.0
    vector[draw < stats.positive] = 1.0
    negative = np.isnan(vector) & (rng.random(len(CHEXPERT_LABELS)) < NEGATIVE_MENTION_PROBABILITY)
    vector[negative] = 0.0
    no_finding = CHEXPERT_LABELS.index("No Finding")
    findings = np.delete(vector, [no_finding, CHEXPERT_LABELS.index("Support Devices")])
    vector[no_finding] = np.nan if np.any((findings == 1) | (findings == -1)) else 1.0
    return vector
