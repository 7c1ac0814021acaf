"""Batch translation of folders: walk, decode, batch by size, translate, encode, write.

in/ tree ─► plan (walk, shard by rank, skip existing, read headers, group by size)
        ─► decode with Pillow (in DataLoader workers on CUDA), keep alpha, ICC and EXIF
        ─► device: pad to the net's multiple, translate (precision by hardware), crop back;
           images above ``max_pixels`` go through overlapping, blended tiles
        ─► writer threads: re-attach alpha and metadata, encode, write to a temp name, rename.

Nothing here knows about training: the network comes from a weights file (metadata rebuilds it).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from translate.core.devices import (
    Dist,
    autotune,
    close_distributed,
    init_distributed,
    peak_gpu_bytes,
    pick_device,
    resolve_precision,
)
from translate.core.images import resize_u8
from translate.core.options import RunOptions
from translate.core.progress import Progress
from translate.core.signals import ignore_in_worker
from translate.inference.plan import (
    Job,
    Outputs,
    RunSummary,
    decode_job,
    group_batches,
    plan,
    run_inputs,
    translate_batches,
)
from translate.inference.tiling import Joined, launch_fitting, translate_tiled
from translate.inference.translator import Launched, Translator, latents, load_translator

# --- decoding in workers ------------------------------------------------------------------------------

class _Decode(Dataset):
    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item, size = decode_job(self.jobs[i], i), self.jobs[i].size
        if "rgb" in item and tuple(item["rgb"].shape[-2:]) != size:  # --size
            item["rgb"] = resize_u8(torch.from_numpy(item["rgb"]), size)
            if item["alpha"] is not None:
                item["alpha"] = resize_u8(torch.from_numpy(item["alpha"]), size)
        return item


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch's items, and their pixels stacked into one tensor when all have one size (the usual
    case): one shared-memory transfer from the worker and one pinned copy instead of one per image."""
    good = [it for it in items if "rgb" in it]
    stacked = None
    if len(good) > 1 and all(it["rgb"].shape == good[0]["rgb"].shape for it in good):
        stacked = torch.from_numpy(np.stack([np.asarray(it.pop("rgb")) for it in good]))  # numpy: see files._orient
    for it in good:
        if "rgb" in it:
            it["rgb"] = torch.as_tensor(it["rgb"])
    return {"items": items, "stacked": stacked}


# --- the run ------------------------------------------------------------------------------------------

def run(in_dir: str | Path, out_dir: str | Path, opts: RunOptions | None = None, *,
        progress: Progress | None = None) -> RunSummary:
    """Translate every image under ``in_dir`` into the same tree under ``out_dir``.

    Returns a summary; ``summary.exit_code`` is 3 when some files failed. Under torchrun each rank
    takes a disjoint shard of the sorted file list.
    """
    opts, progress = opts or RunOptions(), progress or Progress.silent()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    files = run_inputs(in_dir, out_dir, opts)  # (first: a wrong folder is one line before any model is loaded)
    device = pick_device(opts.device)
    dist = init_distributed(device)
    precision = resolve_precision(opts.precision, device)
    tr, multiple, zs = _load(opts, device, precision, progress)
    start = time.perf_counter()
    opts = dataclasses.replace(
        opts, batch_size=opts.batch_size if opts.batch_size is not None else 16 if device.type == "cuda" else 1,
        max_pixels=2**62 if tr.resolution else opts.max_pixels)  # a fixed-size net sees no tiles
    jobs, summary = plan(in_dir, out_dir, opts, dist.rank, dist.world_size, files)
    summary.precision, summary.device, summary.out_dir, summary.engine = precision, str(device), out_dir, tr.engine
    outputs = Outputs(jobs, opts, summary, progress)
    cuda = device.type == "cuda"
    workers, writers = _parallelism(opts, cuda)
    loader = DataLoader(_Decode(jobs), batch_sampler=group_batches(jobs, multiple, opts), num_workers=workers,
                        collate_fn=_collate, pin_memory=cuda, prefetch_factor=4 if workers else None,
                        worker_init_fn=ignore_in_worker)
    with autotune(cuda):
        summary.interrupted = translate_batches(
            loader, lambda batch, good: _launch(tr, batch["stacked"], good, multiple, zs, opts, outputs.note_once),
            outputs, writers)
    summary.seconds = time.perf_counter() - start
    summary.peak_gpu_bytes = peak_gpu_bytes(device)
    if dist.enabled:
        _gather(summary, dist)
        close_distributed()
    return summary


def _load(opts: RunOptions, device: torch.device, precision: str, progress: Progress
          ) -> tuple[Translator, int, list[Tensor | None]]:
    """The translator, its size multiple and the latents of its samples; its notes said."""
    loading = time.perf_counter()
    tr, multiple, _ = load_translator(opts.weights, opts.direction, device, precision, opts.compile, opts.engine)
    zs = latents(tr, opts.samples, opts.seed, opts.style)
    if tr.note:
        progress.say(f"note: {tr.note}")
    if getattr(tr.net, "converted", False):
        progress.say(f"compiled the network for OpenVINO in {time.perf_counter() - loading:.1f}s (once for these "
                     f"weights: kept in {tr.net.cache.dir.parent.parent})")
    return tr, multiple, zs


def _launch(tr: Translator, stacked: Tensor | None, good: list[dict[str, Any]], multiple: int,
            zs: list[Tensor | None], opts: RunOptions, note: Any) -> list[Launched | Joined]:
    """One batch handed to the device, once per sample latent: whole, or in tiles when it is large."""
    first = stacked if stacked is not None else good[0]["rgb"]
    if first.shape[-2] * first.shape[-1] > opts.max_pixels:
        return [Launched(translate_tiled(tr.eager(), good[0]["rgb"], multiple, opts, z)[None],
                         [tuple(first.shape[-2:])]) for z in zs]
    rgbs = stacked if stacked is not None else [it["rgb"] for it in good]
    return [launch_fitting(tr, rgbs, multiple, z, opts, note) for z in zs]


def _parallelism(opts: RunOptions, cuda: bool) -> tuple[int, int]:
    """(decoding processes, encoding threads) for this device.

    CPU: decode and encode here, one after the other. Decoding a 256x256 JPEG takes 1.4 ms and
    writing its PNG ~30 ms, next to ~0.8 s of network that uses every core; a decoding process or
    an encoding thread beside it only took cores from the network's threads, which then wait for
    each other (2-core EPYC: 1.0-1.2 s an image with them against 0.85 s without).
    CUDA: the device translates thousands of images a second, so decoding gets processes and
    encoding threads (Pillow lets go of the GIL while it encodes) from the cores there are.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # one process per GPU shares them
    if not cuda:
        return (opts.workers if opts.workers is not None else 0), 0
    workers = opts.workers if opts.workers is not None else max(2, min(8, cores // 2))
    return workers, max(2, min(8, cores - workers))


def _gather(summary: RunSummary, dist: Dist) -> None:
    """Sum the counts of all ranks (failures are listed by the rank that met them); the slowest's time."""
    t = dist.all_reduce(torch.tensor([summary.translated, summary.skipped, len(summary.failed)], dtype=torch.float64))
    summary.translated, summary.skipped = int(t[0]), int(t[1])
    summary.failed_elsewhere = int(t[2]) - len(summary.failed)
    summary.seconds = float(dist.all_reduce(torch.tensor([summary.seconds], dtype=torch.float64), op="max"))
