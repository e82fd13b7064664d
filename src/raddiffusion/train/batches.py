"""The order of studies in training: global batches of studies split into micro-batches.

Every optimizer step takes one *global* batch of ``batch_size`` studies (a fresh permutation per
epoch from the seed). It is split into ``ranks × accumulation`` micro-batches of consecutive
studies; rank ``r`` processes micro-batches ``r·accumulation … (r+1)·accumulation − 1``. Each
micro-batch has its own random stream (masks, timesteps, noise) seeded by (seed, step, micro-batch).
So two GPUs with accumulation 1 compute the same steps as one GPU with accumulation 2, and a run
resumed at any step continues exactly as if it had never stopped. Drop path draws from torch's
global generators, seeded per step and process (:func:`seed_step`): exact on resume too, but not
the same draws on another number of GPUs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GLOBAL_STREAM = 1  # tells seed_step's streams apart from the micro-batch streams


@dataclass(frozen=True)
class MicroBatch:
    studies: np.ndarray  # indices into the dataset
    index: int  # position among the step's micro-batches (names its random stream)


class EpochPlan:
    """The global batches of one epoch and this rank's share of them."""

    def __init__(
        self, views_per_study: np.ndarray, batch_size: int, micro_batches_per_rank: int, rank: int, ranks: int,
        seed: int, epoch: int,
    ):
        count = len(views_per_study)
        self.splits = micro_batches_per_rank * ranks
        if batch_size < self.splits:
            raise ValueError(f"a batch of {batch_size} studies cannot be split into {self.splits} micro-batches")
        if count < batch_size:
            raise ValueError(f"a batch of {batch_size} studies is larger than the {count} training studies; "
                             f"pass a smaller --batch-size")
        order = torch.randperm(count, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch))).numpy()
        self.steps = count // batch_size
        self._batches = order[: self.steps * batch_size].reshape(self.steps, batch_size)
        self._views = views_per_study
        self._mine = range(rank * micro_batches_per_rank, (rank + 1) * micro_batches_per_rank)

    def micro_batches(self, step: int) -> list[MicroBatch]:
        """This rank's micro-batches of global batch ``step`` (0-based within the epoch)."""
        chunks = np.array_split(self._batches[step], self.splits)
        return [MicroBatch(chunks[i], i) for i in self._mine]

    def images(self, step: int) -> int:
        """Images in global batch ``step`` over all ranks (each micro-batch's loss is weighted by its share)."""
        return int(self._views[self._batches[step]].sum())


def derived_seed(*keys: int) -> int:
    """One 32-bit seed from several integers (``SeedSequence``: different keys give independent streams)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def epoch_seed(seed: int, epoch: int) -> int:
    return derived_seed(seed, epoch)


def seed_step(seed: int, global_step: int, rank: int) -> None:
    """Seed torch's global generators for one step of one process: what draws from them (drop path)
    draws the same in a resumed run as in an uninterrupted one."""
    torch.manual_seed(derived_seed(seed, global_step, rank, GLOBAL_STREAM))


def micro_batch_generator(seed: int, global_step: int, index: int, device: torch.device) -> torch.Generator:
    """The random stream of micro-batch ``index`` of ``global_step`` (on ``device``)."""
    return torch.Generator(device=device).manual_seed(derived_seed(seed, global_step, index))
