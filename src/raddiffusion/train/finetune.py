"""Supervised fine-tuning of the study encoder with a linear head, then the test-split metrics.

SPEC §4: BCE with logits, ``pos_weight = 1/sqrt(prevalence)`` per label from the train split, AdamW
with weight decay 0.05, warm-up + cosine, early stopping on the validation loss, best weights kept
(``model.safetensors``), then per-label and mean AUROC / AUPRC / F1 with patient-bootstrap
intervals on the test split (``test_metrics.json``, per-study ``test_predictions.csv``). Under the
``ignore`` policy masked labels are left out of the loss.

On top of it, a recipe chosen by measurement (BENCHMARKS.md), every part a setting: the head starts
from the linear probe of the initial encoder (linear-probe-then-fine-tune; the epoch-0 weights are
the first candidate for "best"; a later epoch replaces the kept weights only with a validation gain
beyond noise, see ``selection.EpochSelection``), a larger learning rate for the head, layer-wise learning-rate
decay, drop path, radiograph augmentation (random resized crop, small rotation, brightness /
contrast, no horizontal flip), and the label-efficient protocol (a seeded subset of the train labels).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.augment import NO_AUGMENTATION, Augmentation, augment
from ..data.fractions import check_fraction, label_fraction_subset
from ..data.store import Store, open_store
from ..data.studies import StudyDataset, collate_studies
from ..fileio import atomic_path, read_json, write_json
from ..models import StudyClassifier, model_config
from ..models.presets import RUNTIME_FIELDS, saved_config
from ..results.bootstrap import DEFAULT_RESAMPLES
from ..results.metrics import format_metric, format_table, label_metrics, scored_labels
from ..results.predictions import Predictions, write_predictions
from ..results.runfiles import CHECKPOINT, CONFIG, SUMMARY, TEST_METRICS, TEST_PREDICTIONS, is_finished, run_stores
from ..visual.study import ATTENTION, FIGURES, attention_map_figure
from . import distributed
from .batches import EpochPlan, micro_batch_generator, seed_step
from .checkpoint import load, save_model
from .microbatch import check_micro_batch, resolve_micro_batch
from .runlock import releases_run_lock
from .loop import (
    accumulate_gradients,
    check_finite,
    check_precision,
    check_store_fits,
    open_run,
    resolve_settings,
    to_device,
    training_loader,
    tune_allocator,
    wrap_for_training,
)
from .optim import build_classifier_optimizer, set_learning_rate, warmup_cosine
from .preemption import Preemption
from .pretrain import figure_reference
from .probe import fit_label_regressions, over_seeds, study_vectors
from .runs import MetricsLog, RunError, check_requested, load_checkpoint, save_checkpoint
from .selection import SELECTION, EpochSelection, selection_note

BEST_WEIGHTS = "model.safetensors"
CPU = torch.device("cpu")  # augmentation parameters are drawn here, whatever the device
EVAL_BATCH_STUDIES = 64
MAY_CHANGE_ON_RESUME = {"save_every", "workers", "compile", "reference_study", "resamples",
                        "micro_batch"}  # settled when the run started: a resumed run keeps its accumulation
HEAD_INITS = ("probe", "random")
RESIZABLE = ("image_size", *RUNTIME_FIELDS)  # model options a fine-tuning may change from its pretrained model


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning settings: loss, optimiser and schedule as the original recipe (SPEC §4); the recipe
    on top of it (head initialisation, head learning rate, layer decay, drop path, augmentation) has
    defaults chosen by measurement (BENCHMARKS.md)."""

    epochs: int = 20
    batch_size: int = 64  # studies per optimizer step, over all processes
    accumulation: int = 1  # micro-batches per process and step
    micro_batch: int | str | None = None  # studies per micro-batch, or "auto" (GPU); sets accumulation on a new run
    lr: float = 5e-5
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    patience: int = 5  # epochs without a new highest validation score (any gain) before stopping
    save_every: int = 200
    workers: int = 4
    seed: int = 0
    precision: str = "fp32"
    compile: bool = False
    label_policy: str = "ones"
    max_views: int | None = None
    reference_study: int | None = None  # its attention maps are drawn; default: first validation study, 2+ views
    select_on: str = "auroc-ci"  # the kept epoch: "auroc-ci" (a gain beyond noise), "auroc" (any gain) or "loss"
    head_init: str = "probe"  # "probe": the head starts as the linear probe of the initial encoder; "random"
    head_warmup_epochs: int = 0  # epochs in which only the head learns (the encoder's learning rate is 0)
    head_lr_scale: float = 10.0  # the head's learning rate is lr times this
    layer_decay: float = 0.75  # block i of depth d learns at lr · layer_decay^(d − i); 1 = off
    drop_path: float = 0.1  # stochastic depth of the last encoder block (linear from 0 over the blocks)
    augment: bool = True
    crop_scale: float = 0.8  # smallest area share of the random resized crop
    rotation: float = 5.0  # largest rotation, degrees
    intensity: float = 0.1  # brightness shift and contrast change, at most
    hflip: bool = False  # anatomy is lateralised: no horizontal flip unless asked
    label_fraction: float = 1.0  # share of the labelled train studies used (patient-level, seeded)
    resamples: int = DEFAULT_RESAMPLES  # bootstrap resamples of the test intervals

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_micro_batch(self.micro_batch)
        check_fraction(self.label_fraction)
        if self.select_on not in SELECTION:
            raise ValueError(f"select_on must be one of {', '.join(SELECTION)}, not {self.select_on!r}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {', '.join(HEAD_INITS)}, not {self.head_init!r}")
        if self.head_warmup_epochs < 0 or self.head_lr_scale <= 0 or not 0 < self.layer_decay <= 1:
            raise ValueError("head_warmup_epochs must be >= 0, head_lr_scale > 0 and layer_decay in (0, 1]")
        self.augmentation()  # checks the augmentation settings

    def augmentation(self) -> Augmentation:
        """The augmentation these settings ask for (``NO_AUGMENTATION`` when ``augment`` is off)."""
        if not self.augment:
            return NO_AUGMENTATION
        return Augmentation(crop_scale=(self.crop_scale, 1.0), rotation=self.rotation, brightness=self.intensity,
                            contrast=self.intensity, hflip=self.hflip)


