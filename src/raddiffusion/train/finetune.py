"""Supervised fine-tuning of the study encoder with a linear head, then the test-split metrics.

SPEC §4: BCE with logits, ``pos_weight = 1/sqrt(prevalence)`` per label from the train split, AdamW
with weight decay 0.05, warm-up + cosine, early stopping on the validation loss, best weights kept
(``model.safetensors``), then per-label and mean AUROC / AUPRC / F1 on the test split
(``test_metrics.json``). Under the ``ignore`` policy masked labels are left out of the loss.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.store import Store, open_store
from ..data.studies import StudyDataset, collate_studies
from ..fileio import atomic_path, read_json, write_json
from ..models import StudyClassifier, model_config
from ..models.presets import ModelConfig
from . import distributed
from .batches import EpochPlan
from .checkpoint import load, save_model
from .loop import (
    accumulate_gradients,
    check_finite,
    check_precision,
    check_store_fits,
    micro_batch_loader,
    open_run,
    resolve_settings,
    to_device,
    wrap_for_training,
)
from .metrics import format_table, label_metrics
from .optim import build_optimizer, set_learning_rate, warmup_cosine
from ..visual.study import ATTENTION, FIGURES, attention_map_figure
from .pretrain import figure_reference
from .runs import CHECKPOINT, CONFIG, SUMMARY, MetricsLog, RunError, check_requested, load_checkpoint, save_checkpoint

BEST_WEIGHTS = "model.safetensors"
TEST_METRICS = "test_metrics.json"
EVAL_BATCH_STUDIES = 64
MAY_CHANGE_ON_RESUME = {"save_every", "workers", "compile", "reference_study"}


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning settings; the defaults are the original recipe's (SPEC §4)."""

    epochs: int = 20
    batch_size: int = 64  # studies per optimizer step, over all processes
    accumulation: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    patience: int = 5  # epochs without a lower validation loss before stopping
    save_every: int = 200
    workers: int = 4
    seed: int = 0
    precision: str = "fp32"
    compile: bool = False
    label_policy: str = "ones"
    max_views: int | None = None
    reference_study: int | None = None  # its attention maps are drawn; default: first validation study, 2+ views

    def __post_init__(self) -> None:
        check_precision(self.precision)


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
    torch.manual_seed(settings.seed)
    net = _initial_model(stored, pretrained, model, run_dir).to(process.device)
    check_store_fits(store, net.config, store_path)

    def dataset(split: str) -> StudyDataset:
        return StudyDataset(store, split=split, label_policy=settings.label_policy, max_views=settings.max_views,
                            labelled_only=True)

    train_set, val_set = dataset("train"), dataset("validate")
    views = train_set.view_counts()
    steps_per_epoch = len(train_set) // settings.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {settings.batch_size} is larger than the {len(train_set)} labelled train "
                         f"studies of {store_path}")
    if len(val_set) == 0:
        raise ValueError(f"{store_path} has no labelled validate studies: early stopping needs them")
    if len(dataset("test")) == 0:
        raise ValueError(f"{store_path} has no labelled test studies: fine-tuning ends by testing on them")
    weight = pos_weight(train_set).to(process.device)
    distributed.barrier(process)  # every process has checked the run directory before it is written
    if process.is_main and stored is None:
        write_json(run_dir / CONFIG, {
            "command": "finetune", "store": str(store_path), "pretrained": str(pretrained) if pretrained else None,
            "model": net.config.to_dict(), "train": asdict(settings),
            "data": {"train_studies": len(train_set), "validate_studies": len(val_set),
                     "steps_per_epoch": steps_per_epoch, "pos_weight": weight.tolist()},
        })

    optimizer = build_optimizer(net, settings.lr, settings.weight_decay)
    checkpoint = run_dir / CHECKPOINT
    state = {"step": 0, "epoch_loss": 0.0, "best_val_loss": None, "best_epoch": 0, "bad_epochs": 0,
             "epochs_run": 0, "seconds": 0.0}
    if resume and checkpoint.is_file():
        state = load_checkpoint(checkpoint, net, optimizer)
    log = MetricsLog(run_dir, enabled=process.is_main)
    log.keep_until(state["step"])
    trainer = wrap_for_training(net, process, settings.compile)
    total_steps = settings.epochs * steps_per_epoch

    def objective(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return masked_bce(model(batch["images"], batch["lengths"]), batch["labels"], batch["label_mask"], weight)

    started = time.perf_counter() - state["seconds"]
    for epoch in range(state["step"] // steps_per_epoch, settings.epochs):
        if state["bad_epochs"] >= settings.patience:
            break
        plan = EpochPlan(views, settings.batch_size, settings.accumulation, process.rank, process.ranks,
                         settings.seed, epoch)
        first = state["step"] - epoch * steps_per_epoch
        batches = iter(micro_batch_loader(train_set, plan, first, settings.workers, process.device))
        bar = tqdm(range(first, steps_per_epoch), desc=f"finetune epoch {epoch + 1}/{settings.epochs}", unit="step",
                   disable=not (progress and process.is_main), dynamic_ncols=True)
        for step_in_epoch in bar:
            step = epoch * steps_per_epoch + step_in_epoch
            lr = settings.lr * warmup_cosine(step, total_steps, settings.warmup_fraction)
            set_learning_rate(optimizer, lr)
            micro = [to_device(next(batches), process.device) for _ in range(settings.accumulation)]
            shares = [len(batch["lengths"]) / settings.batch_size for batch in micro]
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
        bar.close()
        val_loss = evaluate_loss(net, val_set, weight, process.device, settings.precision)
        improved = state["best_val_loss"] is None or val_loss < state["best_val_loss"]
        state.update(epochs_run=epoch + 1, bad_epochs=0 if improved else state["bad_epochs"] + 1)
        if improved:
            state.update(best_val_loss=val_loss, best_epoch=epoch + 1)
            if process.is_main:
                save_model(net, run_dir / BEST_WEIGHTS)
        log.write({"kind": "epoch", "step": state["step"], "epoch": epoch + 1,
                   "loss": state["epoch_loss"] / steps_per_epoch, "val_loss": val_loss, "best": improved})
        if progress and process.is_main:
            tqdm.write(f"epoch {epoch + 1}: validation loss {val_loss:.4f}"
                       + (" (best so far)" if improved else f" ({state['bad_epochs']} without improvement)"))
        state["epoch_loss"] = 0.0
        if process.is_main:
            save_checkpoint(checkpoint, net, optimizer, state)
        distributed.barrier(process)

    summary = {"command": "finetune", "epochs_run": state["epochs_run"], "best_epoch": state["best_epoch"],
               "best_val_loss": state["best_val_loss"], "steps": state["step"], "seconds": round(state["seconds"], 1)}
    if process.is_main:
        best = load(run_dir / BEST_WEIGHTS).to(process.device)
        metrics = evaluate_test_split(best, store, settings, process.device, progress)
        write_test_metrics(metrics, run_dir / TEST_METRICS)
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


def _initial_model(stored: dict | None, pretrained, requested: dict, run_dir: Path) -> StudyClassifier:
    """A resumed run's architecture, the pretrained encoder (+ a fresh head), or a random one."""
    if stored is not None:
        config = ModelConfig(**stored["model"])
        check_requested(run_dir, config.to_dict(), requested)
        if stored.get("pretrained") and not (run_dir / CHECKPOINT).is_file():
            return _initial_model(None, stored["pretrained"], requested, run_dir)  # stopped before its 1st checkpoint
        return StudyClassifier(config)
    if pretrained is None:
        return StudyClassifier(model_config(**requested))
    source = load(pretrained)
    check_requested(Path(pretrained), source.config.to_dict(), requested)
    if isinstance(source, StudyClassifier):
        raise RunError(f"{pretrained}: is a fine-tuned model; --from takes a pretraining run")
    return StudyClassifier.from_pretrained(source)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, dataset: StudyDataset, weight: torch.Tensor, device: torch.device,
                  precision: str) -> float:
    """Mean masked BCE over a split (every process computes the same value)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    loader = torch.utils.data.DataLoader(dataset, batch_size=EVAL_BATCH_STUDIES, collate_fn=collate_studies)
    for batch in loader:
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(batch["images"], batch["lengths"])
        mask = batch["label_mask"]
        total += float(masked_bce(logits, batch["labels"], mask, weight) * mask.sum())
        count += float(mask.sum())
    model.train(was_training)
    return total / max(count, 1.0)


@torch.no_grad()
def predict_split(model: StudyClassifier, dataset: StudyDataset, device: torch.device, progress: bool) -> np.ndarray:
    """Label probabilities ``[studies, 14]`` of a split."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=EVAL_BATCH_STUDIES, collate_fn=collate_studies)
    chunks = [model.predict(b["images"].to(device), b["lengths"].to(device)).float().cpu().numpy()
              for b in tqdm(loader, desc="test", unit="batch", disable=not progress)]
    return np.concatenate(chunks) if chunks else np.zeros((0, model.config.num_labels), np.float32)


def evaluate_test_split(model: StudyClassifier, store: Store, settings: FinetuneSettings, device: torch.device,
                 progress: bool) -> dict:
    """Per-label and mean AUROC / AUPRC / F1 at 0.5 of the test split."""
    test_set = StudyDataset(store, split="test", label_policy=settings.label_policy, max_views=settings.max_views,
                            labelled_only=True)
    if len(test_set) == 0:
        raise ValueError("the store has no labelled test studies to evaluate on")
    metrics = label_metrics(predict_split(model, test_set, device, progress), test_set.labels, test_set.label_mask)
    metrics["split"] = "test"
    return metrics


def write_test_metrics(metrics: dict, path: Path) -> None:
    """``test_metrics.json`` and its readable table (``test_metrics.txt``), atomically."""
    write_json(path, metrics)
    with atomic_path(path.with_suffix(".txt")) as tmp:
        tmp.write_text(format_table(metrics, "fine-tuned model on the test split") + "\n")
