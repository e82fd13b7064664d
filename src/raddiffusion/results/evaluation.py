"""The evaluation grid's results: the seed-averaged interval of a row and the fraction × method table."""
from __future__ import annotations

import numpy as np

from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, mean_auroc_resamples, percentile_interval
from .metrics import format_interval, format_metric, label_metrics, scored_labels
from .predictions import Predictions

EVALUATE_JSON, EVALUATE_TABLE = "evaluate.json", "evaluate.txt"
RANDOM_INIT, SCRATCH = "random init", "from scratch"
METHOD_NAMES = {"probe": "linear probe", "knn": "kNN probe", "finetune": "fine-tune"}


def seed_mean_interval(predictions: list[Predictions], resamples: int = DEFAULT_RESAMPLES,
                       seed: int = DEFAULT_SEED) -> list[float] | None:
    """95 % patient-bootstrap interval of the mean over seeds of the mean AUROC.

    Every seed's predictions (same studies) are scored on the same patient resamples, and each
    resample's seed-average is taken. Labels: those with both classes among the counted studies.
    """
    first = predictions[0]
    ordered = [p.in_order_of(first.study_ids) for p in predictions]
    scored = scored_labels(label_metrics(first.probabilities, first.targets, first.mask, resamples=0,
                                        labels=first.labels))
    if not scored:
        return None
    per_seed = mean_auroc_resamples([p.probabilities for p in ordered], first.targets, first.mask,
                                    first.subject_ids, scored, resamples, seed)
    return percentile_interval(np.mean(per_seed, axis=0))


def format_evaluation(evaluation: dict) -> str:
    """The fraction × (model, method) table of mean AUROC: mean over seeds ± sd [95 % interval]."""
    rows = evaluation["rows"]
    fractions = sorted({r["fraction"] for r in rows})
    keys = list(dict.fromkeys((r["model"], r["method"]) for r in rows))
    by_key = {(r["model"], r["method"], r["fraction"]): r for r in rows}
    name_width = max([len(f"{m}, {METHOD_NAMES[k]}") for m, k in keys] + [len("model, method")])
    cell_width = 30
    studies = rows[0]["studies"] if rows else 0
    lines = [f"mean AUROC on {evaluation['split']} ({studies} studies): mean over seeds ± sd "
             f"[95 % patient-bootstrap interval of the seed mean]",
             f"{'model, method':<{name_width}}" + "".join(f"{fraction_name(f):>{cell_width}}" for f in fractions)]
    for model, method in keys:
        cells = "".join(f"{row_text(by_key.get((model, method, f))):>{cell_width}}" for f in fractions)
        lines.append(f"{f'{model}, {METHOD_NAMES[method]}':<{name_width}}{cells}")
    return "\n".join(lines) + "\n"


def fraction_name(fraction: float) -> str:
    """``1 %``, ``10 %``, ``100 %`` (labels used)."""
    return f"{fraction * 100:g} %"


def row_text(row: dict | None) -> str:
    """``0.712 ± 0.010 [0.650, 0.771]`` (``-`` for a cell not run yet)."""
    if row is None:
        return "-"
    sd = f" ± {format_metric(row['auroc_sd'])}" if row.get("auroc_sd") is not None else ""
    return f"{format_metric(row['auroc'])}{sd} {format_interval(row.get('auroc_ci95'))}".rstrip()
