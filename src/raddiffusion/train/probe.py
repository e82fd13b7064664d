"""Probes of frozen study vectors: linear (a balanced logistic regression per label) or kNN, on label fractions.

The linear probe's regressions are fitted all at once in torch (:mod:`.logistic`, ``solver="torch"``, the default) on
the device the model runs on, or one after another by scikit-learn (``solver="sklearn"``, the reference; both
minimise the same objective). With several processes (DDP), every process embeds its share of the studies
(:func:`study_vectors`) and the main process fits.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.fractions import check_fraction, label_fraction_subset
from ..data.store import Store
from ..data.studies import StudyDataset, collate_study_pixels, loader_workers, unit_range
from ..data.tree import SPLITS
from ..fileio import atomic_path, write_json
from ..results.bootstrap import DEFAULT_RESAMPLES
from ..results.metrics import METRICS, format_interval, format_metric, format_table, label_metrics
from ..results.predictions import PREDICTIONS_SUFFIX, Predictions, write_predictions
from . import distributed
from .distributed import Process
from .logistic import balanced_weights, fit_logistic

MAX_ITER = 1000  # logistic-regression solver iterations
ONE_CLASS_IN_TRAIN = "only one class in train"
TABLE_SUFFIX = ".txt"
PROBE_METHODS = ("linear", "knn")
PROBE_SOLVERS = ("torch", "sklearn")
DEFAULT_SOLVER = "torch"
DEFAULT_K = 20  # neighbours of the kNN probe
KNN_CHUNK = 256  # eval rows whose similarities to all train rows are held at once


def study_vectors(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    description: str = "embed",
    process: Process | None = None,
) -> np.ndarray:
    """``model.embed`` of every study of ``dataset``, in order: float32 ``[len(dataset), width]``.

    Runs without gradients in eval mode, then restores the model's training mode. Batches cross to
    ``device`` (where the model must already be) as uint8 and become floats there; ``num_workers``
    loader processes read the store meanwhile. A wrapped model (DDP: ``.module``) is unwrapped. With the
    ``process`` of a DDP job, every process embeds every ``ranks``-th batch of ``batch_size`` studies and all of
    them return every study's vector: the batches are those one process would embed, so are the vectors.
    """
    net = model.module if hasattr(model, "module") else model
    device = torch.device(device)
    process = process or Process(0, 1, 0, device)
    batches = [list(range(start, min(start + batch_size, len(dataset)))) for start in range(0, len(dataset), batch_size)]
    mine = batches[process.rank :: process.ranks]
    loader = DataLoader(dataset, batch_sampler=mine, num_workers=loader_workers(num_workers),
                        collate_fn=collate_study_pixels, pin_memory=device.type == "cuda")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            chunks = [
                net.embed(unit_range(batch["images"].to(device, non_blocking=True)), batch["lengths"].to(device))
                .float()
                for batch in tqdm(loader, desc=description, unit="batch", disable=not (progress and process.is_main))
            ]
    finally:
        net.train(was_training)
    local = torch.cat(chunks) if chunks else torch.zeros((0, net.config.width), device=device)
    counts = [sum(len(batch) for batch in batches[rank :: process.ranks]) for rank in range(process.ranks)]
    return _in_study_order(distributed.gather_rows(local, counts, process), [len(b) for b in batches], process.ranks)


def _in_study_order(per_rank: list[torch.Tensor], batch_sizes: list[int], ranks: int) -> np.ndarray:
    """The gathered rows (process ``r`` holds batches ``r, r + ranks, ...``) back in batch order, on the CPU."""
    offsets = [0] * ranks
    rows = []
    for number, size in enumerate(batch_sizes):
        owner = number % ranks
        rows.append(per_rank[owner][offsets[owner] : offsets[owner] + size])
        offsets[owner] += size
    width = per_rank[0].shape[1]
    return torch.cat(rows).cpu().numpy() if rows else np.zeros((0, width), dtype=np.float32)


def fit_label_regressions(
    train_x: np.ndarray, train_y: np.ndarray, train_mask: np.ndarray, seed: int = 0
) -> tuple[StandardScaler, list[LogisticRegression | None]]:
    """The standardisation of ``train_x`` and one balanced logistic regression per label column on the
    standardised rows whose mask is 1 (``None`` for a label with a single class among them)."""
    scaler = StandardScaler().fit(train_x)
    train_z = scaler.transform(train_x)
    fitted = []
    for k in range(train_y.shape[1]):
        rows, targets = _fitted_rows(train_y, train_mask, k)
        if np.unique(targets).size < 2:
            fitted.append(None)
            continue
        classifier = LogisticRegression(class_weight="balanced", max_iter=MAX_ITER, random_state=seed)
        fitted.append(classifier.fit(train_z[rows], targets))
    return scaler, fitted


def linear_probe_scores(
    train_x: np.ndarray, train_y: np.ndarray, train_mask: np.ndarray, eval_x: np.ndarray, labels: tuple[str, ...],
    seed: int = 0, solver: str = DEFAULT_SOLVER, device: str | torch.device = "cpu",
) -> tuple[np.ndarray, dict[str, str]]:
    """Probabilities ``[eval, len(labels)]`` of one balanced logistic regression per label on standardised vectors.

    Only train rows whose mask is 1 are fitted. A label with a single class among them is returned
    in ``absent`` (name -> ``only one class in train``) with probabilities 0. ``solver``: ``torch`` (every label
    at once on ``device``) or ``sklearn`` (one after another on the CPU).
    """
    check_solver(solver)
    if solver == "torch":
        return _batched_probe_scores(train_x, train_y, train_mask, eval_x, labels, torch.device(device))
    scaler, fitted = fit_label_regressions(train_x, train_y, train_mask, seed)
    eval_z = scaler.transform(eval_x)
    probabilities = np.zeros((len(eval_x), len(labels)), dtype=np.float64)
    absent = {}
    for k, (name, classifier) in enumerate(zip(labels, fitted)):
        if classifier is None:
            absent[name] = ONE_CLASS_IN_TRAIN
            continue
        probabilities[:, k] = classifier.predict_proba(eval_z)[:, 1]
    return probabilities, absent


def check_solver(solver: str) -> None:
    if solver not in PROBE_SOLVERS:
        raise ValueError(f"probe solver must be one of {', '.join(PROBE_SOLVERS)}, not {solver!r}")


def _batched_probe_scores(train_x, train_y, train_mask, eval_x, labels, device) -> tuple[np.ndarray, dict[str, str]]:
    """:func:`linear_probe_scores` with every label fitted at once (:func:`.logistic.fit_logistic`) on ``device``."""
    x = torch.as_tensor(np.asarray(train_x, np.float32), device=device)
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    scale = torch.where(scale > 0, scale, 1)  # a constant feature stays as it is, as StandardScaler leaves it
    targets = torch.as_tensor(np.asarray(train_y, np.float32), device=device)
    weights = balanced_weights(targets, torch.as_tensor(np.asarray(train_mask, np.float32), device=device))
    fitted = fit_logistic((x - mean) / scale, targets, weights)
    del x
    evaluate = torch.as_tensor(np.asarray(eval_x, np.float32), device=device)
    probabilities = fitted.probabilities((evaluate - mean) / scale).double()
    single_class = (weights.sum(0) == 0).cpu().numpy()
    probabilities[:, torch.as_tensor(single_class, device=device)] = 0.0
    absent = {name: ONE_CLASS_IN_TRAIN for name, single in zip(labels, single_class) if single}
    return probabilities.cpu().numpy(), absent


def knn_scores(
    train_x: np.ndarray, train_y: np.ndarray, train_mask: np.ndarray, eval_x: np.ndarray, labels: tuple[str, ...],
    k: int = DEFAULT_K,
) -> tuple[np.ndarray, dict[str, str]]:
    """Probabilities ``[eval, len(labels)]``: per label, the share of positives among the ``k`` nearest train studies.

    Nearness is the cosine similarity of the study vectors; only train rows whose mask is 1 count
    for a label. Labels with a single class among them are returned in ``absent``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    train_u, eval_u = _unit_rows(train_x), _unit_rows(eval_x)
    probabilities = np.zeros((len(eval_x), len(labels)), dtype=np.float64)
    absent = {}
    for label, name in enumerate(labels):
        rows, targets = _fitted_rows(train_y, train_mask, label)
        if np.unique(targets).size < 2:
            absent[name] = ONE_CLASS_IN_TRAIN
            continue
        neighbours = min(k, len(targets))
        for start in range(0, len(eval_u), KNN_CHUNK):
            similarity = eval_u[start : start + KNN_CHUNK] @ train_u[rows].T
            nearest = np.argpartition(-similarity, neighbours - 1, axis=1)[:, :neighbours]
            probabilities[start : start + KNN_CHUNK, label] = targets[nearest].mean(axis=1)
    return probabilities, absent