def pos_weight(dataset: StudyDataset) -> torch.Tensor:
    """``1 / sqrt(prevalence)`` per label over the train studies (a label never positive counts one positive)."""
    mask = dataset.label_mask
    positives = (dataset.labels * mask).sum(0)
    prevalence = np.maximum(positives, 1.0) / np.maximum(mask.sum(0), 1.0)
    return torch.from_numpy(1.0 / np.sqrt(prevalence)).float()


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean BCE with logits over the labels whose mask is 1."""
    losses = F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=weight, reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)


@releases_run_lock
def finetune(
    store_path: str | Path,
    run_dir: str | Path,
    pretrained: str | Path | None = None,
    model: dict | None = None,
    train: dict | None = None,
    resume: bool = False,
    device: str | list[int] = "auto",
    progress: bool = True,
) -> dict:
    """Fine-tune into ``run_dir`` (from the encoder of ``pretrained`` if given), test, return the summary."""
    run_dir, model, train = Path(run_dir), dict(model or {}), dict(train or {})
    process, stored = open_run(run_dir, resume, device)
    settings = resolve_settings(FinetuneSettings, stored and stored["train"], train, MAY_CHANGE_ON_RESUME, run_dir)
    store = open_store(store_path)
    store.require_labels("fine-tune")
    torch.manual_seed(settings.seed)
    net = _initial_model(stored, pretrained, model, run_dir, settings, label_head(store)).to(process.device)
    check_store_fits(store, net.config, store_path)
    tune_allocator(process, net.config)

    def dataset(split: str) -> StudyDataset:
        return StudyDataset(store, split=split, label_policy=settings.label_policy, max_views=settings.max_views,
                            labelled_only=True)

    full_train, val_set = dataset("train"), dataset("validate")
    train_set, lacking = train_subset(full_train, settings)
    batch_size = min(settings.batch_size, len(train_set))
    views = train_set.view_counts()
    steps_per_epoch = len(train_set) // batch_size
    if len(val_set) == 0:
        raise ValueError(f"{store_path} has no labelled validate studies: early stopping needs them")
    if len(dataset("test")) == 0:
        raise ValueError(f"{store_path} has no labelled test studies: fine-tuning ends by testing on them")
    weight = pos_weight(train_set).to(process.device)
    if stored is None and settings.micro_batch is not None:
        micro, accumulation = resolve_micro_batch(settings.micro_batch, batch_size, process.ranks, int(views.max()),
                                                  process.device, settings.precision, lambda: StudyClassifier(net.config))
        settings = replace(settings, micro_batch=micro, accumulation=accumulation)
    distributed.barrier(process)  # every process has checked the run directory before it is written
    if process.is_main and stored is None:
        write_json(run_dir / CONFIG, {
            "command": "finetune", "store": str(store_path), "dataset": store.dataset,
            "pretrained": str(pretrained) if pretrained else None, "pretrained_on": pretrained_stores(pretrained),
            "model": net.config.to_dict(), "train": asdict(settings),
            "data": {"train_studies": len(full_train), "train_studies_used": len(train_set),
                     "labels_absent": lacking, "batch_size": batch_size, "validate_studies": len(val_set),
                     "steps_per_epoch": steps_per_epoch, "pos_weight": weight.tolist()},
        })

    optimizer = build_classifier_optimizer(net, settings.lr, settings.weight_decay, settings.layer_decay,
                                           settings.head_lr_scale)
    checkpoint = run_dir / CHECKPOINT
    state = {"step": 0, "epoch_loss": 0.0, "best_val_loss": None, "best_score": None, "best_epoch": 0,
             "highest_score": None, "bad_epochs": 0, "epochs_run": 0, "seconds": 0.0}
    if resume and checkpoint.is_file():
        state = load_checkpoint(checkpoint, net, optimizer)
    log = MetricsLog(run_dir, enabled=process.is_main)
    log.keep_until(state["step"])
    selection = EpochSelection.for_run(settings.select_on, val_set, run_dir, settings.resamples,
                                       resumed=state["step"] > 0)
    if state["step"] == 0 and settings.head_init == "probe":
        init_head_from_probe(net, train_set, process.device, progress and process.is_main)
        validation = evaluate_validation(net, val_set, weight, process.device, settings.precision)
        state = _keep_if_best(state, validation, selection, 0, net, run_dir, process, log, progress)
    trainer = wrap_for_training(net, process, settings.compile)
    total_steps = settings.epochs * steps_per_epoch
    augmentation = settings.augmentation()

    def objective(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        images = augment(batch["images"], augmentation, batch["generator"])
        return masked_bce(model(images, batch["lengths"]), batch["labels"], batch["label_mask"], weight)

    started = time.perf_counter() - state["seconds"]
    loader, epoch_batches = training_loader(train_set, settings.workers, process.device)
    with Preemption(process) as preemption:  # SIGTERM / SIGUSR1: stop after a step with the checkpoint written
        for epoch in range(state["step"] // steps_per_epoch, settings.epochs):
            if state["bad_epochs"] >= settings.patience:
                break
            plan = EpochPlan(views, batch_size, settings.accumulation, process.rank, process.ranks, settings.seed, epoch)
            first = state["step"] - epoch * steps_per_epoch
            epoch_batches.start(plan, first)
            batches = iter(loader)
            bar = tqdm(range(first, steps_per_epoch), desc=f"finetune epoch {epoch + 1}/{settings.epochs}", unit="step",
                       disable=not (progress and process.is_main), dynamic_ncols=True)
            encoder_factor = 0.0 if epoch < settings.head_warmup_epochs else 1.0
            for step_in_epoch in bar:
                step = epoch * steps_per_epoch + step_in_epoch
                lr = settings.lr * warmup_cosine(step, total_steps, settings.warmup_fraction)
                set_learning_rate(optimizer, lr, encoder_factor)
                micro = [to_device(next(batches), process.device) for _ in range(settings.accumulation)]
                for mb, batch in zip(plan.micro_batches(step_in_epoch), micro):
                    batch["generator"] = micro_batch_generator(settings.seed, step, mb.index, CPU)
                shares = [len(batch["lengths"]) / batch_size for batch in micro]
                seed_step(settings.seed, step, process.rank)
                local = accumulate_gradients(trainer, micro, shares, process.ranks, objective, settings.precision)
                loss = distributed.global_sum(local, process).item()
                check_finite(loss, step + 1, checkpoint)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.update(step=step + 1, epoch_loss=state["epoch_loss"] + loss, seconds=time.perf_counter() - started)
                log.write({"kind": "step", "step": step + 1, "epoch": epoch + 1, "loss": loss, "lr": lr})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if (step + 1) % settings.save_every == 0 and step_in_epoch + 1 < steps_per_epoch and process.is_main:
                    save_checkpoint(checkpoint, net, optimizer, state)
                if step_in_epoch + 1 < steps_per_epoch:  # at an epoch's end: once its checkpoint is written
                    preemption.stop_if_requested(state["step"], checkpoint,
                                                 lambda: save_checkpoint(checkpoint, net, optimizer, state))
            bar.close()
            validation = evaluate_validation(net, val_set, weight, process.device, settings.precision)
            state["epochs_run"] = epoch + 1
            state = _keep_if_best(state, validation, selection, epoch + 1, net, run_dir, process, log, progress,
                                  state["epoch_loss"] / steps_per_epoch)
            state["epoch_loss"] = 0.0
            if process.is_main:
                save_checkpoint(checkpoint, net, optimizer, state)
            distributed.barrier(process)
            preemption.stop_if_requested(state["step"], checkpoint)

    summary = {"command": "finetune", "epochs_run": state["epochs_run"], "best_epoch": state["best_epoch"],
               "selected_on": settings.select_on, "best_val_loss": state["best_val_loss"], "steps": state["step"], "seconds": round(state["seconds"], 1),
               "label_fraction": settings.label_fraction, "train_studies_used": len(train_set)}
    if process.is_main:
        best = load(run_dir / BEST_WEIGHTS).to(process.device)
        metrics, predictions = evaluate_test_split(best, store, settings, process.device, progress, lacking)
        write_test_metrics(metrics, run_dir / TEST_METRICS)
        write_predictions(predictions, run_dir / TEST_PREDICTIONS)
        summary["test"] = {"studies": metrics["studies"], "mean": metrics["mean"]}
        figure_study = figure_reference(store, settings.reference_study)
        if figure_study is not None:
            attention_map_figure(best, *figure_study, run_dir / FIGURES / ATTENTION)
        write_json(run_dir / SUMMARY, summary)
    log.close()
    distributed.barrier(process)
    if not process.is_main:
        summary = read_json(run_dir / SUMMARY)
    return summary


def label_head(store: Store) -> dict:
    """The model options of a head for the store's labels."""
    return {"num_labels": len(store.label_names), "label_names": tuple(store.label_names)}


