"""Patient-level bootstrap intervals of AUROC and AUPRC, and paired intervals of the difference of two models.

Patients are drawn with replacement; a study's weight in a resample is how often its patient was drawn.
The metrics of all resamples are computed at once from these integer weights: the scores of a label are
ranked once, and each resample only needs cumulative sums of its weights in that order.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
CHUNK_BYTES = 256 * 2**20  # largest [resamples, studies] float64 weight block held at once
WEIGHT_BYTES = np.dtype(np.float64).itemsize
PERCENT = 100.0
UNIT = "patient"
METRICS = ("auroc", "auprc")


def patient_weights(subjects: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """float64 ``[resamples, studies]``: how often each study is drawn when its patients are drawn with replacement.

    Each resample draws as many patients as there are, from ``np.random.default_rng(seed)`` one resample
    after the other, so the weights do not depend on how the resamples are chunked.
    """
    return np.concatenate(list(_weight_chunks(subjects, resamples, seed)))


def _weight_chunks(subjects: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """:func:`patient_weights` in consecutive blocks of resamples of at most CHUNK_BYTES each."""
    patients, patient_of_study = np.unique(np.asarray(subjects), return_inverse=True)
    studies, count = len(patient_of_study), len(patients)
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, CHUNK_BYTES // (WEIGHT_BYTES * max(studies, 1)))
    for start in range(0, resamples, rows_per_chunk):
        rows = min(rows_per_chunk, resamples - start)
        draws_per_patient = np.stack([_draw_patients(rng, count) for _ in range(rows)])
        yield draws_per_patient[:, patient_of_study].astype(np.float64)


def _draw_patients(rng: np.random.Generator, count: int) -> np.ndarray:
    """How often each of ``count`` patients is drawn in ``count`` draws with replacement (one resample)."""
    return np.bincount(rng.integers(0, count, size=count), minlength=count)


@dataclass(frozen=True)
class Ranking:
    """Where the positives of one label stand among its counted studies, independent of any weights.

    ``positives`` / ``negatives`` are study (column) indices in ascending score order. For each positive,
    ``negatives_below`` / ``negatives_not_above`` count the negatives scored strictly below / at most its score,
    and ``positives_below`` the positives scored strictly below it.
    """

    positives: np.ndarray
    negatives: np.ndarray
    negatives_below: np.ndarray
    negatives_not_above: np.ndarray
    positives_below: np.ndarray


def rank(scores: np.ndarray, truth: np.ndarray, counted: np.ndarray | None = None) -> Ranking:
    """The :class:`Ranking` of one label over the studies where ``counted`` is true (all when ``None``)."""
    scores = np.asarray(scores, dtype=np.float64)
    counted = np.ones(len(scores), bool) if counted is None else np.asarray(counted).astype(bool)
    is_positive = np.asarray(truth) == 1
    order = np.argsort(scores, kind="stable")
    order = order[counted[order]]
    positives, negatives = order[is_positive[order]], order[~is_positive[order]]
    positive_scores, negative_scores = scores[positives], scores[negatives]
    return Ranking(
        positives=positives,
        negatives=negatives,
        negatives_below=np.searchsorted(negative_scores, positive_scores, side="left"),
        negatives_not_above=np.searchsorted(negative_scores, positive_scores, side="right"),
        positives_below=np.searchsorted(positive_scores, positive_scores, side="left"),
    )


def _exclusive_cumsum(weights: np.ndarray) -> np.ndarray:
    """``[B, m] -> [B, m + 1]``: column j holds the sum of the first j columns of ``weights``."""
    sums = np.zeros((len(weights), weights.shape[1] + 1))
    np.cumsum(weights, axis=1, out=sums[:, 1:])
    return sums


def ranked_auroc(ranking: Ranking, weights: np.ndarray) -> np.ndarray:
    """AUROC under each row of ``weights`` ``[B, studies]`` -> ``[B]``; ties count one half; NaN for one class."""
    positive_weights = weights[:, ranking.positives]
    negatives_cumulative = _exclusive_cumsum(weights[:, ranking.negatives])
    positive_total, negative_total = positive_weights.sum(axis=1), negatives_cumulative[:, -1]
    twice_negatives_beaten = (
        negatives_cumulative[:, ranking.negatives_below] + negatives_cumulative[:, ranking.negatives_not_above]
    )
    pairs = positive_total * negative_total
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (positive_weights * twice_negatives_beaten).sum(axis=1) / (2 * pairs)
    return np.where(pairs > 0, auroc, np.nan)


def ranked_average_precision(ranking: Ranking, weights: np.ndarray) -> np.ndarray:
    """Average precision under each row of ``weights`` ``[B, studies]`` -> ``[B]``; NaN without positives.

    Each positive contributes its weight times the precision at its own score's threshold, which equals
    sklearn's sum over distinct thresholds of (R_k - R_{k-1}) * P_k.
    """
    positive_weights = weights[:, ranking.positives]
    positives_cumulative = _exclusive_cumsum(positive_weights)
    negatives_cumulative = _exclusive_cumsum(weights[:, ranking.negatives])
    positive_total, negative_total = positives_cumulative[:, -1:], negatives_cumulative[:, -1:]
    true_positives = positive_total - positives_cumulative[:, ranking.positives_below]
    false_positives = negative_total - negatives_cumulative[:, ranking.negatives_below]
    flagged = true_positives + false_positives
    precision = np.divide(true_positives, flagged, out=np.zeros_like(flagged), where=flagged > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        average_precision = (positive_weights * precision).sum(axis=1) / positive_total[:, 0]
    return np.where(positive_total[:, 0] > 0, average_precision, np.nan)


def weighted_auroc(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one label under each row of ``weights`` ``[B, n]`` -> ``[B]``; ties count one half (as sklearn);
    NaN for a row whose weighted data hold only one class."""
    return ranked_auroc(rank(scores, truth), np.atleast_2d(np.asarray(weights, dtype=np.float64)))


