"""Studies as training examples: a torch ``Dataset`` over a store and a collate for whole studies."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from .labels import apply_label_policy
from .preprocess import available_cpus
from .store import Store
from .tree import FRONTAL_VIEWS, SPLITS

PIXEL_SCALE = 127.5  # uint8 -> [-1, 1]: x = u8 / 127.5 - 1
UINT8_MAX = 255
READ_ONLY_WARNING = "The given NumPy array is not writable"


class StudyDataset(Dataset):
    """The studies of one split of a store; item ``i`` is all (selected) views of study ``i``.

    Views are ordered frontal (PA/AP) first, then the others, each group in store order.
    ``max_views`` keeps at most that many views per study (frontal first); ``frontal_only`` keeps
    PA/AP views and drops studies without one; ``labelled_only`` drops studies without a label row
    (otherwise their labels are 0 with a zero mask). ``split=None`` takes every split. Labels are the
    store's (``label_names``: the 14 CheXpert observations for MIMIC and CheXpert, 15 for NIH, …).
    """

    def __init__(
        self,
        store: Store,
        split: str | None = "train",
        label_policy: str = "ones",
        max_views: int | None = None,
        frontal_only: bool = False,
        labelled_only: bool = False,
    ):
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)} or None, not {split!r}")
        if max_views is not None and max_views < 1:
            raise ValueError(f"max_views must be at least 1, not {max_views}")
        self.images = store.images
        index = store.index
        rows = np.flatnonzero(index["split"].to_numpy() == split) if split else np.arange(len(index))
        if labelled_only:
            rows = rows[np.isin(index["study_id"].to_numpy()[rows], store.labels.index.to_numpy())]
        frontal = index["view"].isin(FRONTAL_VIEWS).to_numpy()[rows]
        if frontal_only:
            rows, frontal = rows[frontal], frontal[frontal]
        study_of_row = index["study_id"].to_numpy()[rows]
        order = np.lexsort((rows, ~frontal, _first_seen_rank(study_of_row)))
        rows, study_of_row = rows[order], study_of_row[order]
        starts = np.flatnonzero(np.r_[len(rows) > 0, study_of_row[1:] != study_of_row[:-1]])
        self.study_ids = study_of_row[starts]
        self.subject_ids = index["subject_id"].to_numpy()[rows[starts]]
        self.splits = index["split"].to_numpy()[rows[starts]]
        self._rows, self._starts = rows, np.r_[starts, len(rows)]
        self.max_views = max_views
        self.label_names = store.label_names
        raw = store.labels.reindex(self.study_ids)[list(self.label_names)].to_numpy(np.float32)
        self.labels, self.label_mask = apply_label_policy(raw, label_policy)
        self.labelled = np.isin(self.study_ids, store.labels.index.to_numpy())
        self.label_mask[~self.labelled] = 0.0

    def __len__(self) -> int:
        return len(self.study_ids)

    def num_images(self) -> int:
        """Images over all studies, after ``max_views``."""
        return int(self.view_counts().sum())

    def view_counts(self) -> np.ndarray:
        """Views per study (after ``max_views``), int64 ``[len(self)]``."""
        lengths = np.diff(self._starts).astype(np.int64)
        return np.minimum(lengths, self.max_views) if self.max_views else lengths

    def image_rows(self, i: int) -> np.ndarray:
        """Store rows of the views of study ``i``, in the order they are returned."""
        rows = self._rows[self._starts[i] : self._starts[i + 1]]
        return rows[: self.max_views] if self.max_views else rows

    def select(self, positions: np.ndarray) -> StudyDataset:
        """The studies at ``positions`` (in that order) as a dataset of their own, sharing this one's images."""
        positions = np.asarray(positions, dtype=np.int64)
        subset = copy.copy(self)
        pieces = [self._rows[self._starts[i] : self._starts[i + 1]] for i in positions]
        subset._rows = np.concatenate(pieces) if pieces else self._rows[:0]
        subset._starts = np.r_[0, np.cumsum(np.diff(self._starts)[positions])]
        for name in ("study_ids", "subject_ids", "splits", "labels", "label_mask", "labelled"):
            setattr(subset, name, getattr(self, name)[positions])
        return subset

    def __getitem__(self, i: int) -> dict:
        rows = self.image_rows(i)
        contiguous = np.all(np.diff(rows) == 1)
        pixels = self.images[int(rows[0]) : int(rows[-1]) + 1] if contiguous else self.images[rows]
        return {
            "images": pixels,
            "labels": self.labels[i],
            "label_mask": self.label_mask[i],
            "study_id": int(self.study_ids[i]),
        }