def pretrained_stores(pretrained: str | Path | None) -> list[str] | None:
    """The stores a pretraining run was trained on, as its config names them (None without one)."""
    config = Path(pretrained) / CONFIG if pretrained else None
    if config is None or not config.is_file():
        return None
    return run_stores(read_json(config))


def train_subset(train_set: StudyDataset, settings: FinetuneSettings) -> tuple[StudyDataset, dict[str, str]]:
    """The label-fraction subset of the labelled train studies (the seed's), and the labels it lacks."""
    positions, lacking = label_fraction_subset(train_set.subject_ids, train_set.labels, train_set.label_mask,
                                               settings.label_fraction, settings.seed, train_set.label_names)
    if len(positions) == 0:
        raise ValueError("the store has no labelled train studies to fine-tune on")
    return train_set.select(positions), lacking


def _keep_if_best(state: dict, validation: dict, selection: EpochSelection, epoch: int, net: StudyClassifier,
                  run_dir: Path, process, log: MetricsLog, progress: bool, train_loss: float | None = None) -> dict:
    """Record an epoch's validation loss and mean AUROC; keep the weights as ``model.safetensors`` when
    ``selection`` prefers them to the kept ones; count the epochs since the highest score (``patience``)."""
    gain = selection.gain_interval(validation)
    improved = selection.improves(validation, state.get("best_score"), gain)
    score, highest = selection.score(validation), state.get("highest_score", state.get("best_score"))
    new_high = highest is None or score > highest
    state = {**state, "bad_epochs": 0 if new_high else state["bad_epochs"] + 1,
             "highest_score": score if new_high else highest}
    if improved:
        state.update(best_score=score, best_val_loss=validation["loss"], best_epoch=epoch)
        selection.keep(validation, write=process.is_main)
        if process.is_main:
            save_model(net, run_dir / BEST_WEIGHTS)
    log.write({"kind": "epoch", "step": state["step"], "epoch": epoch, "loss": train_loss,
               "val_loss": validation["loss"], "val_auroc": validation["auroc"], "val_gain_ci95": gain,
               "best": improved})
    if progress and process.is_main:
        tqdm.write(f"epoch {epoch}: validation loss {validation['loss']:.4f}, mean AUROC "
                   f"{format_metric(validation['auroc'])}" + selection_note(improved, gain, state["bad_epochs"]))
    return state


