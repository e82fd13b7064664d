"""The linear probe: frozen-encoder study vectors, one balanced logistic regression per label."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.labels import LABELS
from ..data.mimic import SPLITS
from ..data.store import Store
from ..data.studies import StudyDataset, collate_studies
from ..fileio import atomic_path, write_json
from .metrics import format_table, metrics_with_absent

MAX_ITER = 1000  # logistic-regression solver iterations
ONE_CLASS_IN_TRAIN = "only one class in train"
TABLE_SUFFIX = ".txt"


def study_vectors(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    description: str = "embed",
) -> np.ndarray:
    """``model.embed`` of every study of ``dataset``, in order: float32 ``[len(dataset), width]``.

    Runs without gradients in eval mode, then restores the model's training mode. Batches are moved
    to ``device`` (where the model must already be). A wrapped model (DDP: ``.module``) is unwrapped.
    """
    net = model.module if hasattr(model, "module") else model
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_studies)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            chunks = [
                net.embed(batch["images"].to(device), batch["lengths"].to(device)).float().cpu().numpy()
                for batch in tqdm(loader, desc=description, unit="batch", disable=not progress)
            ]
    finally:
        net.train(was_training)
    if not chunks:
        return np.zeros((0, net.config.width), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_mask: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    eval_mask: np.ndarray,
    seed: int = 0,
) -> dict:
    """Fit one balanced logistic regression per label on standardised train vectors; score them on eval.

    Only rows whose mask is 1 are fitted and scored. A label with a single class among its train rows
    is reported absent (``only one class in train``). Returns the :func:`label_metrics` dict of eval.
    """
    scaler = StandardScaler().fit(train_x)
    train_z, eval_z = scaler.transform(train_x), scaler.transform(eval_x)
    probabilities = np.zeros(np.shape(eval_y), dtype=np.float64)
    absent = {}
    for k, name in enumerate(LABELS):
        rows = np.asarray(train_mask[:, k]).astype(bool)
        targets = np.asarray(train_y[rows, k]).astype(int)
        if np.unique(targets).size < 2:
            absent[name] = ONE_CLASS_IN_TRAIN
            continue
        classifier = LogisticRegression(class_weight="balanced", max_iter=MAX_ITER, random_state=seed)
        probabilities[:, k] = classifier.fit(train_z[rows], targets).predict_proba(eval_z)[:, 1]
    return metrics_with_absent(probabilities, eval_y, eval_mask, absent=absent)


def probe(
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
) -> dict:
    """Linear probe of a (frozen) model: fit on the labelled studies of ``train_split``, score ``eval_split``.

    Returns the :func:`label_metrics` dict of the eval split plus ``train_split``, ``eval_split``,
    ``train_studies`` and ``eval_studies``. ``ValueError`` if a split has no labelled study.
    """
    train, evaluate = (_labelled_studies(store, split, label_policy) for split in (train_split, eval_split))
    embed = {"model": model, "batch_size": batch_size, "device": device, "num_workers": num_workers,
             "progress": progress}
    train_x = study_vectors(dataset=train, description=f"embed {train_split}", **embed)
    eval_x = study_vectors(dataset=evaluate, description=f"embed {eval_split}", **embed)
    metrics = linear_probe(train_x, train.labels, train.label_mask, eval_x, evaluate.labels, evaluate.label_mask, seed)
    splits = {"train_split": train_split, "eval_split": eval_split,
              "train_studies": len(train), "eval_studies": len(evaluate)}
    return {**splits, **metrics}


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


def write_probe(metrics: dict, path: Path) -> None:
    """Write probe ``metrics`` as JSON at ``path`` and as a text table next to it (same stem, ``.txt``), atomically."""
    path = Path(path)
    table_path = path.with_suffix(TABLE_SUFFIX)
    if table_path == path:
        raise ValueError(f"{path}: the probe JSON needs a name that is not {TABLE_SUFFIX}")
    write_json(path, metrics)
    with atomic_path(table_path) as tmp:
        tmp.write_text(format_table(metrics, _title(metrics)))


def _title(metrics: dict) -> str:
    """The table title: which splits were probed (when the metrics say)."""
    if "train_split" in metrics and "eval_split" in metrics:
        return (f"Linear probe: fit on {metrics['train_split']} ({metrics['train_studies']} studies), "
                f"scored on {metrics['eval_split']}")
    return "Linear probe"
