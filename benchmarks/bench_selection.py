"""How optimistic is choosing a fine-tuning epoch on validation? Reads finished runs; prints JSON.

For each fine-tuning run that started from its linear probe (epoch 0 = the probe head): the
validation mean-AUROC gain of the epoch it kept over epoch 0, beside the test mean-AUROC gain of
its kept weights over the linear probe of the same encoder (paired, the same patient resamples).
If selection were unbiased the two gains would agree on average. Runs are grouped by the probe
they are measured against:

    python benchmarks/bench_selection.py --probe PROBE.predictions.csv RUN [RUN ...] \
        [--probe PROBE2.predictions.csv RUN ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from raddiffusion.fileio import read_json
from raddiffusion.results.compare import compare_predictions
from raddiffusion.results.predictions import read_predictions
from raddiffusion.results.runfiles import SUMMARY, TEST_PREDICTIONS, read_metrics

from machine import describe_machine


def grouped_runs(argv: list[str]) -> list[tuple[Path, list[Path]]]:
    """``--probe P RUN ... --probe Q RUN ...`` -> ``[(P, [RUN, ...]), (Q, [...])]``."""
    groups: list[tuple[Path, list[Path]]] = []
    words = iter(argv)
    for word in words:
        if word == "--probe":
            groups.append((Path(next(words)), []))
        elif not groups:
            raise SystemExit(f"{word}: name its probe first (--probe FILE.predictions.csv)")
        else:
            groups[-1][1].append(Path(word))
    return groups


def run_gains(run: Path, probe) -> dict | None:
    """Validation gain of the kept epoch over epoch 0 and test gain over the probe; None without an epoch 0."""
    validation = {r["epoch"]: r["val_auroc"] for r in read_metrics(run) if r.get("kind") == "epoch"}
    kept = read_json(run / SUMMARY)["best_epoch"]
    if 0 not in validation or validation[0] is None:
        return None
    compared = compare_predictions(read_predictions(run / TEST_PREDICTIONS), probe)["difference"]
    return {"run": str(run), "kept_epoch": kept, "validation_gain": validation[kept] - validation[0],
            "test_gain": compared["difference"], "test_gain_ci95": compared["ci95"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], usage=__doc__.split("\n\n")[-1])
    _, rest = parser.parse_known_args()
    results = []
    for probe_file, runs in grouped_runs(rest):
        probe = read_predictions(probe_file)
        for run in runs:
            gains = run_gains(run, probe)
            if gains is not None:
                results.append(gains)
                print(json.dumps(gains), flush=True)
    summary = {key: float(np.mean([r[key] for r in results])) for key in ("validation_gain", "test_gain")}
    above = sum(r["validation_gain"] > r["test_gain"] for r in results)
    print(json.dumps({"machine": describe_machine(), "runs": len(results), "mean": summary,
                      "validation_gain_above_test_gain": above}, indent=1))


if __name__ == "__main__":
    main()
