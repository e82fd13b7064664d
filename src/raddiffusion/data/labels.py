"""The 14 CheXpert observations (MIMIC-CXR's and CheXpert's label set) and the label policies for
uncertain findings. Other datasets bring their own label names (``Store.label_names``)."""
from __future__ import annotations

import numpy as np

CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
POLICIES = ("ones", "zeros", "ignore")

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0


def apply_label_policy(raw: np.ndarray, policy: str = "ones") -> tuple[np.ndarray, np.ndarray]:
    """Turn raw label values (1, 0, -1, NaN = not mentioned) into binary targets and a mask.

    ``ones``: uncertain counts as positive; ``zeros``: uncertain counts as negative;
    ``ignore``: uncertain is masked out (mask 0). Not mentioned is negative under every policy.
    Returns ``(targets float32, mask float32)`` of the same shape as ``raw``.
    """
    if policy not in POLICIES:
        raise ValueError(f"label policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    raw = np.asarray(raw, dtype=np.float32)
    uncertain = raw == UNCERTAIN
    targets = (raw == POSITIVE).astype(np.float32)
    mask = np.ones_like(targets)
    if policy == "ones":
        targets[uncertain] = 1.0
    elif policy == "ignore":
        mask[uncertain] = 0.0
    return targets, mask
