"""The evaluation grid's results: the seed-averaged interval of a row and the fraction × method table."""
from __future__ import annotations

import numpy as np

from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, difference_summary, mean_auroc_resamples, percentile_interval
from .metrics import format_interval, format_metric, label_metrics, scored_labels
from .compare import signed_interval
from .predictions import Predictions

EVALUATE_JSON, EVALUATE_TABLE = "evaluate.json", "evaluate.txt"
RANDOM_INIT, SCRATCH = "random init", "from scratch"
METHOD_NAMES = {"probe": "linear probe", "knn": "kNN probe", "finetune": "fine-tune"}
BASELINE_OF = {"probe": RANDOM_INIT, "knn": RANDOM_INIT, "finetune": SCRATCH}  # what pretraining is measured against
CELL_WIDTH = 38
KEPT_EPOCHS_NOTE = "fine-tuning epoch kept (0: the linear-probe head, when no later epoch gained beyond noise on validation)"


def seed_mean_interval(predictions: list[Predictions], resamples: int = DEFAULT_RESAMPLES,
                       seed: int = DEFAULT_SEED) -> list[float] | None:
    """95 % patient-bootstrap interval of the mean over seeds of the mean AUROC.

    Every seed's predictions (same studies) are scored on the same patient resamples, and each
    resample's seed-average is taken. Labels: those with both classes among the counted studies.
    """
    scored = _scored(predictions[0])
    if not scored:
        return None
    per_seed = _resampled(predictions, scored, resamples, seed)
    return percentile_interval(np.mean(per_seed, axis=0))


def seed_mean_difference(a: list[Predictions], b: list[Predictions], resamples: int = DEFAULT_RESAMPLES,
                         seed: int = DEFAULT_SEED) -> dict | None:
    """Seed-mean of the mean AUROC of A minus that of B, with its paired patient-bootstrap interval.

    Both sets of seeds are scored on the same resamples; ``None`` when no label can be scored.
    """
    scored = _scored(a[0])
    if not scored:
        return None
    resampled = _resampled(a + b, scored, resamples, seed)
    point = np.mean([_mean_auroc(p, scored) for p in a]) - np.mean([_mean_auroc(p, scored) for p in b])
    return difference_summary(float(point), resampled[: len(a)].mean(axis=0) - resampled[len(a):].mean(axis=0))


def _scored(predictions: Predictions) -> list[int]:
    """Label columns with both classes among the counted studies."""
    return scored_labels(label_metrics(predictions.probabilities, predictions.targets, predictions.mask,
                                       resamples=0, labels=predictions.labels))


def _resampled(predictions: list[Predictions], scored: list[int], resamples: int, seed: int) -> np.ndarray:
    """Mean AUROC of each prediction set under the same patient resamples ``[sets, resamples]``."""
    first = predictions[0]
    ordered = [p.in_order_of(first.study_ids) for p in predictions]
    return mean_auroc_resamples([p.probabilities for p in ordered], first.targets, first.mask, first.subject_ids,
                                scored, resamples, seed)


def _mean_auroc(predictions: Predictions, scored: list[int]) -> float:
    """Mean AUROC over the ``scored`` label columns."""
    metrics = label_metrics(predictions.probabilities, predictions.targets, predictions.mask, resamples=0,
                            labels=predictions.labels)
    entries = list(metrics["labels"].values())
    return float(np.mean([entries[k]["auroc"] for k in scored]))


def format_evaluation(evaluation: dict) -> str:
    """The fraction × (model, method) table of mean AUROC: mean over seeds ± sd [95 % interval]."""
    rows = evaluation["rows"]
    fractions = sorted({r["fraction"] for r in rows})
    keys = list(dict.fromkeys((r["model"], r["method"]) for r in rows))
    by_key = {(r["model"], r["method"], r["fraction"]): r for r in rows}
    name_width = max([len(f"{m}, {METHOD_NAMES[k]}") for m, k in keys] + [len("model, method")])
    studies = rows[0]["studies"] if rows else 0
    header = f"{'model, method':<{name_width}}" + "".join(f"{fraction_name(f):>{CELL_WIDTH}}" for f in fractions)
    lines = [f"mean AUROC on {evaluation['split']} ({studies} studies): mean over seeds ± sd "
             f"[95 % patient-bootstrap interval of the seed mean]", header]
    for model, method in keys:
        cells = "".join(f"{row_text(by_key.get((model, method, f))):>{CELL_WIDTH}}" for f in fractions)
        lines.append(f"{f'{model}, {METHOD_NAMES[method]}':<{name_width}}{cells}")
    compared = [(m, k) for m, k in keys if any("vs_baseline" in by_key.get((m, k, f), {}) for f in fractions)]
    if compared:
        lines += ["", "what pretraining added: difference of the seed means from the baseline (random init for "
                  "probes, from scratch for fine-tuning) [paired 95 % interval]", header]
        for model, method in compared:
            cells = "".join(f"{difference_text(by_key.get((model, method, f))):>{CELL_WIDTH}}" for f in fractions)
            lines.append(f"{f'{model}, {METHOD_NAMES[method]}':<{name_width}}{cells}")
    tuned = [(m, k) for m, k in keys if any("kept_epochs" in by_key.get((m, k, f), {}) for f in fractions)]
    if tuned:
        lines += ["", f"{KEPT_EPOCHS_NOTE}, per seed", header]
        for model, method in tuned:
            cells = "".join(f"{kept_epochs_text(by_key.get((model, method, f))):>{CELL_WIDTH}}" for f in fractions)
            lines.append(f"{f'{model}, {METHOD_NAMES[method]}':<{name_width}}{cells}")
    return "\n".join(lines) + "\n"


def kept_epochs_text(row: dict | None) -> str:
    """``0, 0, 2``: the epoch each seed's fine-tuning kept (``?`` where unknown; ``-`` for a cell not run)."""
    epochs = (row or {}).get("kept_epochs")
    return "-" if not epochs else ", ".join("?" if e is None else str(e) for e in epochs)


def difference_text(row: dict | None) -> str:
    """``+0.052 [+0.010, +0.091]``, with ``within noise`` when the interval holds 0; ``-`` without one."""
    compared = (row or {}).get("vs_baseline")
    if not compared:
        return "-"
    bounds = f" {signed_interval(compared['ci95'])}" if compared["ci95"] else ""
    return f"{compared['difference']:+.3f}{bounds}{' within noise' if compared['within_noise'] else ''}"


def fraction_name(fraction: float) -> str:
    """``1 %``, ``10 %``, ``100 %`` (labels used)."""
    return f"{fraction * 100:g} %"


def row_text(row: dict | None) -> str:
    """``0.712 ± 0.010 [0.650, 0.771]`` (``-`` for a cell not run yet)."""
    if row is None:
        return "-"
    sd = f" ± {format_metric(row['auroc_sd'])}" if row.get("auroc_sd") is not None else ""
    return f"{format_metric(row['auroc'])}{sd} {format_interval(row.get('auroc_ci95'))}".rstrip()
