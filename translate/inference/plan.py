"""What a `translate run` does, apart from running the network: which generator of the weights,
which files (walked, sharded by rank, existing outputs skipped, headers read), in which batches
(equal padded size), decoded how, and how outputs are written (atomic, read back) and counted,
and signals met. No torch here: inference/infer.py runs it with a torch or OpenVINO translator,
inference/cached.py with a cached OpenVINO model alone, which then starts without importing torch.
"""

from __future__ import annotations

import contextlib
import errno
import math
import signal
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from translate import resource
from translate.core.errors import EXIT_PARTIAL, TranslateError, exit_code, reason
from translate.core.files import FORMATS, NotRegularFile, decode, encode_atomic, image_files, probe_size
from translate.core.options import RunOptions
from translate.core.progress import Progress
from translate.core.signals import StopSignals, blocked

DEFAULT_WEIGHTS = resource("weights") / "default.safetensors"  # the shipped model, when no --weights


def pick_generator(nets: Sequence[str], path: Path, direction: str) -> str:
    """Which net of a weights file (its ``nets``) translates in ``direction``."""
    if direction not in ("AtoB", "BtoA"):
        raise TranslateError(f"--direction must be AtoB or BtoA, not {direction!r}")
    if "G_A" in nets:  # CycleGAN: G_A maps A to B, G_B maps B to A
        return "G_A" if direction == "AtoB" else "G_B"
    if direction == "BtoA":
        raise TranslateError(f"{path} translates one way only (its model has no B-to-A generator); "
                             "train with data.direction=BtoA for the other way")
    if "G" in nets:
        return "G"
    raise TranslateError(f"{path} holds no generator (nets: {', '.join(nets)})")


MIN_SIDE = 16  # below this, the innermost feature maps of the generators shrink to a single pixel


def padded(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """The size the network sees: each side a multiple of ``multiple`` and at least ``MIN_SIDE``."""
    low = max(multiple, MIN_SIDE)
    return max(low, math.ceil(size[0] / multiple) * multiple), max(low, math.ceil(size[1] / multiple) * multiple)


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


def decode_job(job: Job, index: int) -> dict[str, Any]:
    """One job's image decoded: ``{"index", "rgb" (3, H, W) uint8, "alpha", "icc", "exif"}`` as numpy,
    or ``{"index", "error"}``. A decoder that disagrees with the header is a failure, not an image
    to squash into shape."""
    try:
        d = decode(job.src)
    except Exception as e:
        return {"index": index, "error": reason(e)}
    if tuple(d.rgb.shape[-2:]) != job.probed or d.rgb.dtype != np.uint8:
        return {"index": index, "error": f"decoded as {d.rgb.dtype} {d.rgb.shape[-1]}x{d.rgb.shape[-2]}, but its "
                                         f"header says {job.probed[1]}x{job.probed[0]}"}
    return {"index": index, "rgb": d.rgb, "alpha": d.alpha, "icc": d.icc, "exif": d.exif}


def run_inputs(in_dir: Path, out_dir: Path, opts: RunOptions) -> list[Path]:
    """The images under ``in_dir``, or one line: no images, an output inside the input, a format unknown."""
    files = image_files(in_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TranslateError(f"output {out_dir} is a file, not a folder: give a folder to write the "
                             "translated images to")
    i, o = in_dir.resolve(), out_dir.resolve()
    if o == i or i in o.parents:
        raise TranslateError(f"output folder {out_dir} is inside the input folder {in_dir}: "
                             "outputs would be read as inputs next time; choose another place")
    if opts.format != "keep" and opts.format not in FORMATS:
        raise TranslateError(f"--format must be keep, png, jpg or webp, not {opts.format!r}")
    return files


def translate_batches(batches: Iterable[dict[str, Any]], launch: Callable[[dict[str, Any], list[dict[str, Any]]],
                      list[Any]], outputs: Outputs, writers: int) -> int | None:
    """Every batch (``{"items": decoded items, ...}``: :func:`decode_job`'s) translated by ``launch``
    (batch, its readable items -> one result per sample, each with ``result()`` and ``done``: a CUDA
    event, or None when on the host already) and handed to ``outputs``; the signal that stopped it early.

    On SIGINT/SIGTERM: take no new batch, finish the batch and writes in flight (each is atomic),
    report. A rerun skips what is there and translates the rest."""
    def on_signal(signum: int) -> None:
        outputs.progress.say(f"{signal.Signals(signum).name}: finishing the images in flight, then stopping ...")

    with StopSignals(on_signal) as signals, _writer(writers) as outputs.submit:
        with blocked():  # decoding workers start here
            batches = iter(batches)
        in_flight: tuple[list[dict[str, Any]], list[Any]] | None = None
        for batch in batches:
            if signals.stop is not None or outputs.summary.stopped:
                break
            good = outputs.readable(batch["items"])
            if not good:
                continue
            launched = launch(batch, good)
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


class Outputs:
    """The writing side of a run: translated batches handed to the writer (threads on CUDA, here on the
    CPU), finished writes and failures counted into the summary and the progress display."""

    def __init__(self, jobs: list[Job], opts: RunOptions, summary: RunSummary, progress: Progress) -> None:
        self.jobs, self.opts, self.summary, self.progress = jobs, opts, summary, progress
        self.submit: Any = None  # the writer's submit, set by translate_batches
        self.pending: list[Future] = []
        self._noted: set[str] = set()
        progress.start(total=len(jobs) + summary.skipped + len(summary.failed), done=summary.skipped)
        for path, why in summary.not_files:
            progress.say(f"skipped {path}: {why}")
        for path, why in summary.failed:
            progress.fail(path, why)

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

    def hand_over(self, good: list[dict[str, Any]], launched: list[Any]) -> None:
        """``launched``: per sample, what ``result()`` gives the batch's uint8 (3, h, w) images of."""
        outputs = zip(*(sample.result() for sample in launched), strict=True)  # per image, its samples
        for it, ys in zip(good, outputs, strict=True):
            alpha = it["alpha"] if self.opts.keep_alpha else None
            self.pending.append(self.submit(_write, self.jobs[it["index"]], ys, alpha, it, self.opts.quality))
        assert self.opts.batch_size is not None  # resolved by run()
        self.pending = _drain(self.pending, self.summary, self.progress, limit=max(16, 4 * self.opts.batch_size))

    def finish(self) -> None:
        self.pending = _drain(self.pending, self.summary, self.progress, limit=0)


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


def _write(job: Job, rgbs: tuple[Any, ...], alpha: Any, item: dict[str, Any], quality: int
           ) -> tuple[Job, str | None]:
    try:
        for dst, rgb in zip(job.outputs, rgbs, strict=True):
            encode_atomic(dst, rgb, alpha, item["icc"], item["exif"], quality)
    except Exception as e:  # this file fails, the run goes on (unless every later write would fail too)
        if isinstance(e, OSError) and e.errno in _STOP_WRITING:
            return job, f"stop: {_STOP_WRITING[e.errno]}"
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


