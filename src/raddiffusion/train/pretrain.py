"""Pretraining (vanilla MAE or DiffMAE) on the train split of one store or several pooled, with linear probes as it goes.

Readable in one sitting: settings, then :func:`pretrain` — set up the run, then for every step
take this rank's micro-batches, accumulate gradients, step AdamW, log; at the end of every epoch
probe (when due), save the checkpoint and the model.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.store import open_store
from ..data.studies import PooledStudies, StudyDataset
from ..fileio import read_json, write_json
from ..models import from_config, model_config
from ..models.presets import RUNTIME_FIELDS, ModelConfig, saved_config
from . import distributed
from .batches import EpochPlan, micro_batch_generator, seed_step
from .checkpoint import save_model
from .interop import InitPlan, apply_init, plan_init
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
    unwrap,
    wrap_for_training,
)
from ..results.metrics import format_metric
from .optim import build_optimizer, set_learning_rate, warmup_cosine
from .preemption import Preemption
from .probe import DEFAULT_SOLVER, ProbeOptions, check_solver, embed_split, probe_splits, write_probe
from ..visual.study import ANIMATION, FIGURES, reconstruction_figures, reference_study
from ..results.runfiles import CHECKPOINT, CONFIG, PROBE_DIR, SUMMARY, run_stores
from .runs import MetricsLog, RunError, check_requested, load_checkpoint, save_checkpoint

PROBE_BATCH_STUDIES = 64
MAY_CHANGE_ON_RESUME = {"probe_every", "probe_solver", "save_every", "workers", "compile",  # weights unchanged
                        "reference_study", "micro_batch"}  # settled when the run started: a resumed run keeps its accumulation


@dataclass(frozen=True)
class PretrainSettings:
    """Training settings; the defaults are the original method's (SPEC §4)."""

    epochs: int = 200
    batch_size: int = 512  # studies per optimizer step, over all processes
    accumulation: int = 1  # micro-batches per process and step
    micro_batch: int | str | None = None  # studies per micro-batch, or "auto" (GPU); sets accumulation on a new run
    lr: float = 1.4e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    probe_every: int = 10  # epochs; 0 = only at the end
    probe_solver: str = DEFAULT_SOLVER  # the linear probe's regressions: "torch" (all labels at once) or "sklearn"
    save_every: int = 200  # steps between checkpoints (and at every epoch end)
    workers: int = 4
    seed: int = 0
    precision: str = "fp32"
    compile: bool = False
    label_policy: str = "ones"  # of the probe's labels
    max_views: int | None = None
    reference_study: int | None = None  # drawn every epoch; default: the first validation study with 2+ views

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_micro_batch(self.micro_batch)
        check_solver(self.probe_solver)
        for name in ("epochs", "batch_size", "accumulation", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")


def probe_due(epoch: int, settings: PretrainSettings) -> bool:
    """Probe after epoch ``epoch`` (1-based; 0 = the initialised encoder)?"""
    every = settings.probe_every
    return epoch == 0 or epoch == settings.epochs or (every > 0 and epoch % every == 0)


@releases_run_lock
def pretrain(
    store_path: str | Path | list[str | Path],
    run_dir: str | Path,
    model: dict | None = None,
    train: dict | None = None,
    resume: bool = False,
    device: str | list[int] = "auto",
    progress: bool = True,
    probe_store: str | Path | None = None,
    init: str | Path | None = None,
) -> dict:
    """Pretrain into ``run_dir``; returns the summary also written to ``run_dir/summary.json``.

    ``store_path``: one store or a list of stores whose train splits are pooled (their image sizes
    must agree); probes and figures use ``probe_store`` (default: the first store). ``model``:
    ``preset``, ``scheme`` and any :class:`ModelConfig` field; ``train``: any :class:`PretrainSettings`
    field. When resuming, the run's stored configuration is used and the given values must agree with
    it (except ``probe_every``, ``save_every``, ``workers``, ``compile``). ``init``: weights the new model starts
    from (an MAE / timm checkpoint, a Hugging Face ViTMAE folder, the original implementation's; see
    :mod:`.interop`), checked before the run directory is written; a resumed run keeps its own.
    """
    run_dir, model, train = Path(run_dir), dict(model or {}), dict(train or {})
    paths = [Path(p) for p in store_path] if isinstance(store_path, (list, tuple)) else [Path(store_path)]
    process, stored = open_run(run_dir, resume, device)
    config = _resolve_model(stored, model, run_dir)
    settings = resolve_settings(PretrainSettings, stored and stored["train"], train, MAY_CHANGE_ON_RESUME, run_dir)
    init = _resolve_init(stored, init, run_dir)

    if stored is not None:
        _check_same_stores(run_dir, stored, paths)
    stores = [open_store(path) for path in paths]
    for path, one in zip(paths, stores):
        check_store_fits(one, config, path)
    store = open_store(probe_store) if probe_store else stores[0]
    check_store_fits(store, config, probe_store or paths[0])
    parts = [StudyDataset(one, split="train", max_views=settings.max_views) for one in stores]
    dataset = parts[0] if len(parts) == 1 else PooledStudies(parts)
    views = dataset.view_counts()
    steps_per_epoch = len(dataset) // settings.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {settings.batch_size} is larger than the {len(dataset)} train studies "
                         f"of {', '.join(map(str, paths))}")
    total_steps = settings.epochs * steps_per_epoch
    if stored is None and settings.micro_batch is not None:
        micro, accumulation = resolve_micro_batch(settings.micro_batch, settings.batch_size, process.ranks,
                                                  int(views.max()), process.device, settings.precision,
                                                  lambda: from_config(config))
        settings = replace(settings, micro_batch=micro, accumulation=accumulation)
    checkpoint = run_dir / CHECKPOINT
    init_plan = _init_plan(init, config) if init is not None and not (resume and checkpoint.is_file()) else None
    distributed.barrier(process)  # every process has checked the run directory before the main one writes to it
    if process.is_main:
        write_json(run_dir / CONFIG, {
            "command": "pretrain", "store": str(paths[0]), "stores": [str(p) for p in paths],
            "datasets": [one.dataset for one in stores], "probe_store": str(probe_store or paths[0]),
            "model": config.to_dict(), "train": asdict(settings), "init": str(init) if init else None,
            "data": {"train_studies": len(dataset), "train_images": int(views.sum()), "steps_per_epoch": steps_per_epoch,
                     "train_studies_per_store": [len(part) for part in parts]},
        })

    torch.manual_seed(settings.seed)
    tune_allocator(process, config)
    net = from_config(config).to(process.device)
    optimizer = build_optimizer(net, settings.lr, settings.weight_decay)
    state = {"step": 0, "epoch_loss": 0.0, "last_epoch_loss": None, "seconds": 0.0, "probe_seconds": 0.0}
    init_line = f"init: {init} (when the run started)" if init else None
    if resume and checkpoint.is_file():
        state = {"probe_seconds": 0.0, **load_checkpoint(checkpoint, net, optimizer)}  # older runs did not count it
    elif init_plan is not None:
        init_line = apply_init(net, init_plan).line()
        init_plan = None  # drop the file's tensors
    log = MetricsLog(run_dir, enabled=process.is_main)
    log.keep_until(state["step"])
    trainer = wrap_for_training(net, process, settings.compile)
    figure_study = figure_reference(store, settings.reference_study) if process.is_main else None
    started = time.perf_counter() - state["seconds"]

    def probe_after(epoch: int) -> None:
        state["probe_seconds"] += _probe(net, store, epoch, settings, process, run_dir, progress)
        state["seconds"] = time.perf_counter() - started

    if state["step"] == 0:
        probe_after(0)

    def objective(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["images"], batch["lengths"], batch["generator"])

    loader, epoch_batches = training_loader(dataset, settings.workers, process.device)
    with Preemption(process) as preemption:  # SIGTERM / SIGUSR1: stop after a step with the checkpoint written
        for epoch in range(state["step"] // steps_per_epoch, settings.epochs):
            plan = EpochPlan(views, settings.batch_size, settings.accumulation, process.rank, process.ranks,
                             settings.seed, epoch)
            first = state["step"] - epoch * steps_per_epoch
            epoch_batches.start(plan, first)
            batches = iter(loader)
            bar = tqdm(range(first, steps_per_epoch), desc=f"epoch {epoch + 1}/{settings.epochs}", unit="step",
                       disable=not (progress and process.is_main), dynamic_ncols=True)
            for step_in_epoch in bar:
                step_started = time.perf_counter()
                step = epoch * steps_per_epoch + step_in_epoch
                lr = settings.lr * warmup_cosine(step, total_steps, settings.warmup_fraction)
                set_learning_rate(optimizer, lr)
                micro = [to_device(next(batches), process.device) for _ in range(settings.accumulation)]
                for mb, batch in zip(plan.micro_batches(step_in_epoch), micro):
                    batch["generator"] = micro_batch_generator(settings.seed, step, mb.index, process.device)
                global_images = plan.images(step_in_epoch)
                shares = [len(batch["images"]) / global_images for batch in micro]
                seed_step(settings.seed, step, process.rank)
                local = accumulate_gradients(trainer, micro, shares, process.ranks, objective, settings.precision)
                loss = distributed.global_sum(local, process).item()
                check_finite(loss, step + 1, checkpoint)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.update(step=step + 1, epoch_loss=state["epoch_loss"] + loss, seconds=time.perf_counter() - started)
                images_per_s = global_images / (time.perf_counter() - step_started)
                log.write({"kind": "step", "step": step + 1, "epoch": epoch + 1, "loss": loss, "lr": lr,
                           "images_per_s": round(images_per_s, 1)})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.0f}")
                if (step + 1) % settings.save_every == 0 and step_in_epoch + 1 < steps_per_epoch and process.is_main:
                    save_checkpoint(checkpoint, net, optimizer, state)
                if step_in_epoch + 1 < steps_per_epoch:  # at an epoch's end: once its checkpoint is written
                    preemption.stop_if_requested(state["step"], checkpoint,
                                                 lambda: save_checkpoint(checkpoint, net, optimizer, state))
            bar.close()
            state.update(last_epoch_loss=state["epoch_loss"] / steps_per_epoch, epoch_loss=0.0)
            log.write({"kind": "epoch", "step": state["step"], "epoch": epoch + 1, "loss": state["last_epoch_loss"],
                       "seconds": round(state["seconds"], 1)})
            if probe_due(epoch + 1, settings):
                probe_after(epoch + 1)
            if process.is_main:
                if figure_study is not None:
                    reconstruction_figures(net, *figure_study, run_dir / FIGURES, f"epoch_{epoch + 1:03d}",
                                           animation=run_dir / FIGURES / ANIMATION if epoch + 1 == settings.epochs else None)
                save_checkpoint(checkpoint, net, optimizer, state)
                save_model(net, run_dir / "model.safetensors")
            distributed.barrier(process)
            preemption.stop_if_requested(state["step"], checkpoint)

    summary = _summary(run_dir, config, settings, state)
    summary["init"] = init_line
    if process.is_main:
        write_json(run_dir / SUMMARY, summary)
    log.close()
    return summary


