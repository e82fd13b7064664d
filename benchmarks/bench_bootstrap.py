"""Time of the patient-bootstrap intervals (every probe and fine-tuning computes them); prints JSON.

Random scores for ``--studies`` studies of about 1.5 studies per patient, 14 labels, ``--resamples``
resamples: :func:`metric_intervals` (per-label and mean intervals of one model) and
:func:`paired_difference` (two models on the same resamples), each timed once.

    python benchmarks/bench_bootstrap.py [--studies 3000,20000] [--resamples 1000]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from raddiffusion.results.bootstrap import metric_intervals, paired_difference

from machine import describe_machine

LABELS = 14
STUDIES_PER_PATIENT = 1.5
PREVALENCE = 0.2


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return round(time.perf_counter() - started, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", default="3000,20000")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = []
    for studies in (int(n) for n in args.studies.split(",")):
        subjects = np.sort(rng.integers(0, int(studies / STUDIES_PER_PATIENT), studies))
        targets = (rng.random((studies, LABELS)) < PREVALENCE).astype(np.float32)
        a, b = targets + rng.normal(0, 1, targets.shape), targets + rng.normal(0, 1, targets.shape)
        mask, labels = np.ones_like(targets, bool), list(range(LABELS))
        results.append({
            "studies": studies, "labels": LABELS, "resamples": args.resamples,
            "metric_intervals_s": timed(metric_intervals, a, targets, mask, subjects, labels, args.resamples),
            "paired_difference_s": timed(paired_difference, a, b, targets, mask, subjects, labels, args.resamples),
        })
    print(json.dumps({"machine": describe_machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
