"""Per-label classification metrics (AUROC, AUPRC, F1) of study predictions, and a text table of them."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from ..data.labels import LABELS, NUM_LABELS

METRICS = ("auroc", "auprc", "f1")
DEFAULT_THRESHOLD = 0.5
DECIMALS = 3
NO_STUDIES = "no studies"
NO_POSITIVES = "no positive studies"
NO_NEGATIVES = "no negative studies"


def format_metric(value: float | None) -> str:
    """A metric with DECIMALS decimals, or ``n/a`` when it could not be computed."""
    return "n/a" if value is None else f"{value:.{DECIMALS}f}"


def label_metrics(
    probabilities: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict:
    """AUROC, AUPRC and F1 at ``threshold`` of every label over the rows whose ``mask`` is 1.

    ``probabilities``, ``targets`` (0/1) and ``mask`` (``None``: every row counts) are ``[S, 14]``.
    A label whose counted rows hold a single class (or none) gets ``absent`` (the reason) instead of
    metrics and is left out of the means. Returns plain Python numbers only (JSON-serialisable).
    """
    return metrics_with_absent(probabilities, targets, mask, threshold)


def metrics_with_absent(
    probabilities: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    absent: dict[str, str] | None = None,
) -> dict:
    """:func:`label_metrics`, with the labels of ``absent`` (name -> reason) reported absent whatever the data."""
    probabilities, targets, mask = _check_arrays(probabilities, targets, mask)
    absent = absent or {}
    per_label = {
        name: _one_label(probabilities[:, k], targets[:, k], mask[:, k], threshold, absent.get(name))
        for k, name in enumerate(LABELS)
    }
    return {"studies": len(targets), "labels": per_label, "mean": _means(per_label)}


def _check_arrays(
    probabilities: np.ndarray, targets: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three arrays as float64 / bool / bool ``[S, 14]`` (``ValueError`` when the shapes disagree)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    mask = np.ones(targets.shape, dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    if probabilities.ndim != 2 or probabilities.shape[1] != NUM_LABELS:
        raise ValueError(f"probabilities must have shape [studies, {NUM_LABELS}], not {list(probabilities.shape)}")
    if targets.shape != probabilities.shape or mask.shape != probabilities.shape:
        raise ValueError(
            f"probabilities {list(probabilities.shape)}, targets {list(targets.shape)} and "
            f"mask {list(mask.shape)} must have the same shape"
        )
    return probabilities, targets.astype(bool), mask


def _one_label(
    scores: np.ndarray, truth: np.ndarray, counted: np.ndarray, threshold: float, reason: str | None
) -> dict:
    """The metrics of one label column, or its counts and why it has none."""
    scores, truth = scores[counted], truth[counted]
    positives = int(truth.sum())
    counts = {"positives": positives, "negatives": int(len(truth) - positives)}
    reason = reason or _absent_reason(counts)
    if reason:
        return {"absent": reason, **counts}
    return {
        "auroc": float(roc_auc_score(truth, scores)),
        "auprc": float(average_precision_score(truth, scores)),
        "f1": float(f1_score(truth, scores >= threshold, zero_division=0)),
        **counts,
    }


def _absent_reason(counts: dict[str, int]) -> str | None:
    """Why a label with these counts cannot be scored, or ``None`` when it can."""
    if counts["positives"] + counts["negatives"] == 0:
        return NO_STUDIES
    if counts["positives"] == 0:
        return NO_POSITIVES
    if counts["negatives"] == 0:
        return NO_NEGATIVES
    return None


def _means(per_label: dict[str, dict]) -> dict:
    """Each metric's mean over the labels that have metrics (``None`` when none has), and their number."""
    scored = [entry for entry in per_label.values() if "absent" not in entry]
    means = {name: (float(np.mean([e[name] for e in scored])) if scored else None) for name in METRICS}
    return {**means, "labels": len(scored)}


NAME_HEADER, COUNT_HEADER, MEAN_ROW = "label", "pos/total", "mean"
NUMBER_WIDTH = 7
COUNT_WIDTH = 11


def format_table(metrics: dict, title: str) -> str:
    """A fixed-width text table of a :func:`label_metrics` result: one row per label, then the means."""
    name_width = max(len(name) for name in [*metrics["labels"], NAME_HEADER, MEAN_ROW])
    header = f"{NAME_HEADER:<{name_width}}" + "".join(f"{m.upper():>{NUMBER_WIDTH}}" for m in METRICS)
    header += f"{COUNT_HEADER:>{COUNT_WIDTH}}"
    rule = "-" * len(header)
    rows = [_label_row(name, entry, name_width) for name, entry in metrics["labels"].items()]
    mean = metrics["mean"]
    mean_row = f"{MEAN_ROW:<{name_width}}" + "".join(_number(mean[m]) for m in METRICS)
    mean_row += f"   over {mean['labels']} of {len(metrics['labels'])} labels"
    lines = [f"{title} ({metrics['studies']} studies)", rule, header, rule, *rows, rule, mean_row]
    return "\n".join(lines) + "\n"


def _label_row(name: str, entry: dict, name_width: int) -> str:
    """One label's table row: its metrics and counts, or its counts and why it has no metrics."""
    total = entry["positives"] + entry["negatives"]
    counts = f"{entry['positives']}/{total}"
    if "absent" in entry:
        dashes = "".join(_number(None) for _ in METRICS)
        return f"{name:<{name_width}}{dashes}{counts:>{COUNT_WIDTH}}   {entry['absent']}"
    numbers = "".join(_number(entry[m]) for m in METRICS)
    return f"{name:<{name_width}}{numbers}{counts:>{COUNT_WIDTH}}"


def _number(value: float | None) -> str:
    """A metric right-aligned in its column with 3 decimals (``-`` for ``None``)."""
    text = "-" if value is None else f"{value:.{DECIMALS}f}"
    return f"{text:>{NUMBER_WIDTH}}"