def figure_reference(store, study_id: int | None) -> tuple[dict, int] | None:
    """The reference study of the figures, or None (with a note) when the store has none to offer."""
    try:
        return reference_study(store, study_id)
    except ValueError as exc:
        tqdm.write(f"no figures of a reference study: {exc}")
        return None


def _check_same_stores(run_dir: Path, stored: dict, paths: list[Path]) -> None:
    """A resumed run must pool the same stores in the same order (the epochs' batches depend on them)."""
    before = [Path(p).resolve() for p in run_stores(stored)]
    if before != [p.resolve() for p in paths]:
        raise RunError(f"{run_dir} was pretrained on {', '.join(map(str, before))}; resume it with the same "
                       "STORE arguments, in the same order")


def _resolve_model(stored: dict | None, requested: dict, run_dir: Path) -> ModelConfig:
    if stored is None:
        return model_config(**requested)
    config = saved_config(stored["model"])
    check_requested(run_dir, config.to_dict(), {k: v for k, v in requested.items() if k not in RUNTIME_FIELDS})
    return replace(config, **{k: v for k, v in requested.items() if k in RUNTIME_FIELDS})  # e.g. grad_checkpoint


def _resolve_init(stored: dict | None, init: str | Path | None, run_dir: Path) -> Path | None:
    """The weights a run starts from: ``init`` for a new run; a resumed run's own (``init`` must not say otherwise)."""
    if stored is None:
        return None if init is None else Path(init)
    before = stored.get("init")
    if init is not None and (before is None or Path(before).resolve() != Path(init).resolve()):
        raise RunError(f"{run_dir} was started {f'from {before}' if before else 'without --init'}; "
                       "resume it without --init")
    return None if before is None else Path(before)


