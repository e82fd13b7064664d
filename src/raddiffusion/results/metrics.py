"""Per-label classification metrics (AUROC, AUPRC, F1) of study predictions, and a text table of them."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from .bootstrap import CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, metric_intervals

METRICS = ("auroc", "auprc", "f1")
CI_SUFFIX = "_ci95"
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
    absent: dict[str, str] | None = None,
    subjects: np.ndarray | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    labels: tuple[str, ...] | None = None,
) -> dict:
    """AUROC, AUPRC and F1 at ``threshold`` of every label over the rows whose ``mask`` is 1, with intervals.

    ``probabilities``, ``targets`` (0/1) and ``mask`` (``None``: every row counts) are ``[S, len(labels)]``.
    A label whose counted rows hold a single class (or none), or that ``absent`` names (name ->
    reason), gets ``absent`` (the reason) instead of metrics and is left out of the means. AUROC and
    AUPRC, per label and mean, carry ``auroc_ci95`` / ``auprc_ci95``: 95 % bootstrap intervals over
    ``resamples`` seeded resamples of the patients ``subjects [S]`` (``None``: each study its own
    patient; ``resamples=0``: no intervals). ``labels`` names the columns (``None``: ``label 1``, …).
    Returns plain Python numbers only (JSON-serialisable).
    """
    if labels is None:
        labels = tuple(f"label {k + 1}" for k in range(np.shape(targets)[1]))
    probabilities, targets, mask = _check_arrays(probabilities, targets, mask, len(labels))
    absent = absent or {}
    per_label = {
        name: _one_label(probabilities[:, k], targets[:, k], mask[:, k], threshold, absent.get(name))
        for k, name in enumerate(labels)
    }
    metrics = {"studies": len(targets), "labels": per_label, "mean": _means(per_label)}
    if resamples > 0:
        _add_intervals(metrics, probabilities, targets, mask, subjects, resamples, seed)
    return metrics


def scored_labels(metrics: dict) -> list[int]:
    """Column indices of the labels that have metrics (not absent)."""
    return [k for k, entry in enumerate(metrics["labels"].values()) if "absent" not in entry]


def _add_intervals(metrics: dict, probabilities, targets, mask, subjects, resamples: int, seed: int) -> None:
    """Put the patient-bootstrap intervals of every scored label and of the means into ``metrics``."""
    scored = scored_labels(metrics)
    if not scored:
        return
    subjects = np.arange(len(targets)) if subjects is None else np.asarray(subjects)
    intervals = metric_intervals(probabilities, targets, mask, subjects, scored, resamples, seed)
    names = list(metrics["labels"])
    for k, values in intervals["labels"].items():
        metrics["labels"][names[k]].update(values)
    metrics["mean"].update(intervals["mean"])
    metrics["bootstrap"] = {"resamples": resamples, "seed": seed, "unit": "patient", "confidence": CONFIDENCE}


def _check_arrays(
    probabilities: np.ndarray, targets: np.ndarray, mask: np.ndarray | None, labels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three arrays as float64 / bool / bool ``[S, labels]`` (``ValueError`` when the shapes disagree)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    mask = np.ones(targets.shape, dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    if probabilities.ndim != 2 or probabilities.shape[1] != labels:
        raise ValueError(f"probabilities must have shape [studies, {labels}], not {list(probabilities.shape)}")
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
INTERVAL_WIDTH = 16
COUNT_WIDTH = 11
INTERVAL_METRICS = ("auroc", "auprc")


def format_table(metrics: dict, title: str) -> str:
    """A fixed-width text table of a :func:`label_metrics` result: one row per label, then the means.

    AUROC and AUPRC are followed by their 95 % interval when the metrics have one.
    """
    name_width = max(len(name) for name in [*metrics["labels"], NAME_HEADER, MEAN_ROW])
    header = f"{NAME_HEADER:<{name_width}}" + "".join(_header(m) for m in METRICS) + f"{COUNT_HEADER:>{COUNT_WIDTH}}"
    rule = "-" * len(header)
    rows = [_label_row(name, entry, name_width) for name, entry in metrics["labels"].items()]
    mean = metrics["mean"]
    mean_row = f"{MEAN_ROW:<{name_width}}" + "".join(_cells(mean, m) for m in METRICS)
    mean_row += f"   over {mean['labels']} of {len(metrics['labels'])} labels"
    lines = [f"{title} ({metrics['studies']} studies)", rule, header, rule, *rows, rule, mean_row]
    if "bootstrap" in metrics:
        lines.append(f"[low, high]: 95 % interval, {metrics['bootstrap']['resamples']} bootstrap resamples of patients")
    return "\n".join(lines) + "\n"


def _header(metric: str) -> str:
    interval = f"{'95% CI':>{INTERVAL_WIDTH}}" if metric in INTERVAL_METRICS else ""
    return f"{metric.upper():>{NUMBER_WIDTH}}{interval}"


def _cells(entry: dict, metric: str) -> str:
    """A metric's column(s): the value, then its interval for AUROC / AUPRC (blank when there is none)."""
    cells = _number(entry.get(metric))
    if metric in INTERVAL_METRICS:
        cells += f"{format_interval(entry.get(metric + CI_SUFFIX)):>{INTERVAL_WIDTH}}"
    return cells


def format_interval(interval: list[float] | None) -> str:
    """``[low, high]`` with DECIMALS decimals, or an empty string when there is no interval."""
    return "" if not interval else f"[{interval[0]:.{DECIMALS}f}, {interval[1]:.{DECIMALS}f}]"


def _label_row(name: str, entry: dict, name_width: int) -> str:
    """One label's table row: its metrics and counts, or its counts and why it has no metrics."""
    total = entry["positives"] + entry["negatives"]
    counts = f"{entry['positives']}/{total}"
    if "absent" in entry:
        dashes = "".join(_cells({}, m) for m in METRICS)
        return f"{name:<{name_width}}{dashes}{counts:>{COUNT_WIDTH}}   {entry['absent']}"
    numbers = "".join(_cells(entry, m) for m in METRICS)
    return f"{name:<{name_width}}{numbers}{counts:>{COUNT_WIDTH}}"


def _number(value: float | None) -> str:
    """A metric right-aligned in its column with 3 decimals (``-`` for ``None``)."""
    text = "-" if value is None else f"{value:.{DECIMALS}f}"
    return f"{text:>{NUMBER_WIDTH}}"
