"""Batch translation of folders: walk, decode, batch by size, translate, encode, write.

in/ tree ─► plan (walk, shard by rank, skip existing, read headers, group by size)
        ─► decode with Pillow (in DataLoader workers on CUDA), keep alpha, ICC and EXIF
        ─► device: pad to the net's multiple, translate (precision by hardware), crop back;
           images above ``max_pixels`` go through overlapping, blended tiles
        ─► writer threads: re-attach alpha and metadata, encode, write to a temp name, rename.

Nothing here knows about training: the network comes from a weights file (metadata rebuilds it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
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
from translate.core.errors import EXIT_PARTIAL, TranslateError, exit_code, reason
from translate.core.images import FORMATS, NotRegularFile, decode, encode_atomic, image_files, probe_size, resize_u8
from translate.core.options import RunOptions
from translate.core.progress import Progress
from translate.core.signals import StopSignals, blocked, ignore_in_worker
from translate.inference.tiling import Joined, launch_fitting, translate_tiled
from translate.inference.translator import Launched, Translator, latents, load_translator, padded


@dataclass
class RunSummary:
    found: int = 0
    translated: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    precision: str = ""
    device: str = ""
    engine: str = "torch"
    failed_elsewhere: int = 0  # failures met by other ranks (they list their own)
    interrupted: int | None = None  # the signal that stopped the run early
    not_files: list[tuple[str, str]] = field(default_factory=list)  # FIFOs, sockets, devices: skipped
    stopped: str = ""  # why writing stopped early (a full disk, a read-only or vanished folder)
    out_dir: Path | None = None
    peak_gpu_bytes: int = 0  # most GPU memory this process's tensors held at once (CUDA only)

    @property
    def n_failed(self) -> int:
        return len(self.failed) + self.failed_elsewhere

    @property
    def images_per_s(self) -> float:
        return self.translated / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return exit_code(self.interrupted)
        return EXIT_PARTIAL if self.n_failed or self.stopped else 0

    def line(self) -> str:
        """The one-line summary `translate run` prints last."""
        peak = f", peak GPU memory {self.peak_gpu_bytes / 2**30:.2f} GiB" if self.peak_gpu_bytes else ""
        why = f"{self.skipped} already there, {len(self.not_files)} not image files" if self.not_files else \
            "already there"
        text = (f"translated {self.translated}, skipped {self.skipped + len(self.not_files)} ({why}), failed "
                f"{self.n_failed} of {self.found} images in {self.seconds:.1f}s "
                f"({self.images_per_s:.2f} img/s, {self.precision} on {self.device}"
                f"{', OpenVINO' if self.engine == 'openvino' else ''}{peak})")
        if self.stopped:
            return (f"{self.stopped} after {self.translated} outputs: {text}; make room and run the same command "
                    "again to translate the rest")
        if self.interrupted is not None:
            return (f"interrupted by {signal.Signals(self.interrupted).name}: {text}; outputs in {self.out_dir}; "
                    "run the same command again to translate the rest")
        return f"{text}; outputs in {self.out_dir}"


def sample_path(dst: Path, k: int, samples: int) -> Path:
    """name.ext for one sample, name_k.ext for several."""
    return dst if samples == 1 else dst.with_name(f"{dst.stem}_{k}{dst.suffix}")


# --- planning ---------------------------------------------------------------------------------------

@dataclass
class Job:
    src: Path
    dst: Path
    size: tuple[int, int]  # (H, W) the network will see before padding
    probed: tuple[int, int]  # (H, W) the header promised, upright
    samples: int = 1  # outputs: dst, or dst_0 ... dst_{samples-1}

    @property
    def outputs(self) -> list[Path]:
        return [sample_path(self.dst, k, self.samples) for k in range(self.samples)]


def output_path(src: Path, in_dir: Path, out_dir: Path, fmt: str) -> Path:
    rel = src.relative_to(in_dir)
    if fmt != "keep":
        rel = rel.with_suffix("." + fmt)
    return out_dir / rel


def scaled_size(h: int, w: int, size: int | None) -> tuple[int, int]:
    if not size:
        return h, w
    s = size / min(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def plan(in_dir: Path, out_dir: Path, opts: RunOptions, rank: int = 0, world: int = 1,
         files: list[Path] | None = None) -> tuple[list[Job], RunSummary]:
    """This rank's jobs (a disjoint shard of the sorted list of ``files``, by default all images under
    ``in_dir``), with skips and header failures counted."""
    files = image_files(in_dir) if files is None else files
    summary = RunSummary(found=len(files))
    jobs = []
    for src in files[rank::world]:
        dst = output_path(src, in_dir, out_dir, opts.format)
        if opts.skip_existing and all(sample_path(dst, k, opts.samples).exists() for k in range(opts.samples)):
            summary.skipped += 1
            continue
        try:
            h, w = probe_size(src)
        except NotRegularFile as e:  # a FIFO named x.jpg: skipped unopened (opening it blocks for ever)
            summary.not_files.append((str(src), str(e)))
            continue
        except Exception as e:  # any header problem is this file's failure, not the run's
            summary.failed.append((str(src), reason(e)))
            continue
        jobs.append(Job(src, dst, scaled_size(h, w, opts.size), (h, w), opts.samples))
    return jobs, summary


def group_batches(jobs: list[Job], multiple: int, opts: RunOptions) -> list[list[int]]:
    """Batches of job indices whose padded sizes are equal; large images alone (they are tiled)."""
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    batches = []
    for i, job in enumerate(jobs):
        if job.size[0] * job.size[1] > opts.max_pixels:
            batches.append([i])
        else:
            by_size[padded(job.size, multiple)].append(i)
    assert opts.batch_size is not None  # run() has resolved it
    for key, idx in by_size.items():
        # keep the pixels per batch roughly constant: many small images, few large ones
        n = max(1, min(opts.batch_size, (opts.batch_size * 256 * 256) // (key[0] * key[1]) or 1))
        batches += [idx[i : i + n] for i in range(0, len(idx), n)]
    return sorted(batches, key=lambda b: b[0])


# --- decoding in workers ------------------------------------------------------------------------------

class _Decode(Dataset):
    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        job = self.jobs[i]
        try:
            d = decode(job.src)
        except Exception as e:
            return {"index": i, "error": reason(e)}
        rgb, alpha = d.rgb, d.alpha
        if tuple(rgb.shape[-2:]) != job.probed or rgb.dtype != torch.uint8:
            # A decoder that disagrees with the header is a failure, not an image to squash into shape.
            return {"index": i, "error": f"decoded as {rgb.dtype} {rgb.shape[-1]}x{rgb.shape[-2]}, but its header "
                                         f"says {job.probed[1]}x{job.probed[0]}"}
        if tuple(rgb.shape[-2:]) != job.size:
            rgb = resize_u8(rgb, job.size)
            alpha = resize_u8(alpha, job.size) if alpha is not None else None
        return {"index": i, "rgb": rgb, "alpha": alpha, "icc": d.icc, "exif": d.exif}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch's items, and their pixels stacked into one tensor when all have one size (the usual
    case): one shared-memory transfer from the worker and one pinned copy instead of one per image."""
    good = [it for it in items if "rgb" in it]
    stacked = None
    if len(good) > 1 and all(it["rgb"].shape == good[0]["rgb"].shape for it in good):
        stacked = torch.from_numpy(np.stack([it.pop("rgb").numpy() for it in good]))  # numpy: see images._orient
    return {"items": items, "stacked": stacked}


