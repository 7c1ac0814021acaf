"""A run's data on the device: each epoch's remaining batches (sampled, loaded, augmented), every
item once in order (for a method that weighs its data, DB-VAE), and the fixed batch of the sample
grids. An unreadable file is reported once and skipped; the run goes on."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader

from translate.core.errors import TranslateError
from translate.core.progress import Progress
from translate.core.recipes import Recipe
from translate.core.signals import blocked, ignore_in_worker
from translate.data import Augment, collate
from translate.data.layouts import FileDataset
from translate.data.sampler import Indexed, ResumableSampler

BATCH_KEYS = ("A", "B", "label")  # what a collated batch may carry to the device
Batch = dict[str, torch.Tensor]


class Batches:
    def __init__(self, recipe: Recipe, dataset: FileDataset, paired: bool, device: torch.device, rank: int,
                 world_size: int, progress: Progress) -> None:
        self.recipe, self.dataset, self.device, self.progress = recipe, dataset, device, progress
        self.augment = Augment(recipe.data, paired=paired)
        self.sampler = ResumableSampler(len(dataset), rank, world_size, seed=recipe.train.seed,
                                        batch_size=recipe.train.batch_size)
        self.skipped: list[str] = []  # unreadable files met (saved with the state)
        self._said: set[str] = set()

    def epoch(self, epoch: int, samples_done: int) -> Iterator[Batch]:
        """The batches of ``epoch`` after the first ``samples_done`` samples (in the global order)."""
        self.sampler.set_epoch(epoch, samples_done)
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch
        data, cuda = self.recipe.data, self.device.type == "cuda"
        if data.whole_in_decay and hasattr(self.dataset, "cfg"):  # read by the workers this epoch starts
            decaying = epoch >= self.recipe.train.epochs
            self.dataset.cfg = dataclasses.replace(data, load_size=data.crop_size) if decaying else data
        with blocked():  # workers start here
            raws = iter(self._loader(epoch))
        for raw in raws:
            self._report(raw)
            if "A" not in raw:
                continue  # every file of this batch was unreadable
            batch = {k: raw[k].to(self.device, non_blocking=cuda) for k in BATCH_KEYS if k in raw}
            if cuda:
                batch = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v
                         for k, v in batch.items()}
            yield self.augment(batch)

    def every_item(self) -> Iterator[tuple[list[int], Batch]]:
        """Every readable item once, in order, centre-cropped, not augmented, with its index."""
        loader = DataLoader(Indexed(self.dataset), batch_size=64, num_workers=self.recipe.data.num_workers,
                            collate_fn=list, generator=torch.Generator().manual_seed(0),
                            worker_init_fn=ignore_in_worker)
        with blocked():
            pairs = iter(loader)
        for items in pairs:
            good = [(i, it) for i, it in items if "error" not in it]
            if good:
                raw = collate([it for _, it in good])
                batch = {k: raw[k].to(self.device) for k in BATCH_KEYS if k in raw}
                yield [i for i, _ in good], self.augment(batch, train=False)

    def fixed(self) -> Batch:
        """The first ``train.n_samples`` readable items, centre-cropped: grids comparable over time."""
        good = (item for i in range(len(self.dataset)) if "error" not in (item := self.dataset[i]))
        items = list(islice(good, self.recipe.train.n_samples))
        if not items:
            raise TranslateError(f"no readable images in {self.recipe.data.path}")
        raw = collate(items)
        return self.augment({k: raw[k].to(self.device) for k in BATCH_KEYS if k in raw}, train=False)

    def _loader(self, epoch: int) -> DataLoader:
        workers = self.recipe.data.num_workers
        return DataLoader(
            self.dataset, batch_size=self.recipe.train.batch_size, sampler=self.sampler, num_workers=workers,
            collate_fn=collate, pin_memory=self.device.type == "cuda", drop_last=False,
            generator=torch.Generator().manual_seed(self.recipe.train.seed + epoch),  # not the global RNG
            persistent_workers=False, prefetch_factor=4 if workers else None, worker_init_fn=ignore_in_worker,
        )

    def _report(self, raw: dict[str, Any]) -> None:
        """Each unreadable file (skipped) and note of the data once."""
        for msg in [*raw["errors"], *raw["notes"]]:
            if msg not in self._said:
                self._said.add(msg)
                skipped = msg in raw["errors"]
                self.skipped += [msg] if skipped else []
                self.progress.say(f"[yellow]warning:[/] {'skipped ' if skipped else ''}{msg}")