def init_head_from_probe(model: StudyClassifier, train_set: StudyDataset, device: torch.device, progress: bool) -> None:
    """Set the head to the linear probe of the model's current encoder on ``train_set`` (standardised
    balanced logistic regressions, folded into the head's weights; labels with one class keep a zero row)."""
    vectors = study_vectors(model, train_set, EVAL_BATCH_STUDIES, device, progress=progress, description="probe head")
    scaler, fitted = fit_label_regressions(vectors, train_set.labels, train_set.label_mask)
    weight, bias = np.zeros((len(fitted), vectors.shape[1])), np.zeros(len(fitted))
    for k, classifier in enumerate(fitted):
        if classifier is not None:
            weight[k] = classifier.coef_[0] / scaler.scale_
            bias[k] = classifier.intercept_[0] - weight[k] @ scaler.mean_
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))


def _initial_model(stored: dict | None, pretrained, requested: dict, run_dir: Path,
                   settings: FinetuneSettings, head: dict) -> StudyClassifier:
    """A resumed run's architecture, the pretrained encoder (+ a fresh ``head``), or a random one.

    A pretrained encoder may be fine-tuned at another image size (its position table is recomputed
    for the new grid); the drop-path rate is the fine-tuning's own. ``head`` sizes and names a new
    model's outputs (:func:`label_head`).
    """
    if stored is not None:
        config = saved_config(stored["model"])
        check_requested(run_dir, config.to_dict(), {k: v for k, v in requested.items() if k not in RUNTIME_FIELDS})
        config = replace(config, **{k: v for k, v in requested.items() if k in RUNTIME_FIELDS})  # e.g. grad_checkpoint
        if stored.get("pretrained") and not (run_dir / CHECKPOINT).is_file():  # stopped before its 1st checkpoint
            return _initial_model(None, stored["pretrained"], requested, run_dir, settings, head)
        return StudyClassifier(config)
    if pretrained is None:
        return StudyClassifier(model_config(**{"drop_path": settings.drop_path, **requested, **head}))
    source = load(pretrained)
    fixed = {k: v for k, v in requested.items() if k not in RESIZABLE}
    check_requested(Path(pretrained), source.config.to_dict(), fixed)
    if isinstance(source, StudyClassifier):
        raise RunError(f"{pretrained}: is a fine-tuned model; --from takes a pretraining run")
    resized = {k: v for k, v in requested.items() if k in RESIZABLE}
    return StudyClassifier.from_pretrained(source, drop_path=settings.drop_path, **resized, **head)


