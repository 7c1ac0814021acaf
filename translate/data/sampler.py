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

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world_size, seed, shuffle
        self.epoch, self.consumed = 0, 0
        self.weights: torch.Tensor | None = None  # per item: the epoch draws n items with these (DB-VAE)

    def set_epoch(self, epoch: int, consumed: int = 0) -> None:
        self.epoch, self.consumed = epoch, consumed

    def _indices(self) -> list[int]:
        if self.weights is not None:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.multinomial(self.weights.double(), self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        rest = order[self.consumed :]
        if rest and len(rest) % self.world:  # pad, as DistributedSampler, so ranks stay in step
            rest += rest[: self.world - len(rest) % self.world]
        return rest[self.rank :: self.world]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


class Indexed(Dataset):
    """(index, item) of a dataset, so a pass over it knows which items were unreadable."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.dataset[i]
