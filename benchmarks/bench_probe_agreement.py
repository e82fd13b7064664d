"""How closely do the probe's two solvers agree, and what limits it? Prints JSON.

On the synthetic study vectors of ``bench_scale.py`` (correlated noise plus one direction per label, MIMIC-like
label rates, "ones" policy), for each ``--train`` size at ``--width``: the torch solver (the default), scikit-learn
as the probe calls it (the reference: lbfgs, its default gradient tolerance 1e-4) and scikit-learn run to a
tolerance of ``--tight`` (near the exact minimum). Each pair's largest per-label AUROC difference on ``--eval``
studies and the seconds each took. If the reference and the tight fit differ by as much as the torch solver and the
reference do, the digits are decided by the tolerance, not by the solver.

    python benchmarks/bench_probe_agreement.py [--train 2000,25000] [--eval 5000] [--width 768] [--tight 1e-8]
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from raddiffusion.data.labels import CHEXPERT_LABELS
from raddiffusion.train import probe

from bench_scale import probe_data, probe_model
from machine import describe_machine


def aurocs(probabilities: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-label AUROC on the rows each label's mask keeps."""
    return np.array([roc_auc_score(targets[mask[:, k] > 0, k], probabilities[mask[:, k] > 0, k])
                     for k in range(targets.shape[1])])


def tight_scores(train_x, train_y, train_mask, eval_x, tolerance: float) -> np.ndarray:
    """The reference probe with scikit-learn's gradient tolerance set to ``tolerance`` (and iterations to match)."""
    original = probe.LogisticRegression

    class Tight(LogisticRegression):
        def __init__(self, **kwargs):
            super().__init__(**{**kwargs, "tol": tolerance, "max_iter": 100 * probe.MAX_ITER})

    probe.LogisticRegression = Tight
    try:
        return probe.linear_probe_scores(train_x, train_y, train_mask, eval_x, CHEXPERT_LABELS, solver="sklearn")[0]
    finally:
        probe.LogisticRegression = original


def one_size(train: int, evaluate: int, width: int, tolerance: float) -> dict:
    rng = np.random.default_rng(0)
    signal, mixing = probe_model(width)
    train_x, train_y, train_mask = probe_data(train, width, rng, signal, mixing)
    eval_x, eval_y, eval_mask = probe_data(evaluate, width, rng, signal, mixing)
    fits = {
        "torch": lambda: probe.linear_probe_scores(train_x, train_y, train_mask, eval_x, CHEXPERT_LABELS,
                                                   solver="torch")[0],
        "sklearn": lambda: probe.linear_probe_scores(train_x, train_y, train_mask, eval_x, CHEXPERT_LABELS,
                                                     solver="sklearn")[0],
        f"sklearn_tol_{tolerance:g}": lambda: tight_scores(train_x, train_y, train_mask, eval_x, tolerance),
    }
    seconds, scores = {}, {}
    for name, fit in fits.items():
        started = time.perf_counter()
        scores[name] = aurocs(fit(), eval_y, eval_mask)
        seconds[name] = round(time.perf_counter() - started, 2)
    differences = {f"{a} vs {b}": round(float(np.abs(scores[a] - scores[b]).max()), 5)
                   for a, b in itertools.combinations(fits, 2)}
    return {"train_studies": train, "eval_studies": evaluate, "width": width, "seconds": seconds,
            "max_abs_auroc_difference": differences,
            "mean_auroc": {name: round(float(values.mean()), 4) for name, values in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="2000,25000", help="train study counts, comma-separated")
    parser.add_argument("--eval", type=int, default=5000)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--tight", type=float, default=1e-8, help="the near-exact fit's gradient tolerance")
    args = parser.parse_args()
    sizes = [int(size) for size in args.train.split(",")]
    result = {"benchmark": "probe solver agreement: torch, scikit-learn (default tolerance) and a tight scikit-learn",
              "threads": torch.get_num_threads(),
              "sizes": [one_size(size, args.eval, args.width, args.tight) for size in sizes]}
    result.update(describe_machine())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
