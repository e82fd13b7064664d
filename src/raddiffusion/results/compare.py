"""Paired comparison of two models scored on the same studies: is the difference of mean AUROC real?"""
from __future__ import annotations

import numpy as np

from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, paired_difference
from .metrics import format_interval, format_metric, label_metrics, scored_labels
from .predictions import Predictions, PredictionsError

WITHIN_NOISE = "within noise"


def compare_predictions(a: Predictions, b: Predictions, resamples: int = DEFAULT_RESAMPLES,
                        seed: int = DEFAULT_SEED) -> dict:
    """Both models' mean AUROC / AUPRC with intervals and the paired bootstrap interval of A − B.

    ``PredictionsError`` (one line) when the two were not scored on the same studies against the
    same targets. Only labels scored for both (both classes present) enter the means.
    """
    check_same_studies(a, b)
    b = b.in_order_of(a.study_ids)
    if a.labels != b.labels or not (np.array_equal(a.mask, b.mask) and np.array_equal(a.targets[a.mask], b.targets[b.mask])):
        raise PredictionsError("the two were scored against different labels (another label policy or label set); "
                               "compare needs the same targets")
    metrics = [label_metrics(p.probabilities, p.targets, p.mask, subjects=p.subject_ids, resamples=resamples, seed=seed,
                            labels=p.labels) for p in (a, b)]
    scored = sorted(set(scored_labels(metrics[0])) & set(scored_labels(metrics[1])))
    if not scored:
        raise PredictionsError("no label has both classes among these studies; there is nothing to compare")
    difference = paired_difference(a.probabilities, b.probabilities, a.targets, a.mask, a.subject_ids, scored,
                                   resamples, seed)
    return {"studies": len(a), "patients": int(len(np.unique(a.subject_ids))),
            "labels": [a.labels[k] for k in scored], "a": metrics[0]["mean"], "b": metrics[1]["mean"],
            "difference": difference}


def check_same_studies(a: Predictions, b: Predictions) -> None:
    """``PredictionsError`` unless ``a`` and ``b`` hold the same studies (in any order)."""
    ids_a, ids_b = set(a.study_ids.tolist()), set(b.study_ids.tolist())
    if ids_a != ids_b or len(ids_a) != len(a) or len(ids_b) != len(b):
        raise PredictionsError(f"scored on different studies ({len(a)} and {len(b)} studies, "
                               f"{len(ids_a & ids_b)} in common); a paired comparison needs the same studies")


def verdict(difference: dict, name_a: str, name_b: str) -> str:
    """``A is better`` / ``B is better`` when the interval of A − B excludes 0, else ``within noise``."""
    if difference["within_noise"]:
        return WITHIN_NOISE
    return f"{name_a} is better" if difference["difference"] > 0 else f"{name_b} is better"


def signed_interval(interval: list[float] | None) -> str:
    """``[-0.012, +0.034]`` (empty without an interval)."""
    return "" if not interval else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def format_comparison(result: dict, name_a: str, name_b: str) -> str:
    """A few readable lines: both means with intervals, the difference with its interval, the verdict."""
    width = max(len(name_a), len(name_b), len("A − B"))
    lines = [f"paired comparison on {result['studies']} studies of {result['patients']} patients, "
             f"{len(result['labels'])} labels, {result['difference']['resamples']} bootstrap resamples of patients"]
    for name, means in ((name_a, result["a"]), (name_b, result["b"])):
        lines.append(f"{name:<{width}}  mean AUROC {format_metric(means.get('auroc'))} "
                     f"{format_interval(means.get('auroc_ci95'))}  AUPRC {format_metric(means.get('auprc'))} "
                     f"{format_interval(means.get('auprc_ci95'))}")
    auroc, auprc = result["difference"], result["difference"]["auprc"]
    lines.append(f"{'A − B':<{width}}  mean AUROC {auroc['difference']:+.3f} {signed_interval(auroc['ci95'])}  "
                 f"AUPRC {auprc['difference']:+.3f} {signed_interval(auprc['ci95'])}")
    lines.append(f"AUROC: {verdict(auroc, name_a, name_b)}; AUPRC: {verdict(auprc, name_a, name_b)}")
    return "\n".join(lines) + "\n"
