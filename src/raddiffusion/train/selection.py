"""Which fine-tuning epoch's weights are kept: by validation mean AUROC, beyond its noise or not, or by loss."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.studies import StudyDataset
from ..fileio import atomic_path
from ..results.bootstrap import paired_difference
from ..results.compare import signed_interval

SELECTION = ("auroc-ci", "auroc", "loss")
KEPT_VALIDATION = "kept_validation.npy"  # validation probabilities of the kept weights ("auroc-ci"; read on resume)


@dataclass
class EpochSelection:
    """Which epoch's weights are kept (and tested), by ``select_on``:

    - ``"auroc"``: the highest validation mean AUROC;
    - ``"auroc-ci"``: the same, but an epoch replaces the kept weights only when the paired
      patient-bootstrap 95 % interval of its validation mean-AUROC gain over them lies above 0
      (a best-of-epochs maximum on a small validation split is otherwise mostly noise);
    - ``"loss"`` (and whenever no validation label has both classes): the lowest validation loss.

    Early stopping counts epochs without a new highest score, whether or not its gain was beyond noise:
    gains too small to keep an epoch may still add up over the next ones.
    """

    select_on: str
    targets: np.ndarray  # validation [studies, labels]
    mask: np.ndarray
    subjects: np.ndarray
    resamples: int
    kept_file: Path | None = None  # where the kept weights' validation probabilities are saved ("auroc-ci")
    kept: np.ndarray | None = None

    @classmethod
    def for_run(cls, select_on: str, val_set: StudyDataset, run_dir: Path, resamples: int,
                resumed: bool) -> "EpochSelection":
        """The selection of a run; a resumed run reads the kept weights' validation probabilities back."""
        kept_file = run_dir / KEPT_VALIDATION
        kept = np.load(kept_file, allow_pickle=False) if resumed and kept_file.is_file() else None
        return cls(select_on, val_set.labels, val_set.label_mask, val_set.subject_ids, resamples, kept_file, kept)

    def score(self, validation: dict) -> float:
        """The higher-is-better number epochs are ranked by."""
        by_auroc = self.select_on != "loss" and validation["auroc"] is not None
        return validation["auroc"] if by_auroc else -validation["loss"]

    def gain_interval(self, validation: dict) -> list[float] | None:
        """The 95 % interval of the validation mean-AUROC gain over the kept weights (``auroc-ci`` only)."""
        if self.select_on != "auroc-ci" or self.kept is None or validation["auroc"] is None:
            return None
        return paired_difference(validation["probabilities"], self.kept, self.targets, self.mask, self.subjects,
                                 validation["scored"], max(self.resamples, 1))["ci95"]

    def improves(self, validation: dict, best_score: float | None, gain: list[float] | None) -> bool:
        """Whether this epoch's weights replace the kept ones."""
        if best_score is None:
            return True
        return self.score(validation) > best_score and (gain is None or gain[0] > 0)

    def keep(self, validation: dict, write: bool) -> None:
        """Remember the new kept weights' validation probabilities (and save them when ``write``)."""
        if self.select_on != "auroc-ci":
            return
        self.kept = validation["probabilities"]
        if write and self.kept_file is not None:
            with atomic_path(self.kept_file) as tmp, open(tmp, "wb") as handle:
                np.save(handle, self.kept, allow_pickle=False)


def selection_note(improved: bool, gain: list[float] | None, bad_epochs: int) -> str:
    """`` (kept)``, or why the epoch was not kept."""
    if improved:
        return " (kept)"
    if bad_epochs == 0:
        return f" (highest yet, not kept: its gain {signed_interval(gain)} includes 0)"
    return f" ({bad_epochs} without a new highest score)"