def _fitted_rows(train_y: np.ndarray, train_mask: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray]:
    """The train rows counted for ``label`` and their 0/1 targets."""
    rows = np.asarray(train_mask[:, label]).astype(bool)
    return rows, np.asarray(train_y[rows, label]).astype(int)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_mask: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    eval_mask: np.ndarray,
    labels: tuple[str, ...],
    seed: int = 0,
    eval_subjects: np.ndarray | None = None,
    solver: str = DEFAULT_SOLVER,
) -> dict:
    """:func:`linear_probe_scores` scored on eval: the :func:`label_metrics` dict (intervals over ``eval_subjects``)."""
    probabilities, absent = linear_probe_scores(train_x, train_y, train_mask, eval_x, labels, seed, solver)
    return label_metrics(probabilities, eval_y, eval_mask, absent=absent, subjects=eval_subjects, labels=labels)


@dataclass(frozen=True)
class ProbeOptions:
    """How frozen vectors are evaluated: method, label fraction and seeds of the train subset, intervals, and the
    linear probe's solver."""

    method: str = "linear"  # "linear" | "knn"
    label_fraction: float = 1.0
    seeds: tuple[int, ...] = (0,)
    k: int = DEFAULT_K
    resamples: int = DEFAULT_RESAMPLES
    solver: str = DEFAULT_SOLVER

    def __post_init__(self) -> None:
        if self.method not in PROBE_METHODS:
            raise ValueError(f"probe method must be one of {', '.join(PROBE_METHODS)}, not {self.method!r}")
        check_solver(self.solver)
        check_fraction(self.label_fraction)
        if not self.seeds:
            raise ValueError("at least one seed is needed")