@torch.no_grad()
def evaluate_validation(model: torch.nn.Module, dataset: StudyDataset, weight: torch.Tensor, device: torch.device,
                        precision: str) -> dict:
    """Mean masked BCE (``loss``), mean AUROC (``auroc``, None when no label is scored), the ``probabilities``
    and the column indices of the ``scored`` labels over a split."""
    was_training = model.training
    model.eval()
    total, count, chunks = 0.0, 0.0, []
    loader = torch.utils.data.DataLoader(dataset, batch_size=EVAL_BATCH_STUDIES, collate_fn=collate_studies)
    for batch in loader:
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(batch["images"], batch["lengths"])
        mask = batch["label_mask"]
        total += float(masked_bce(logits, batch["labels"], mask, weight) * mask.sum())
        count += float(mask.sum())
        chunks.append(torch.sigmoid(logits.float()).cpu().numpy())
    model.train(was_training)
    probabilities = np.concatenate(chunks) if chunks else np.zeros((0, len(dataset.label_names)), np.float32)
    metrics = label_metrics(probabilities, dataset.labels, dataset.label_mask, resamples=0, labels=dataset.label_names)
    return {"loss": total / max(count, 1.0), "auroc": metrics["mean"]["auroc"], "probabilities": probabilities,
            "scored": scored_labels(metrics)}


