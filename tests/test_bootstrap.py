"""Patient bootstrap intervals: weighted metrics equal sklearn's, resampling keeps patients whole, intervals cover."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from raddiffusion.results import bootstrap as bs

TOLERANCE = 1e-12


def tied_scores(rng: np.random.Generator, studies: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to one decimal (many ties, mixed classes within ties) and truth related to them."""
    scores = np.round(rng.random(studies), 1)
    truth = (rng.random(studies) < 0.2 + 0.6 * scores).astype(int)
    return scores, truth


def multilabel(rng: np.random.Generator, studies: int, labels: int, studies_per_patient: int = 3):
    """Probabilities, targets, a mask with holes and subjects of several studies each."""
    targets = (rng.random((studies, labels)) < 0.3).astype(int)
    probabilities = np.clip(0.3 * targets + rng.random((studies, labels)), 0, 1)
    mask = rng.random((studies, labels)) < 0.9
    subjects = np.arange(studies) // studies_per_patient
    return probabilities, targets, mask, subjects


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unit_weights_equal_sklearn(seed):
    scores, truth = tied_scores(np.random.default_rng(seed), 200)
    ones = np.ones((1, len(scores)))
    assert abs(bs.weighted_auroc(scores, truth, ones)[0] - roc_auc_score(truth, scores)) < TOLERANCE
    precision = bs.weighted_average_precision(scores, truth, ones)[0]
    assert abs(precision - average_precision_score(truth, scores)) < TOLERANCE


def test_integer_weights_equal_sklearn_on_replicated_data():
    rng = np.random.default_rng(3)
    scores, truth = tied_scores(rng, 60)
    weights = rng.integers(0, 4, size=(5, len(scores))).astype(float)
    aurocs = bs.weighted_auroc(scores, truth, weights)
    precisions = bs.weighted_average_precision(scores, truth, weights)
    for row, auroc, ap in zip(weights.astype(int), aurocs, precisions):
        repeated_scores, repeated_truth = np.repeat(scores, row), np.repeat(truth, row)
        assert abs(auroc - roc_auc_score(repeated_truth, repeated_scores)) < TOLERANCE
        assert abs(ap - average_precision_score(repeated_truth, repeated_scores)) < TOLERANCE


def test_one_class_rows_give_nan_and_are_ignored_by_the_interval():
    scores, truth = np.array([0.1, 0.4, 0.8, 0.9]), np.array([0, 0, 1, 1])
    weights = np.array([[1.0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]])
    auroc = bs.weighted_auroc(scores, truth, weights)
    precision = bs.weighted_average_precision(scores, truth, weights)
    assert auroc[0] == 1.0 and np.isnan(auroc[1:]).all()
    assert precision[0] == 1.0 and np.isnan(precision[1]) and precision[2] == 1.0
    values = np.array([np.nan, 1.0, 2.0, 3.0, np.nan])
    assert bs.percentile_interval(values) == pytest.approx(np.percentile([1.0, 2, 3], [2.5, 97.5]).tolist())
    assert bs.percentile_interval(np.full(4, np.nan)) is None


def test_a_resample_without_a_rare_labels_positive_counts_that_label_at_its_point_value():
    rng = np.random.default_rng(4)
    probabilities, targets, mask, subjects = multilabel(rng, 30, 2, studies_per_patient=1)
    mask[:] = True
    targets[:, 1] = 0
    targets[0, 1] = 1
    result = bs.metric_intervals(probabilities, targets, mask, subjects, [0, 1], resamples=200, seed=3)
    weights = bs.patient_weights(subjects, resamples=200, seed=3)
    aurocs = np.stack([bs.weighted_auroc(probabilities[:, k], targets[:, k], weights) for k in (0, 1)])
    assert 0.2 < np.isnan(aurocs[1]).mean() < 0.6
    point = np.array([roc_auc_score(targets[:, k], probabilities[:, k]) for k in (0, 1)])
    filled = np.where(np.isnan(aurocs), point[:, None], aurocs).mean(axis=0)
    assert result["mean"]["auroc_ci95"] == pytest.approx(bs.percentile_interval(filled), abs=TOLERANCE)
    assert result["labels"][1]["auroc_ci95"] == pytest.approx(bs.percentile_interval(aurocs[1]), abs=TOLERANCE)


def test_the_mean_auprc_interval_holds_its_point_when_rare_labels_drop_out_of_resamples():
    """Labels with one positive patient have a low AUPRC and no positive in about a third of the resamples: a mean
    over the labels defined in each resample rises whenever they drop out, and its interval left the point estimate
    at or below its lower edge (0.306 [0.302, 0.454] on the demo's test split)."""
    rng = np.random.default_rng(13)
    studies, common, rare = 60, 4, 4
    targets = np.zeros((studies, common + rare), int)
    targets[:, :common] = rng.random((studies, common)) < 0.5
    targets[rng.choice(studies, rare, replace=False), np.arange(common, common + rare)] = 1
    probabilities = rng.random(targets.shape) + targets * np.r_[np.full(common, 1.0), np.zeros(rare)]
    labels, subjects = list(range(common + rare)), np.arange(studies)
    result = bs.metric_intervals(probabilities, targets, None, subjects, labels, resamples=500)
    point = np.mean([average_precision_score(targets[:, k], probabilities[:, k]) for k in labels])
    low, high = result["mean"]["auprc_ci95"]
    assert low < point < high  # with the rare labels left out of resamples: point 0.521, interval [0.523, 0.824]


