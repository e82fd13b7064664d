"""The fine-tuning recipe, measured: each variant against the linear probe of the same encoder; prints JSON.

For every pretraining run: the linear probe (train -> test) and one 6-epoch fine-tuning per recipe
variant, all scored on the same test studies; each variant's mean AUROC with its interval and the
paired difference from the probe (the same patient resamples score both). Runs already finished in
OUT are reused, so an interrupted sweep resumes.

    python benchmarks/bench_recipe.py STORE RUN [RUN ...] --out DIR [--epochs 6] [--variants defaults,original]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import raddiffusion as rd
from raddiffusion.fileio import read_json
from raddiffusion.results.compare import compare_predictions
from raddiffusion.results.predictions import read_predictions
from raddiffusion.results.runfiles import SUMMARY, TEST_PREDICTIONS, is_finished, read_metrics
from raddiffusion.train.finetune import finetune
from raddiffusion.train.probe import probe_with_predictions, write_probe

from machine import describe_machine

ORIGINAL = {"head_init": "random", "head_lr_scale": 1.0, "layer_decay": 1.0, "drop_path": 0.0, "augment": False,
            "select_on": "loss"}
VARIANTS = {
    "defaults": {},
    "original": ORIGINAL,  # the recipe before the measurements: lr 5e-5 for everything, no extras
    "select-on-loss": {"select_on": "loss"},
    "select-any-gain": {"select_on": "auroc"},  # the best validation mean AUROC, however small its gain
    "no-augment": {"augment": False},
    "no-drop-path": {"drop_path": 0.0},
    "random-head": {"head_init": "random"},
    "head-warmup": {"head_init": "random", "head_warmup_epochs": 1},
    "lr1e-4": {"lr": 1e-4},
    "lr2e-5": {"lr": 2e-5},
}
PROBE_FILE = "probe.json"


def probe_predictions(run: Path, store: Path, out: Path):
    """The test-split linear probe of ``run``'s encoder (computed once, then read from OUT)."""
    path = out / PROBE_FILE
    if not path.is_file():
        metrics, predictions = probe_with_predictions(rd.load(run), rd.open_store(store), eval_split="test",
                                                      progress=False)
        write_probe(metrics, path, predictions)
    return read_predictions(path.with_suffix(".predictions.csv"))


def variant_predictions(run: Path, store: Path, out: Path, train: dict):
    """The test predictions of one fine-tuning variant (trained unless OUT holds it finished)."""
    if not is_finished(out):
        finetune(store, out, pretrained=run, train={**train, "workers": 1}, resume=(out / "config.json").is_file(),
                 device="cpu", progress=False)
    return read_predictions(out / TEST_PREDICTIONS), read_json(out / SUMMARY)


def validation_aurocs(out: Path, best_epoch: int) -> dict:
    """Validation mean AUROC of epoch 0 (the probe head, when there is one) and of the best epoch."""
    by_epoch = {r["epoch"]: r["val_auroc"] for r in read_metrics(out) if r.get("kind") == "epoch"}
    return {"validation_epoch0": by_epoch.get(0), "validation_best": by_epoch.get(best_epoch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("runs", type=Path, nargs="+", help="pretraining runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    args = parser.parse_args()
    results = []
    for run in args.runs:
        folder = args.out / run.name
        probe = probe_predictions(run, args.store, folder)
        for name in args.variants.split(","):
            tuned, summary = variant_predictions(run, args.store, folder / name, {"epochs": args.epochs, **VARIANTS[name]})
            compared = compare_predictions(tuned, probe)
            results.append({
                "run": str(run), "variant": name, "settings": VARIANTS[name], "best_epoch": summary["best_epoch"],
                **validation_aurocs(folder / name, summary["best_epoch"]),
                "finetune_auroc": compared["a"]["auroc"], "finetune_ci95": compared["a"]["auroc_ci95"],
                "probe_auroc": compared["b"]["auroc"], "probe_ci95": compared["b"]["auroc_ci95"],
                "finetune_minus_probe": compared["difference"]["difference"],
                "difference_ci95": compared["difference"]["ci95"], "studies": compared["studies"],
                "seconds": summary["seconds"],
            })
            print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"machine": describe_machine(), "epochs": args.epochs, "results": results}, indent=1))


if __name__ == "__main__":
    main()