def weighted_average_precision(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision (sklearn's definition, tied scores form one threshold) under each row of ``weights``
    -> ``[B]``; NaN for a row without positive weight."""
    return ranked_average_precision(rank(scores, truth), np.atleast_2d(np.asarray(weights, dtype=np.float64)))


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """``[low, high]`` percentile interval of the finite ``values`` (NaNs ignored); ``None`` if none is finite."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    tail = PERCENT * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, PERCENT - tail])
    return [float(low), float(high)]


def finite_mean(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the finite entries ``[labels, B] -> [B]``; NaN where none is finite."""
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    total = np.where(finite, values, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def resampled_label_mean(values: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Mean over labels of each resample ``[labels, B] -> [B]``, a label undefined in a resample (its positives or
    its negatives all left out) counted at its full-sample value ``point`` ``[labels]``.

    So every resample averages the same labels as the point estimate. Leaving such labels out instead makes the
    mean of a resample skip the rarest labels in about a third of the resamples each: the interval widens and,
    since rare labels have the lowest AUPRC, rises above the point estimate.
    """
    point = np.asarray(point, dtype=np.float64).reshape(-1, 1)
    return finite_mean(np.where(np.isfinite(values), values, point))


def _check_arrays(
    probability_sets: list[np.ndarray], targets: np.ndarray, mask: np.ndarray | None, subjects: np.ndarray,
    labels_scored: list[int],
) -> tuple[np.ndarray, np.ndarray]:
    """``targets`` and ``mask`` (``None``: all ones) as arrays; ``ValueError`` when the shapes disagree."""
    targets = np.asarray(targets)
    mask = np.ones(targets.shape, bool) if mask is None else np.asarray(mask).astype(bool)
    shapes = [np.shape(p) for p in probability_sets] + [targets.shape, mask.shape]
    if len(set(shapes)) != 1 or targets.ndim != 2:
        raise ValueError(f"probabilities, targets and mask must share one [studies, labels] shape, not {shapes}")
    if len(np.asarray(subjects)) != len(targets):
        raise ValueError(f"{len(np.asarray(subjects))} subjects for {len(targets)} studies")
    if not labels_scored:
        raise ValueError("labels_scored is empty")
    return targets, mask


def _rankings(probabilities: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[int]) -> list[Ranking]:
    """The :class:`Ranking` of each scored label of one model."""
    probabilities = np.asarray(probabilities)
    return [rank(probabilities[:, k], targets[:, k], mask[:, k]) for k in labels]


def _metrics_of(rankings: list[Ranking], weights: np.ndarray) -> dict[str, np.ndarray]:
    """``{"auroc", "auprc"}`` -> ``[labels, B]``: each ranked label under each row of ``weights``."""
    return {
        "auroc": np.stack([ranked_auroc(r, weights) for r in rankings]),
        "auprc": np.stack([ranked_average_precision(r, weights) for r in rankings]),
    }


def _point_metrics(rankings: list[Ranking], studies: int) -> dict[str, np.ndarray]:
    """``{"auroc", "auprc"}`` -> ``[labels]``: each ranked label on all ``studies`` (every weight 1)."""
    return {name: values[:, 0] for name, values in _metrics_of(rankings, np.ones((1, studies))).items()}


def _resampled_metrics(
    ranking_sets: list[list[Ranking]], subjects: np.ndarray, resamples: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """:func:`_metrics_of` of each model under the same patient resamples, one weight chunk at a time."""
    per_chunk = [
        [_metrics_of(rankings, weights) for rankings in ranking_sets]
        for weights in _weight_chunks(subjects, resamples, seed)
    ]
    return [
        {name: np.concatenate([chunk[m][name] for chunk in per_chunk], axis=1) for name in METRICS}
        for m in range(len(ranking_sets))
    ]


def metric_intervals(
    probabilities: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray | None,
    subjects: np.ndarray,
    labels_scored: list[int],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Patient-bootstrap 95 % intervals of AUROC and AUPRC per label of ``labels_scored`` and of their mean.

    ``probabilities``, ``targets`` (0/1) and ``mask`` (only rows with mask 1 count for a label) are ``[S, L]``,
    ``subjects`` ``[S]``. A resample's mean is over the same labels as the point estimate
    (:func:`resampled_label_mean`).
    """
    targets, mask = _check_arrays([probabilities], targets, mask, subjects, labels_scored)
    rankings = _rankings(probabilities, targets, mask, labels_scored)
    point = _point_metrics(rankings, len(targets))
    (metrics,) = _resampled_metrics([rankings], subjects, resamples, seed)
    labels = {
        k: {f"{name}_ci95": percentile_interval(values[i]) for name, values in metrics.items()}
        for i, k in enumerate(labels_scored)
    }
    mean = {f"{name}_ci95": percentile_interval(resampled_label_mean(values, point[name]))
            for name, values in metrics.items()}
    return {"labels": labels, "mean": mean, "resamples": resamples, "seed": seed, "unit": UNIT}


def difference_summary(point: float, resampled: np.ndarray) -> dict:
    """A difference, its percentile interval, and whether that interval holds 0 (true when there is none)."""
    interval = percentile_interval(resampled)
    within_noise = interval is None or interval[0] <= 0 <= interval[1]
    return {"difference": point, "ci95": interval, "within_noise": bool(within_noise)}


def paired_difference(
    probabilities_a: np.ndarray,
    probabilities_b: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray | None,
    subjects: np.ndarray,
    labels_scored: list[int],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Mean AUROC of A minus that of B over ``labels_scored``, and its paired patient-bootstrap interval.

    The same resamples score both models. The mean AUPRC difference is reported the same way under ``"auprc"``.
    """
    targets, mask = _check_arrays([probabilities_a, probabilities_b], targets, mask, subjects, labels_scored)
    ranking_sets = [_rankings(p, targets, mask, labels_scored) for p in (probabilities_a, probabilities_b)]
    point_a, point_b = (_point_metrics(rankings, len(targets)) for rankings in ranking_sets)
    resampled_a, resampled_b = _resampled_metrics(ranking_sets, subjects, resamples, seed)
    summaries = {
        name: difference_summary(
            float(finite_mean(point_a[name]) - finite_mean(point_b[name])),
            resampled_label_mean(resampled_a[name], point_a[name])
            - resampled_label_mean(resampled_b[name], point_b[name]),
        )
        for name in METRICS
    }
    return {**summaries["auroc"], "resamples": resamples, "seed": seed, "unit": UNIT, "auprc": summaries["auprc"]}


def mean_auroc_resamples(
    probability_sets: list[np.ndarray],
    targets: np.ndarray,
    mask: np.ndarray | None,
    subjects: np.ndarray,
    labels_scored: list[int],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """Mean AUROC over ``labels_scored`` of each model under the same patient resamples: ``[models, resamples]``."""
    targets, mask = _check_arrays(probability_sets, targets, mask, subjects, labels_scored)
    ranking_sets = [_rankings(p, targets, mask, labels_scored) for p in probability_sets]
    resampled = _resampled_metrics(ranking_sets, subjects, resamples, seed)
    return np.stack([resampled_label_mean(m["auroc"], _point_metrics(rankings, len(targets))["auroc"])
                     for rankings, m in zip(ranking_sets, resampled)])
