"""``raddiffusion demo``: the whole method on built-in demo data, small enough for a laptop CPU.

demo data (MIMIC-shaped tree) -> store -> for each scheme: pretrain (with probes and figures),
fine-tune and test -> one report comparing both. Every stage resumes: a re-run reuses what an
earlier run finished, and the same seed gives the same numbers.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .data.mimic import CHEXPERT_CSV, METADATA_CSV, SPLIT_CSV
from .data.store import open_store
from .data.tree import find_csv
from .fileio import read_json, write_json
from .models.presets import SCHEMES
from .train.finetune import finetune
from .results.metrics import format_metric
from .train.pretrain import pretrain
from .results.runfiles import CONFIG, is_finished
from .visual.report import write_report

SETTINGS_FILE = "demo.json"


@dataclass(frozen=True)
class DemoSettings:
    """The demo's size: data, epochs and batches chosen to finish in minutes on two CPU cores."""

    subjects: int = 500
    seed: int = 0
    epochs: int = 12
    batch_size: int = 32  # studies per step
    lr: float = 6e-4  # a few hundred steps, not 200 epochs: a higher peak rate than the original 1.4e-4
    probe_every: int = 4
    finetune_epochs: int = 6
    finetune_patience: int = 3


def run_demo(out: Path, settings: DemoSettings = DemoSettings(), progress: bool = True) -> Path:
    """Run the whole demo into ``out``; returns the path of the comparison report."""
    started = time.perf_counter()
    check_settings(out, settings)
    store = build_store(out, settings)
    runs = []
    for number, scheme in enumerate(SCHEMES, start=1):
        stage(f"[{number}/{len(SCHEMES)}] {scheme}: pretrain, probe, fine-tune, test")
        runs.append(train_scheme(out / "runs" / scheme, store, scheme, settings, progress))
    report = write_report(runs, out / "report.html", store=store, title="RadDiffusion demo: vanilla MAE vs DiffMAE")
    print(f"demo: done in {time.perf_counter() - started:.0f}s; report: {report}")
    return report


def stage(text: str) -> None:
    print(f"demo {text}", flush=True)


def check_settings(out: Path, settings: DemoSettings) -> None:
    """Record the demo's settings in OUT, or refuse to mix runs made with other settings."""
    path = out / SETTINGS_FILE
    wanted = {"subjects": settings.subjects, "seed": settings.seed, "epochs": settings.epochs}
    if path.is_file() and read_json(path) != wanted:
        earlier = ", ".join(f"--{k} {v}" for k, v in read_json(path).items())
        raise ValueError(f"{out} holds a demo made with {earlier}; use those or another --out")
    write_json(path, wanted)


def tree_complete(tree: Path) -> bool:
    return all(find_csv(tree, name) is not None for name in (METADATA_CSV, SPLIT_CSV, CHEXPERT_CSV))


def build_store(out: Path, settings: DemoSettings) -> Path:
    """The demo tree (written once) preprocessed into ``out/store``."""
    from .data.preprocess import available_cpus, preprocess  # decoders and the generator load only when needed
    from .data.synth import synthesize

    tree, store = out / "mimic", out / "store"
    if not tree_complete(tree):
        stage(f"data: writing {settings.subjects} subjects of MIMIC-shaped demo radiographs to {tree}")
        shutil.rmtree(tree, ignore_errors=True)
        synthesize(tree, subjects=settings.subjects, seed=settings.seed, workers=available_cpus())
    print(preprocess(tree, store).line())
    print(f"store: {open_store(store).summary()}")
    return store


def train_scheme(experiment: Path, store: Path, scheme: str, settings: DemoSettings, progress: bool) -> Path:
    """Pretrain (or resume, or reuse) one scheme, then fine-tune and test from it."""
    pretrain_dir, finetune_dir = experiment / "pretrain", experiment / "finetune"
    if not is_finished(pretrain_dir):
        pretrain(store, pretrain_dir, model={"preset": "xs", "scheme": scheme},
                 train={"epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr,
                        "probe_every": settings.probe_every, "seed": settings.seed, "workers": 1},
                 resume=(pretrain_dir / CONFIG).is_file(), device="cpu", progress=progress)
    if not is_finished(finetune_dir):
        finetune(store, finetune_dir, pretrained=pretrain_dir,
                 train={"epochs": settings.finetune_epochs, "patience": settings.finetune_patience,
                        "batch_size": settings.batch_size, "seed": settings.seed, "workers": 1},
                 resume=(finetune_dir / CONFIG).is_file(), device="cpu", progress=progress)
    summary = read_json(finetune_dir / "summary.json")
    probe = read_json(pretrain_dir / "summary.json")["probe"]
    kept = "the probe head" if summary["best_epoch"] == 0 else f"epoch {summary['best_epoch']}"
    print(f"{scheme}: linear probe mean AUROC {format_metric(probe and probe['mean']['auroc'])} on validation; "
          f"fine-tuned ({kept} kept) {format_metric(summary['test']['mean']['auroc'])} on test")
    return experiment

