"""Per-study predictions of a scored model: what intervals and paired comparisons are computed from.

A predictions CSV has one row per study: ``study_id``, ``subject_id``, then per label
``prob:<label>`` (the model's probability) and ``true:<label>`` (1 / 0 under the label policy used,
blank where that label did not count for the study).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..fileio import atomic_path

PROBABILITY_PREFIX, TARGET_PREFIX = "prob:", "true:"
ID_COLUMNS = ("study_id", "subject_id")
PREDICTIONS_SUFFIX = ".predictions.csv"  # beside a probe result: NAME.json -> NAME.predictions.csv
PROBABILITY_DIGITS = 7


class PredictionsError(ValueError):
    """A predictions file that cannot be read, or two that cannot be compared; one line."""


@dataclass(frozen=True)
class Predictions:
    """Probabilities, targets and counted mask ``[S, L]`` of studies ``study_ids`` of patients ``subject_ids``."""

    study_ids: np.ndarray
    subject_ids: np.ndarray
    probabilities: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.study_ids)

    def in_order_of(self, study_ids: np.ndarray) -> Predictions:
        """The same predictions with rows in the order of ``study_ids`` (which must all be present)."""
        position = pd.Index(self.study_ids).get_indexer(study_ids)
        if (position < 0).any():
            raise PredictionsError(f"{int((position < 0).sum())} of the studies are not among these predictions")
        return Predictions(self.study_ids[position], self.subject_ids[position], self.probabilities[position],
                           self.targets[position], self.mask[position], self.labels)


def write_predictions(predictions: Predictions, path: Path) -> None:
    """Write ``predictions`` as CSV at ``path`` (write-then-rename)."""
    columns = {"study_id": predictions.study_ids, "subject_id": predictions.subject_ids}
    for k, label in enumerate(predictions.labels):
        columns[PROBABILITY_PREFIX + label] = np.round(predictions.probabilities[:, k], PROBABILITY_DIGITS)
    for k, label in enumerate(predictions.labels):
        counted = predictions.mask[:, k].astype(bool)
        targets = pd.Series(predictions.targets[:, k].astype(int), dtype="Int64")
        columns[TARGET_PREFIX + label] = targets.where(counted, pd.NA)
    with atomic_path(Path(path)) as tmp:
        pd.DataFrame(columns).to_csv(tmp, index=False)


def read_predictions(path: Path) -> Predictions:
    """Read a predictions CSV written by :func:`write_predictions` (``PredictionsError`` naming the problem)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise PredictionsError(f"{path}: no such predictions file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PredictionsError(f"{path}: not a predictions CSV ({str(exc).splitlines()[0]})") from None
    labels = tuple(c[len(PROBABILITY_PREFIX):] for c in frame.columns if c.startswith(PROBABILITY_PREFIX))
    wanted = [*ID_COLUMNS, *(PROBABILITY_PREFIX + n for n in labels), *(TARGET_PREFIX + n for n in labels)]
    missing = [c for c in wanted if c not in frame.columns]
    if not labels or missing:
        raise PredictionsError(f"{path}: not a predictions CSV (missing column(s) {', '.join(missing) or 'prob:*'})")
    targets = frame[[TARGET_PREFIX + n for n in labels]].to_numpy(np.float64)
    return Predictions(
        study_ids=frame["study_id"].to_numpy(np.int64),
        subject_ids=frame["subject_id"].to_numpy(np.int64),
        probabilities=frame[[PROBABILITY_PREFIX + n for n in labels]].to_numpy(np.float64),
        targets=np.nan_to_num(targets).astype(np.float32),
        mask=~np.isnan(targets),
        labels=labels,
    )