@torch.no_grad()
def predict_split(model: StudyClassifier, dataset: StudyDataset, device: torch.device, progress: bool) -> np.ndarray:
    """Label probabilities ``[studies, 14]`` of a split."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=EVAL_BATCH_STUDIES, collate_fn=collate_studies)
    chunks = [model.predict(b["images"].to(device), b["lengths"].to(device)).float().cpu().numpy()
              for b in tqdm(loader, desc="test", unit="batch", disable=not progress)]
    return np.concatenate(chunks) if chunks else np.zeros((0, model.config.num_labels), np.float32)


def evaluate_test_split(model: StudyClassifier, store: Store, settings: FinetuneSettings, device: torch.device,
                        progress: bool, absent: dict[str, str] | None = None) -> tuple[dict, Predictions]:
    """Per-label and mean AUROC / AUPRC (with patient-bootstrap intervals) and F1 at 0.5 of the test split,
    and its per-study predictions. Labels in ``absent`` (name -> reason) are reported absent."""
    test_set = StudyDataset(store, split="test", label_policy=settings.label_policy, max_views=settings.max_views,
                            labelled_only=True)
    if len(test_set) == 0:
        raise ValueError("the store has no labelled test studies to evaluate on")
    probabilities = predict_split(model, test_set, device, progress)
    metrics = label_metrics(probabilities, test_set.labels, test_set.label_mask, absent=absent,
                            subjects=test_set.subject_ids, resamples=settings.resamples, seed=settings.seed,
                            labels=test_set.label_names)
    metrics["split"] = "test"
    predictions = Predictions(test_set.study_ids, test_set.subject_ids, probabilities.astype(np.float64),
                              test_set.labels, test_set.label_mask > 0, test_set.label_names)
    return metrics, predictions


def write_test_metrics(metrics: dict, path: Path) -> None:
    """``test_metrics.json`` and its readable table (``test_metrics.txt``), atomically."""
    write_json(path, metrics)
    with atomic_path(path.with_suffix(".txt")) as tmp:
        tmp.write_text(format_table(metrics, "fine-tuned model on the test split") + "\n")


SEEDS_FILE = "seeds.json"


def finetune_seeds(store_path: str | Path, run_dir: str | Path, seeds: list[int], pretrained: str | Path | None = None,
                   model: dict | None = None, train: dict | None = None, resume: bool = False,
                   device: str | list[int] = "auto", progress: bool = True) -> dict:
    """:func:`finetune` once per seed (subset and initialisation) into ``run_dir/seed-S``, then ``seeds.json``:
    each seed's test means and the mean ± sd over seeds. Finished seeds are kept; ``resume`` continues the others."""
    run_dir = Path(run_dir)
    summaries = []
    for seed in seeds:
        seed_dir = run_dir / f"seed-{seed}"
        if is_finished(seed_dir):
            summaries.append(read_json(seed_dir / SUMMARY))
            continue
        summaries.append(finetune(store_path, seed_dir, pretrained, model, {**(train or {}), "seed": seed},
                                  resume=resume and (seed_dir / CONFIG).is_file(), device=device, progress=progress))
    result = {"seeds": [{"seed": seed, "run": f"seed-{seed}", **summary["test"]} for seed, summary in zip(seeds, summaries)],
              "over_seeds": over_seeds([summary["test"]["mean"] for summary in summaries])}
    write_json(run_dir / SEEDS_FILE, result)
    return result