def _init_plan(init: Path, config: ModelConfig) -> InitPlan:
    """Read ``init`` and fit it to the model of ``config`` (shapes only: built on the meta device, no memory)."""
    with torch.device("meta"):
        shapes = from_config(config)
    return plan_init(init, shapes)


def _probe(net, store, epoch: int, settings: PretrainSettings, process, run_dir: Path, progress: bool) -> float:
    """Linear probe of the frozen encoder (train -> validate): every process embeds its share of the studies, the
    main one fits and writes while the others wait. Returns the seconds it took.

    A store without labels (a DICOM export preprocessed without --labels) has nothing to probe: a note at epoch 0.
    """
    if not store.label_names:
        if epoch == 0 and process.is_main and progress:
            tqdm.write(f"no linear probes: {store.root} has no labels (pretraining only)")
        return 0.0
    started = time.perf_counter()
    train, validate = (embed_split(unwrap(net), store, split, settings.label_policy, PROBE_BATCH_STUDIES,
                                   process.device, settings.workers, progress, process)
                       for split in ("train", "validate"))
    if process.is_main:
        options = ProbeOptions(seeds=(settings.seed,), solver=settings.probe_solver)
        metrics, predictions = probe_splits(train, validate, options, process.device)
        metrics["epoch"] = epoch
        write_probe(metrics, run_dir / PROBE_DIR / f"epoch_{epoch:03d}.json", predictions)
        mean = metrics["mean"]
        if progress:
            tqdm.write(f"probe after epoch {epoch}: mean AUROC {format_metric(mean['auroc'])}, "
                       f"AUPRC {format_metric(mean['auprc'])} over {mean['labels']} labels "
                       f"({time.perf_counter() - started:.1f}s)")
    distributed.barrier(process)
    return time.perf_counter() - started


def _summary(run_dir: Path, config: ModelConfig, settings: PretrainSettings, state: dict) -> dict:
    probes = sorted((run_dir / PROBE_DIR).glob("epoch_*.json"))
    last = read_json(probes[-1]) if probes else None
    return {
        "command": "pretrain", "scheme": config.scheme, "preset": config.preset, "epochs": settings.epochs,
        "steps": state["step"], "final_epoch_loss": state["last_epoch_loss"], "seconds": round(state["seconds"], 1),
        "probe_seconds": round(state["probe_seconds"], 1),
        "probe": {"epoch": last["epoch"], "mean": last["mean"]} if last else None,
    }