# --- the run ------------------------------------------------------------------------------------------

def check_output(in_dir: Path, out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise TranslateError(f"output {out_dir} is a file, not a folder: give a folder to write the "
                             "translated images to")
    i, o = in_dir.resolve(), out_dir.resolve()
    if o == i or i in o.parents:
        raise TranslateError(f"output folder {out_dir} is inside the input folder {in_dir}: "
                             "outputs would be read as inputs next time; choose another place")


def run(in_dir: str | Path, out_dir: str | Path, opts: RunOptions | None = None, *,
        progress: Progress | None = None) -> RunSummary:
    """Translate every image under ``in_dir`` into the same tree under ``out_dir``.

    Returns a summary; ``summary.exit_code`` is 3 when some files failed. Under torchrun each rank
    takes a disjoint shard of the sorted file list.
    """
    opts, progress = opts or RunOptions(), progress or Progress.silent()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    files = image_files(in_dir)  # (first: a wrong folder is one line before any model is loaded)
    check_output(in_dir, out_dir)
    if opts.format != "keep" and opts.format not in FORMATS:
        raise TranslateError(f"--format must be keep, png, jpg or webp, not {opts.format!r}")
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
    progress.start(total=len(jobs) + summary.skipped + len(summary.failed), done=summary.skipped)
    for path, why in summary.not_files:
        progress.say(f"skipped {path}: {why}")
    for path, why in summary.failed:
        progress.fail(path, why)
    cuda = device.type == "cuda"
    workers, writers = _parallelism(opts, cuda)
    loader = DataLoader(_Decode(jobs), batch_sampler=group_batches(jobs, multiple, opts), num_workers=workers,
                        collate_fn=_collate, pin_memory=cuda, prefetch_factor=4 if workers else None,
                        worker_init_fn=ignore_in_worker)
    summary.interrupted = _translate(loader, tr, multiple, zs, opts, _Outputs(jobs, opts, summary, progress), writers)
    summary.seconds = time.perf_counter() - start
    summary.peak_gpu_bytes = peak_gpu_bytes(device)
    if dist.enabled:
        _gather(summary, dist)
        close_distributed()
    return summary


def _translate(loader: DataLoader, tr: Translator, multiple: int, zs: list[Tensor | None], opts: RunOptions,
               outputs: _Outputs, writers: int) -> int | None:
    """Every batch of ``loader`` translated and handed to ``outputs``; the signal that stopped it early.

    On SIGINT/SIGTERM: take no new batch, finish the batch and writes in flight (each is atomic),
    report. A rerun skips what is there and translates the rest."""
    def on_signal(signum: int) -> None:
        outputs.progress.say(f"{signal.Signals(signum).name}: finishing the images in flight, then stopping ...")

    with StopSignals(on_signal) as signals, _writer(writers) as outputs.submit, autotune(tr.device.type == "cuda"):
        with blocked():  # decoding workers start here
            batches = iter(loader)
        in_flight: tuple[list[dict[str, Any]], list[Launched | Joined]] | None = None
        for batch in batches:
            if signals.stop is not None or outputs.summary.stopped:
                break
            good = outputs.readable(batch["items"])
            if not good:
                continue
            launched = _launch(tr, batch["stacked"], good, multiple, zs, opts, outputs.note_once)
            if in_flight is not None:
                outputs.hand_over(*in_flight)
                in_flight = None
            if launched[-1].done is None:  # already on the host (CPU, tiles): nothing to overlap, write now
                outputs.hand_over(good, launched)
            else:
                in_flight = (good, launched)
        if in_flight is not None:
            outputs.hand_over(*in_flight)
        outputs.finish()
    return signals.stop


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


class _Outputs:
    """The writing side of a run: translated batches handed to the writer (threads on CUDA, here on the
    CPU), finished writes and failures counted into the summary and the progress display."""

    def __init__(self, jobs: list[Job], opts: RunOptions, summary: RunSummary, progress: Progress) -> None:
        self.jobs, self.opts, self.summary, self.progress = jobs, opts, summary, progress
        self.submit: Any = None  # the writer's submit, set by _translate
        self.pending: list[Future] = []
        self._noted: set[str] = set()

    def readable(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The items that decoded; each that did not is a failure, said."""
        for it in items:
            if "error" in it:
                self.summary.failed.append((str(self.jobs[it["index"]].src), it["error"]))
                self.progress.fail(str(self.jobs[it["index"]].src), it["error"])
        return [it for it in items if "error" not in it]

    def note_once(self, text: str) -> None:
        """Out of memory: each kind of retreat said once, not per batch."""
        if text not in self._noted:
            self._noted.add(text)
            self.progress.say(f"note: {text}")

    def hand_over(self, good: list[dict[str, Any]], launched: list[Launched | Joined]) -> None:
        outputs = zip(*(sample.result() for sample in launched), strict=True)  # per image, its samples
        for it, ys in zip(good, outputs, strict=True):
            alpha = it["alpha"] if self.opts.keep_alpha else None
            self.pending.append(self.submit(_write, self.jobs[it["index"]], ys, alpha, it, self.opts.quality))
        assert self.opts.batch_size is not None  # resolved by run()
        self.pending = _drain(self.pending, self.summary, self.progress, limit=max(16, 4 * self.opts.batch_size))

    def finish(self) -> None:
        self.pending = _drain(self.pending, self.summary, self.progress, limit=0)


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


@contextlib.contextmanager
def _writer(threads: int) -> Iterator[Any]:
    """``submit`` of a pool of encoding threads (CUDA), or of running each write at once, here (CPU)."""
    if threads:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            yield pool.submit
        return

    def now(fn: Any, *args: Any) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args))
        return fut

    yield now


# Write errors that every later write would meet too: the run stops at the first (a full disk once
# made 59 images decode, translate and fail one by one for 58 s).
_STOP_WRITING = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "output on a "
                 "read-only filesystem", errno.EACCES: "output folder not writable", errno.EPERM:
                 "output folder not writable", errno.ENOENT: "output folder vanished", errno.EIO: "I/O error"}


def _write(job: Job, rgbs: tuple[Tensor, ...], alpha: Tensor | None, item: dict[str, Any], quality: int
           ) -> tuple[Job, str | None]:
    try:
        for dst, rgb in zip(job.outputs, rgbs, strict=True):
            encode_atomic(dst, rgb, alpha, item["icc"], item["exif"], quality)
    except OSError as e:
        if e.errno in _STOP_WRITING:
            return job, f"stop: {_STOP_WRITING[e.errno]}"
        return job, f"write failed: {reason(e)}"
    except Exception as e:  # this file fails, the run goes on
        return job, f"write failed: {reason(e)}"
    return job, None


def _drain(pending: list[Future], summary: RunSummary, progress: Progress, limit: int) -> list[Future]:
    """Collect finished writes; block while more than ``limit`` are in flight (bounds memory)."""
    still = []
    for i, fut in enumerate(pending):
        if fut.done() or len(pending) - i > limit:
            job, error = fut.result()
            if error is None:
                summary.translated += 1
                progress.advance()
            elif error.startswith("stop: "):  # not this file's failure: the rerun writes it
                if not summary.stopped:
                    summary.stopped = error.removeprefix("stop: ")
                    progress.say(f"{summary.stopped}: stopping after the {summary.translated} outputs written ...")
            else:
                summary.failed.append((str(job.src), error))
                progress.fail(str(job.src), error)
        else:
            still.append(fut)
    return still


def _gather(summary: RunSummary, dist: Dist) -> None:
    """Sum the counts of all ranks (failures are listed by the rank that met them); the slowest's time."""
    t = dist.all_reduce(torch.tensor([summary.translated, summary.skipped, len(summary.failed)], dtype=torch.float64))
    summary.translated, summary.skipped = int(t[0]), int(t[1])
    summary.failed_elsewhere = int(t[2]) - len(summary.failed)
    summary.seconds = float(dist.all_reduce(torch.tensor([summary.seconds], dtype=torch.float64), op="max"))
