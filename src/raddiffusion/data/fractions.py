"""The label-efficient protocol: seeded, nested, patient-level subsets of the labelled train studies."""
from __future__ import annotations

import math

import numpy as np

NO_POSITIVE_IN_TRAIN = "no positive study in the labelled train split"


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float in (0, 1] (``ValueError`` naming it otherwise)."""
    if not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0 or math.isnan(fraction):
        raise ValueError(f"label fraction must be in (0, 1], not {fraction!r}")
    return float(fraction)


def label_fraction_subset(
    subjects: np.ndarray, targets: np.ndarray, mask: np.ndarray, fraction: float, seed: int, labels: tuple[str, ...]
) -> tuple[np.ndarray, dict[str, str]]:
    """Positions of the studies kept at ``fraction`` of the labelled train studies, and the labels left absent.

    Patients are put in one seeded random order; the subset is the shortest prefix of that order
    holding at least ``fraction`` of the studies, plus, for every label, the first patient in that
    order with a positive study. So smaller fractions are nested inside larger ones (same seed), all
    studies of a patient go together, and every label positive somewhere in the full set has a
    positive in every subset. A label with no positive in the full set is returned as absent
    (name -> reason). ``targets`` and ``mask`` are ``[S, labels]`` under the label policy in use.
    """
    fraction = check_fraction(fraction)
    subjects = np.asarray(subjects)
    patients, patient_of_study = np.unique(subjects, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(patients))
    rank = np.empty(len(patients), dtype=np.int64)
    rank[order] = np.arange(len(patients))
    studies_per_patient = np.bincount(rank[patient_of_study], minlength=len(patients))
    wanted = math.ceil(fraction * len(subjects))
    prefix = int(np.searchsorted(np.cumsum(studies_per_patient), wanted)) + 1
    keep = rank < prefix
    positive = (np.asarray(targets) > 0) & (np.asarray(mask) > 0)
    absent = {}
    for k, name in enumerate(labels):
        patient_ranks = rank[patient_of_study[positive[:, k]]]
        if patient_ranks.size == 0:
            absent[name] = NO_POSITIVE_IN_TRAIN
        else:
            keep[order[patient_ranks.min()]] = True
    return np.flatnonzero(keep[patient_of_study]), absent
