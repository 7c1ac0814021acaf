"""The order training reads data in: resumable mid-epoch, sharded by rank, optionally weighted."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


class ResumableSampler(Sampler[int]):
    """DistributedSampler's order (a permutation per epoch from seed + epoch, shards by rank),
    after skipping the first ``consumed`` samples of the epoch in the global order.

    Skipping before sharding keeps the global data order the same when a run resumes with another
    world size: the global batch stays the same, only its split over ranks changes.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 batch_size: int = 1) -> None:
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world_size, seed, shuffle
        self.batch = batch_size  # per rank
        self.epoch, self.consumed = 0, 0
        self.weights: torch.Tensor | None = None  # per item: the epoch draws n items with these (DB-VAE)
        # per item, with ``weights``: True for the class that fills the first half of every batch,
        # False for the other half (the DB-VAE lab's get_batch: half faces, half non-faces)
        self.halves: torch.Tensor | None = None
        self._drawn: tuple[Any, ...] | None = None  # (epoch, world, batch), weights, halves, the batches

    def set_epoch(self, epoch: int, consumed: int = 0) -> None:
        self.epoch, self.consumed = epoch, consumed

    def _indices(self) -> list[int]:
        if self.weights is not None and self.halves is not None:
            return self._balanced(self.weights, self.halves)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights.double(), self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        rest = order[self.consumed :]
        if rest and len(rest) % self.world:  # pad, as DistributedSampler, so ranks stay in step
            rest += rest[: self.world - len(rest) % self.world]
        return rest[self.rank :: self.world]

    def _balanced(self, weights: torch.Tensor, halves: torch.Tensor) -> list[int]:
        """Batches of ``batch_size`` per rank, each half from either class (the first ``batch_size // 2``
        by ``weights`` among the ``halves``, the rest among the others), drawn without replacement
        within a batch and with replacement across batches, as the lab's ``get_batch``. The epoch is
        as many batches as covers the data once, rounded up to whole global batches; each rank reads
        whole batches, so every step is balanced on every rank. The batches are drawn in one global
        order from (seed, epoch) and skipped by ``consumed``, as the shuffled orders are."""
        key = (self.epoch, self.world, self.batch)  # drawn once for len() and iter()
        if self._drawn is None or self._drawn[0] != key or self._drawn[1] is not self.weights \
                or self._drawn[2] is not self.halves:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            w = weights.double()
            first, second = torch.where(halves, w, 0.0), torch.where(halves, 0.0, w)
            k = self.batch // 2
            n_batches = -(-self.n // (self.batch * self.world)) * self.world
            drawn = [_draw(first, k, g) + _draw(second, self.batch - k, g) for _ in range(n_batches)]
            self._drawn = (key, self.weights, self.halves, drawn)
        batches = self._drawn[3][self.consumed // self.batch :]
        return [i for b in batches[self.rank :: self.world] for i in b]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def _draw(weights: torch.Tensor, k: int, g: torch.Generator) -> list[int]:
    """``k`` items by ``weights``, without replacement where there are that many to draw from."""
    if k == 0:
        return []
    return torch.multinomial(weights, k, replacement=int((weights > 0).sum()) < k, generator=g).tolist()


class Indexed(Dataset):
    """(index, item) of a dataset, so a pass over it knows which items were unreadable."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.dataset[i]
