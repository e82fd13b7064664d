"""``raddiffusion evaluate``: the label-efficient grid — every model × method × label fraction × seed.

Models are the given pretraining runs and, with baselines, a randomly initialised encoder (probed)
and supervised training from scratch (fine-tuned). Methods are the linear probe, the kNN probe and
fine-tuning, all scored on the same split (test by default) with patient-bootstrap intervals. Every
cell is written as soon as it is done (``DIR/cells/...``) and a re-run skips finished cells and
resumes an interrupted fine-tuning; ``DIR/evaluate.json`` and ``DIR/evaluate.txt`` are rewritten
after each cell.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.fractions import check_fraction
from ..data.store import open_store
from ..fileio import atomic_path, read_json, write_json
from ..models import from_config
from ..results.bootstrap import DEFAULT_RESAMPLES
from ..results.evaluation import (
    BASELINE_OF,
    EVALUATE_JSON,
    EVALUATE_TABLE,
    RANDOM_INIT,
    SCRATCH,
    format_evaluation,
    seed_mean_difference,
    seed_mean_interval,
)
from ..results.predictions import PREDICTIONS_SUFFIX, read_predictions
from ..results.runfiles import SUMMARY, TEST_METRICS, TEST_PREDICTIONS, is_finished
from .checkpoint import load
from .distributed import single_device
from .finetune import finetune
from .probe import DEFAULT_K, DEFAULT_SOLVER, ProbeOptions, embed_split, score_vectors, write_probe

CELLS = "cells"
METHODS = ("probe", "knn", "finetune")
PROBE_METHOD = {"probe": "linear", "knn": "knn"}


@dataclass(frozen=True)
class EvaluateSettings:
    """What the grid holds: fractions, seeds, methods, baselines; and how cells are scored."""

    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: int = 3
    methods: tuple[str, ...] = ("probe",)
    baselines: bool = False
    split: str = "test"
    k: int = DEFAULT_K
    label_policy: str = "ones"
    resamples: int = DEFAULT_RESAMPLES
    probe_solver: str = DEFAULT_SOLVER  # the linear probe's regressions
    finetune: dict = field(default_factory=dict)  # fine-tuning settings (FinetuneSettings fields)

    def __post_init__(self) -> None:
        for fraction in self.fractions:
            check_fraction(fraction)
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, not {self.seeds}")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"methods must be among {', '.join(METHODS)}, not {', '.join(unknown) or 'none'}")
        if "finetune" in self.methods and self.split != "test":
            raise ValueError("fine-tuning is scored on the test split; evaluate with --split test")


@dataclass(frozen=True)
class Model:
    name: str
    path: Path | None  # None: the randomly initialised baseline


def evaluate(runs: list[Path], store_path: Path, out: Path, settings: EvaluateSettings,
             device: str | list[int] = "auto", progress: bool = True) -> dict:
    """Run (or finish) every cell of the grid into ``out``; return the evaluation written to evaluate.json.

    ``device`` as for fine-tuning (``auto``, ``cpu``, GPU numbers); probes embed on its first device.
    """
    out, store = Path(out), open_store(store_path)
    models = [Model(name, path) for name, path in zip(model_names(runs), runs)]
    config = load(runs[0]).config
    baseline = Model(RANDOM_INIT, None)
    cells = plan_cells(models, baseline, settings)
    done: list[dict] = []
    bar = tqdm(cells, desc="evaluate", unit="cell", disable=not progress, dynamic_ncols=True)
    vectors: dict[tuple[str, int], tuple] = {}
    summaries: dict[tuple, dict] = {}  # rows and differences already computed, by the cells they are made of
    for model, method, fraction, seed in bar:
        bar.set_postfix_str(f"{model.name} {method} {fraction:g} seed {seed}")
        path = cell_path(out, model, method, fraction, seed)
        if method == "finetune":
            finetune_cell(model, config, store_path, path, fraction, seed, settings, device, progress)
            result = read_json(path / TEST_METRICS)
        else:
            if not path.with_suffix(".json").is_file():
                train, evaluation = cell_vectors(vectors, model, config, store, settings, seed, single_device(device))
                options = ProbeOptions(method=PROBE_METHOD[method], label_fraction=fraction, seeds=(seed,),
                                       k=settings.k, resamples=settings.resamples, solver=settings.probe_solver)
                metrics, predictions = score_vectors(train, evaluation, options, seed, single_device(device))
                write_probe(metrics, path.with_suffix(".json"), predictions)
            result = read_json(path.with_suffix(".json"))
        done.append(cell_record(model, method, fraction, seed, result, path, out))
        evaluation = summarise(done, store_path, settings, out, summaries)
    bar.close()
    return evaluation


def model_names(runs: list[Path]) -> list[str]:
    """A short unique name per run: the folder (its parent's for an experiment's ``pretrain``), or the file stem."""
    names = []
    for run in runs:
        run = Path(run)
        name = run.parent.name if run.name == "pretrain" else (run.stem if run.is_file() else run.name)
        while name in names or name in (RANDOM_INIT, SCRATCH):
            name += "'"
        names.append(name)
    return names


def plan_cells(models: list[Model], baseline: Model, settings: EvaluateSettings) -> list[tuple]:
    """Every (model, method, fraction, seed): the cheap probes first, then the fine-tunings."""
    cells = []
    for method in sorted(settings.methods, key=METHODS.index):
        shown = models + ([baseline] if settings.baselines else [])
        for model in shown:
            for fraction in settings.fractions:
                cells += [(model, method, fraction, seed) for seed in range(settings.seeds)]
    return cells


def display_name(model: Model, method: str) -> str:
    """The baseline is ``random init`` when probed and ``from scratch`` when fine-tuned."""
    return SCRATCH if model.path is None and method == "finetune" else model.name


def cell_path(out: Path, model: Model, method: str, fraction: float, seed: int) -> Path:
    folder = display_name(model, method).replace(" ", "-")
    return out / CELLS / folder / method / f"fraction-{fraction:g}" / f"seed-{seed}"


def cell_vectors(cache: dict, model: Model, config, store, settings: EvaluateSettings, seed: int, device) -> tuple:
    """Train and evaluated split vectors of a model (the random baseline: initialised with ``seed``), cached."""
    key = (model.name, seed if model.path is None else 0)
    if key not in cache:
        net = load(model.path) if model.path is not None else random_encoder(config, seed)
        net = net.to(device)
        cache[key] = tuple(embed_split(net, store, split, settings.label_policy, device=device, progress=False)
                           for split in ("train", settings.split))
    return cache[key]


def random_encoder(config, seed: int) -> torch.nn.Module:
    """The untrained model of ``config``, initialised from ``seed``."""
    torch.manual_seed(seed)
    return from_config(config).eval()


def finetune_cell(model: Model, config, store_path: Path, run: Path, fraction: float, seed: int,
                  settings: EvaluateSettings, device, progress: bool) -> None:
    """Fine-tune one cell (from the model, or from scratch for the baseline), resuming an unfinished one."""
    if is_finished(run):
        return
    train = {**settings.finetune, "label_fraction": fraction, "seed": seed, "resamples": settings.resamples,
             "label_policy": settings.label_policy}
    architecture = {k: v for k, v in config.to_dict().items() if k != "drop_path"} if model.path is None else {}
    finetune(store_path, run, pretrained=model.path, model=architecture, train=train,
             resume=(run / "config.json").is_file(), device=device, progress=False)


def cell_record(model: Model, method: str, fraction: float, seed: int, result: dict, path: Path, out: Path) -> dict:
    """One finished cell: what it is, its mean metrics with intervals, where its files are."""
    predictions = path / TEST_PREDICTIONS if method == "finetune" else path.with_suffix(PREDICTIONS_SUFFIX)
    record = {"model": display_name(model, method), "method": method, "fraction": fraction, "seed": seed,
              "studies": result["studies"], "mean": result["mean"], "labels_absent": sorted(
                  name for name, entry in result["labels"].items() if "absent" in entry),
              "predictions": str(predictions.relative_to(out))}
    if method == "finetune":  # 0: the linear-probe head was kept (no later epoch gained beyond noise)
        record["best_epoch"] = read_json(path / SUMMARY)["best_epoch"]
    return record


def summarise(cells: list[dict], store_path: Path, settings: EvaluateSettings, out: Path, cache: dict) -> dict:
    """evaluate.json (settings, every cell, one row per model × method × fraction) and its text table.

    A row (and its difference from the baseline) is recomputed only when the cells it is made of changed.
    """
    groups: dict[tuple, list[dict]] = {}
    for cell in cells:
        groups.setdefault((cell["model"], cell["method"], cell["fraction"]), []).append(cell)
    rows = []
    for key, members in groups.items():
        seeds = tuple(c["seed"] for c in members)
        if (key, seeds) not in cache:
            cache[(key, seeds)] = summary_row(*key, members, settings, out)
        row = dict(cache[(key, seeds)])
        baseline_key = (BASELINE_OF[key[1]], *key[1:])
        baseline = groups.get(baseline_key)
        if baseline is not None and key[0] != baseline_key[0]:
            compared_key = (key, seeds, tuple(c["seed"] for c in baseline))
            if compared_key not in cache:
                cache[compared_key] = seed_mean_difference(
                    *([read_predictions(out / c["predictions"]) for c in group] for group in (members, baseline)),
                    settings.resamples)
            if cache[compared_key] is not None:
                row["vs_baseline"] = {"baseline": baseline_key[0], **cache[compared_key]}
        rows.append(row)
    evaluation = {"store": str(store_path), "split": settings.split, "settings": asdict(settings),
                  "rows": rows, "cells": cells}
    write_json(out / EVALUATE_JSON, evaluation)
    with atomic_path(out / EVALUATE_TABLE) as tmp:
        tmp.write_text(format_evaluation(evaluation))
    return read_json(out / EVALUATE_JSON)


def summary_row(model: str, method: str, fraction: float, members: list[dict], settings: EvaluateSettings,
                out: Path) -> dict:
    """Mean and sd over seeds of the mean AUROC / AUPRC, and the bootstrap interval of the seeds' mean AUROC."""
    values = {m: [c["mean"].get(m) for c in members] for m in ("auroc", "auprc")}
    row = {"model": model, "method": method, "fraction": fraction, "seeds": len(members),
           "studies": members[0]["studies"]}
    for metric, series in values.items():
        finite = [v for v in series if v is not None]
        row[metric] = float(np.mean(finite)) if finite else None
        row[f"{metric}_sd"] = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    predictions = [read_predictions(out / c["predictions"]) for c in members]
    row["auroc_ci95"] = seed_mean_interval(predictions, settings.resamples)
    if method == "finetune":
        row["kept_epochs"] = [c.get("best_epoch") for c in members]
    return row