@dataclass(frozen=True)
class SplitVectors:
    """The labelled studies of one split and their frozen study vectors."""

    dataset: StudyDataset
    vectors: np.ndarray
    split: str | None = None


def embed_split(model: nn.Module, store: Store, split: str, label_policy: str = "ones", batch_size: int = 64,
                device: str | torch.device = "cpu", num_workers: int = 0, progress: bool = True,
                process: Process | None = None) -> SplitVectors:
    """Frozen study vectors of the labelled studies of ``split`` (``ValueError`` when it has none); with the
    ``process`` of a DDP job every process embeds its share (see :func:`study_vectors`)."""
    dataset = _labelled_studies(store, split, label_policy)
    vectors = study_vectors(model, dataset, batch_size, device, num_workers, progress, description=f"embed {split}",
                            process=process)
    return SplitVectors(dataset, vectors, split)


def score_vectors(train: SplitVectors, evaluate: SplitVectors, options: ProbeOptions, seed: int,
                  device: str | torch.device = "cpu") -> tuple[dict, Predictions]:
    """One seed of a probe on frozen vectors: fit on the seed's label-fraction subset of train, score eval.

    Returns the :func:`label_metrics` dict (with the subset's size and the labels it lacks) and the
    per-study predictions of the eval split. The torch solver fits on ``device``.
    """
    labels = train.dataset.label_names
    subset, lacking = label_fraction_subset(train.dataset.subject_ids, train.dataset.labels, train.dataset.label_mask,
                                            options.label_fraction, seed, labels)
    x, y, mask = train.vectors[subset], train.dataset.labels[subset], train.dataset.label_mask[subset]
    if options.method == "knn":
        probabilities, absent = knn_scores(x, y, mask, evaluate.vectors, labels, options.k)
    else:
        probabilities, absent = linear_probe_scores(x, y, mask, evaluate.vectors, labels, seed, options.solver, device)
    absent = {**lacking, **absent}
    data = evaluate.dataset
    metrics = label_metrics(probabilities, data.labels, data.label_mask, absent=absent, subjects=data.subject_ids,
                            resamples=options.resamples, labels=labels)
    predictions = Predictions(data.study_ids, data.subject_ids, probabilities, data.labels, data.label_mask > 0, labels)
    details = {"method": options.method, "label_fraction": options.label_fraction, "seed": seed,
               "train_studies_used": len(subset)}
    if options.method == "knn":
        details["k"] = options.k
    else:
        details["solver"] = options.solver
    return {**details, **metrics}, predictions


def probe(model: nn.Module, store: Store, **options) -> dict:
    """Probe of a (frozen) model: fit on the labelled studies of ``train_split``, score ``eval_split``.

    Takes the options of :func:`probe_with_predictions`. Returns the :func:`label_metrics` dict of the
    eval split (of the first seed) plus ``train_split``, ``eval_split``, ``train_studies`` and
    ``eval_studies``; with several seeds also ``seeds`` (each seed's metrics) and ``over_seeds`` (mean
    and sd of the mean AUROC / AUPRC). ``ValueError`` if a split has no labelled study.
    """
    return probe_with_predictions(model, store, **options)[0]


def probe_with_predictions(
    model: nn.Module,
    store: Store,
    train_split: str = "train",
    eval_split: str = "validate",
    label_policy: str = "ones",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = True,
    options: ProbeOptions | None = None,
) -> tuple[dict, Predictions]:
    """:func:`probe`, and the eval split's per-study predictions of its first seed.

    ``options`` chooses linear or kNN, the label fraction, the seeds (default: ``seed`` alone) and
    the bootstrap; the other arguments say what is embedded and where.
    """
    store.require_labels("probe")
    options = options or ProbeOptions(seeds=(seed,))
    embed = {"model": model, "store": store, "label_policy": label_policy, "batch_size": batch_size,
             "device": device, "num_workers": num_workers, "progress": progress}
    train, evaluate = embed_split(split=train_split, **embed), embed_split(split=eval_split, **embed)
    return probe_splits(train, evaluate, options, device)