class PooledStudies(Dataset):
    """The studies of several datasets (e.g. the train splits of several stores) as one, for pretraining.

    Item ``i`` is the study's images and id; labels are left out (the stores' label sets may differ), so
    the collated ``labels`` and ``label_mask`` have no columns.
    """

    def __init__(self, parts: list[StudyDataset]):
        self.parts = list(parts)
        self.offsets = np.cumsum([0, *(len(part) for part in self.parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def view_counts(self) -> np.ndarray:
        """Views per study, in order over the parts."""
        return np.concatenate([part.view_counts() for part in self.parts])

    def __getitem__(self, i: int) -> dict:
        part = int(np.searchsorted(self.offsets, i, side="right")) - 1
        item = self.parts[part][i - int(self.offsets[part])]
        no_labels = np.zeros(0, np.float32)
        return {**item, "labels": no_labels, "label_mask": no_labels}


def _first_seen_rank(values: np.ndarray) -> np.ndarray:
    """For each element, the rank of its value by first appearance (keeps studies in store order)."""
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]


def collate_studies(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack whole studies into one batch.

    Returns ``images`` float ``[N, 1, H, W]`` in [-1, 1], ``lengths`` int64 ``[S]`` (views per study,
    in order), ``labels`` and ``label_mask`` float ``[S, labels]`` and ``study_id`` int64 ``[S]``.
    """
    lengths = [len(item["images"]) for item in items]
    return {"images": to_unit_range([item["images"] for item in items], sum(lengths)), **_study_fields(items, lengths)}


def _study_fields(items: list[dict], lengths: list[int]) -> dict[str, torch.Tensor]:
    """A batch's ``lengths``, ``labels``, ``label_mask`` and ``study_id``: everything but the images."""
    return {
        "lengths": torch.tensor(lengths, dtype=torch.int64),
        "labels": torch.from_numpy(np.stack([item["labels"] for item in items])).reshape(len(items), -1),
        "label_mask": torch.from_numpy(np.stack([item["label_mask"] for item in items])).reshape(len(items), -1),
        "study_id": torch.tensor([item["study_id"] for item in items], dtype=torch.int64),
    }


def collate_study_pixels(items: list[dict]) -> dict[str, torch.Tensor]:
    """:func:`collate_studies` with ``images`` left as uint8 ``[N, 1, H, W]``: a quarter of the bytes to
    copy to the device, where :func:`unit_range` turns them into the model's float input."""
    lengths = [len(item["images"]) for item in items]
    height, width = items[0]["images"].shape[1:]
    pixels = torch.empty((sum(lengths), 1, height, width), dtype=torch.uint8)
    start = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=READ_ONLY_WARNING)  # the store is only read here
        for item, count in zip(items, lengths):
            pixels[start : start + count, 0].copy_(torch.from_numpy(np.ascontiguousarray(item["images"])))
            start += count
    return {"images": pixels, **_study_fields(items, lengths)}


def loader_workers(requested: int) -> int:
    """Loader processes to start for ``requested``: at most the CPUs this process may use (more only compete)."""
    return min(requested, available_cpus())


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images (on any device) -> float32 ``u8 / 127.5 - 1``, as :func:`to_unit_range` computes it."""
    return pixels.to(torch.float32).mul_(1.0 / PIXEL_SCALE).sub_(1.0)


def to_unit_range(studies: list[np.ndarray], count: int) -> torch.Tensor:
    """uint8 studies ``[v, H, W]`` -> one float32 ``[count, 1, H, W]`` tensor of ``u8 / 127.5 - 1``.

    Converts each (memory-mapped) study straight into its slice of the output and scales it while
    that slice is still in cache: no uint8 concatenation and one pass over the output in memory.
    """
    height, width = studies[0].shape[1:]
    out = torch.empty((count, 1, height, width), dtype=torch.float32)
    start = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=READ_ONLY_WARNING)  # the store is only read here
        for pixels in studies:
            block = out[start : start + len(pixels), 0]
            block.copy_(torch.from_numpy(np.ascontiguousarray(pixels)))
            block.mul_(1.0 / PIXEL_SCALE).sub_(1.0)
            start += len(pixels)
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images ``[N, 1, H, W]`` in [-1, 1] -> uint8 ``[N, H, W]``, rounded: the inverse of :func:`to_unit_range`."""
    return torch.round((images[:, 0].float() + 1.0) * PIXEL_SCALE).clamp(0, UINT8_MAX).to(torch.uint8).numpy()