def test_patient_weights_keep_patients_whole_and_follow_the_seed():
    subjects = np.array([7, 7, 7, 3, 9, 9, 4, 4, 4, 4])
    weights = bs.patient_weights(subjects, resamples=50, seed=5)
    assert weights.shape == (50, len(subjects)) and weights.dtype == np.float64
    patients, first_study, studies_per_patient = np.unique(subjects, return_index=True, return_counts=True)
    for patient in patients:
        columns = weights[:, subjects == patient]
        assert (columns == columns[:, :1]).all()
    draws = weights[:, first_study]
    assert (draws.sum(axis=1) == len(patients)).all()
    assert (weights.sum(axis=1) == draws @ studies_per_patient).all()
    assert np.array_equal(weights, bs.patient_weights(subjects, resamples=50, seed=5))
    assert not np.array_equal(weights, bs.patient_weights(subjects, resamples=50, seed=6))


def test_chunked_resamples_equal_one_block(monkeypatch):
    rng = np.random.default_rng(6)
    probabilities, targets, mask, subjects = multilabel(rng, 40, 3)
    whole = bs.metric_intervals(probabilities, targets, mask, subjects, [0, 1, 2], resamples=30, seed=2)
    monkeypatch.setattr(bs, "CHUNK_BYTES", 7 * 40 * bs.WEIGHT_BYTES)
    chunked = bs.metric_intervals(probabilities, targets, mask, subjects, [0, 1, 2], resamples=30, seed=2)
    assert chunked == whole


def test_masked_rows_do_not_count():
    rng = np.random.default_rng(7)
    probabilities, targets, mask, subjects = multilabel(rng, 60, 2)
    scrambled = probabilities.copy()
    scrambled[~mask] = rng.random((~mask).sum())
    first = bs.metric_intervals(probabilities, targets, mask, subjects, [0, 1], resamples=40)
    second = bs.metric_intervals(scrambled, targets, mask, subjects, [0, 1], resamples=40)
    assert first == second
    unmasked = bs.metric_intervals(scrambled, targets, np.ones_like(mask), subjects, [0, 1], resamples=40)
    assert unmasked != first


def test_perfect_separation_gives_a_point_interval():
    rng = np.random.default_rng(8)
    targets = (rng.random((40, 2)) < 0.5).astype(int)
    probabilities = 0.5 * targets + 0.4 * rng.random((40, 2))
    result = bs.metric_intervals(probabilities, targets, np.ones_like(targets), np.arange(40) // 2, [0, 1],
                                 resamples=100)
    for entry in [*result["labels"].values(), result["mean"]]:
        assert entry == {"auroc_ci95": [1.0, 1.0], "auprc_ci95": [1.0, 1.0]}
    assert (result["resamples"], result["seed"], result["unit"]) == (100, bs.DEFAULT_SEED, "patient")


def test_identical_models_differ_by_exactly_zero():
    probabilities, targets, mask, subjects = multilabel(np.random.default_rng(9), 90, 3)
    result = bs.paired_difference(probabilities, probabilities.copy(), targets, mask, subjects, [0, 1, 2],
                                  resamples=100)
    assert result["difference"] == 0.0 and result["ci95"] == [0.0, 0.0] and result["within_noise"]
    assert result["auprc"] == {"difference": 0.0, "ci95": [0.0, 0.0], "within_noise": True}


def test_a_model_drowned_in_noise_is_worse_beyond_noise():
    rng = np.random.default_rng(10)
    targets = (rng.random((300, 2)) < 0.4).astype(int)
    good = targets + 0.8 * rng.standard_normal((300, 2))
    noisy = good + 20 * rng.standard_normal((300, 2))
    mask, subjects = np.ones_like(targets), np.arange(300) // 2
    result = bs.paired_difference(good, noisy, targets, mask, subjects, [0, 1], resamples=300)
    assert result["ci95"][0] > 0 and not result["within_noise"]
    assert result["ci95"][0] <= result["difference"] <= result["ci95"][1]
    assert result["auprc"]["ci95"][0] > 0 and not result["auprc"]["within_noise"]


def test_interval_covers_the_true_binormal_auroc():
    separation, positives, negatives, repetitions = 1.0, 50, 100, 200
    true_auroc = 0.5 * (1 + math.erf(separation / 2))  # Phi(d / sqrt 2)
    truth = np.r_[np.ones(positives, int), np.zeros(negatives, int)][:, None]
    rng = np.random.default_rng(11)
    covered = 0
    for repetition in range(repetitions):
        scores = rng.standard_normal((len(truth), 1)) + separation * truth
        result = bs.metric_intervals(scores, truth, np.ones_like(truth), np.arange(len(truth)), [0],
                                     resamples=500, seed=repetition)
        low, high = result["labels"][0]["auroc_ci95"]
        covered += low <= true_auroc <= high
    assert 0.88 <= covered / repetitions <= 0.99


def test_mismatched_shapes_are_refused():
    probabilities, targets, mask, subjects = multilabel(np.random.default_rng(12), 10, 2)
    with pytest.raises(ValueError, match="shape"):
        bs.metric_intervals(probabilities[:, :1], targets, mask, subjects, [0])
    with pytest.raises(ValueError, match="subjects"):
        bs.metric_intervals(probabilities, targets, mask, subjects[:-1], [0])