def probe_splits(train: SplitVectors, evaluate: SplitVectors, options: ProbeOptions,
                 device: str | torch.device = "cpu") -> tuple[dict, Predictions]:
    """:func:`probe_with_predictions` on vectors already embedded: every seed of ``options`` scored."""
    scored = [score_vectors(train, evaluate, options, s, device) for s in options.seeds]
    splits = {"train_split": train.split, "eval_split": evaluate.split,
              "train_studies": len(train.dataset), "eval_studies": len(evaluate.dataset)}
    return {**splits, **with_seeds([metrics for metrics, _ in scored])}, scored[0][1]


def with_seeds(results: list[dict]) -> dict:
    """One seed's result as it is; several: the first's fields, ``seeds`` (all) and ``over_seeds`` (mean ± sd)."""
    if len(results) == 1:
        return results[0]
    return {**results[0], "seeds": results, "over_seeds": over_seeds([r["mean"] for r in results])}


def over_seeds(means: list[dict]) -> dict:
    """Mean and sample sd over seeds of each mean metric (``None`` when a seed has no value)."""
    summary = {}
    for metric in METRICS:
        values = [m.get(metric) for m in means]
        if any(v is None for v in values):
            summary[metric] = {"mean": None, "sd": None, "seeds": len(values)}
            continue
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summary[metric] = {"mean": float(np.mean(values)), "sd": sd, "seeds": len(values)}
    return summary


def _labelled_studies(store: Store, split: str, label_policy: str) -> StudyDataset:
    """The labelled studies of one split (``ValueError`` when there are none).

    Counted before building the dataset: ``StudyDataset`` cannot be built over an empty selection.
    """
    index = store.index
    in_split = index["split"].to_numpy() == split if split is not None else np.ones(len(index), dtype=bool)
    labelled = np.isin(index["study_id"].to_numpy()[in_split], store.labels.index.to_numpy())
    if (split is None or split in SPLITS) and not labelled.any():
        raise ValueError(f"split {split!r} has no labelled studies to probe")
    return StudyDataset(store, split, label_policy, labelled_only=True)


def write_probe(metrics: dict, path: Path, predictions: Predictions | None = None) -> None:
    """Write probe ``metrics`` as JSON at ``path``, a text table next to it (same stem, ``.txt``) and,
    when given, the per-study ``predictions`` (same stem, ``.predictions.csv``); each atomically."""
    path = Path(path)
    table_path = path.with_suffix(TABLE_SUFFIX)
    if table_path == path:
        raise ValueError(f"{path}: the probe JSON needs a name that is not {TABLE_SUFFIX}")
    write_json(path, metrics)
    with atomic_path(table_path) as tmp:
        tmp.write_text(format_table(metrics, _title(metrics)) + format_seeds(metrics))
    if predictions is not None:
        write_predictions(predictions, path.with_suffix(PREDICTIONS_SUFFIX))


def format_seeds(result: dict) -> str:
    """Lines for a result over several seeds: each seed's mean AUROC, then mean ± sd (empty for one seed)."""
    if "seeds" not in result:
        return ""
    lines = [f"seed {r['seed']}: mean AUROC {format_metric(r['mean']['auroc'])} "
             f"{format_interval(r['mean'].get('auroc_ci95'))}" for r in result["seeds"]]
    auroc = result["over_seeds"]["auroc"]
    lines.append(f"over {auroc['seeds']} seeds: mean AUROC {format_mean_sd(auroc)}")
    return "\n".join(lines) + "\n"


def format_mean_sd(summary: dict) -> str:
    """``mean ± sd`` of an :func:`over_seeds` entry (``n/a`` without values)."""
    if summary["mean"] is None:
        return format_metric(None)
    return f"{format_metric(summary['mean'])} ± {format_metric(summary['sd'])}"


def _title(metrics: dict) -> str:
    """The table title: method, label fraction, seed and which splits were probed (when the metrics say)."""
    method = "k-nearest-neighbour probe" if metrics.get("method") == "knn" else "Linear probe"
    fraction = metrics.get("label_fraction", 1.0)
    if fraction != 1.0:
        method += f" on {fraction:g} of the train labels ({metrics['train_studies_used']} studies, seed {metrics['seed']})"
    if "train_split" in metrics and "eval_split" in metrics:
        return (f"{method}: fit on {metrics['train_split']} ({metrics['train_studies']} studies), "
                f"scored on {metrics['eval_split']}")
    return method
