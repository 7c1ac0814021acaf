"""`translate run` from a cached OpenVINO model, without torch.

A run on the CPU whose network OpenVINO compiled before (an entry in ov_cache's cache, written by
the first run of the same weights) needs torch for nothing: the entry is found by the weights
file's own bytes (ov_cache.tensors_digest, the key engines.tensors_id gives the same tensors), the
images are decoded, padded and scaled in numpy, the compiled model runs them, and plan.py writes
them. Importing torch is 1.4 s of a 4.9 s run of 20 photos on a 2-core Zen5; this path runs the
same 20 in about 3.2 s, with the same output files (tests/test_cached.py compares their pixels).

:func:`run_cached` takes a run only where the full path (infer.run) would run this same cached
model on the same inputs, and returns None for every other (the first run of a weights file,
tiles, ``--size``, samples and styles, CUDA or a GPU present, fp16, torchrun, ``--workers``, an
``auto`` engine on a CPU without bf16, where engines.pick_engine may pick torch's Winograd
convolutions, and a net with a fixed resolution or gray images): infer.run takes those.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from translate.core.errors import TranslateError
from translate.core.files import TORCH_DTYPES, WEIGHTS_FORMAT, read_safetensors, weights_kind
from translate.core.options import RunOptions
from translate.core.progress import Progress
from translate.inference.ov_cache import EngineCache, cache_key, cache_root, compile_cached, tensors_digest
from translate.inference.plan import (
    DEFAULT_WEIGHTS,
    Outputs,
    RunSummary,
    decode_job,
    group_batches,
    padded,
    pick_generator,
    plan,
    run_inputs,
    translate_batches,
)


@dataclass
class _Host:
    """A batch's outputs, already on the host (the ``launched`` of plan.translate_batches)."""

    images: list[np.ndarray]
    done: None = None

    def result(self) -> list[np.ndarray]:
        return self.images


class CachedTranslator:
    """A translator's network as OpenVINO compiled it, called on uint8 images (translator.launch_batch's
    arithmetic in numpy: reflect-pad to the size multiple, [-1, 1], the net, clip, round, crop)."""

    def __init__(self, compiled: Any, multiple: int, nz: int) -> None:
        self.request, self.multiple, self.nz = compiled.create_infer_request(), multiple, nz

    def launch(self, batch: dict[str, Any], good: list[dict[str, Any]]) -> list[_Host]:
        sizes = [it["rgb"].shape[-2:] for it in good]
        size = padded(sizes[0], self.multiple)
        x = np.stack([_pad_to(it["rgb"], size) for it in good]).astype(np.float32)
        x = x / np.float32(127.5) - np.float32(1.0)  # images.to_signed
        inputs = [x, np.zeros((len(good), self.nz), np.float32)] if self.nz else [x]
        y = self.request.infer(inputs)[0]
        if y.shape[-2:] != x.shape[-2:]:  # (every registered translator keeps its input's size)
            raise TranslateError(f"the cached model returned {y.shape[-1]}x{y.shape[-2]} for {x.shape[-1]}x"
                                 f"{x.shape[-2]}: run with --engine torch")
        u8 = ((np.clip(y, -1, 1) + np.float32(1)) * np.float32(127.5)).round().astype(np.uint8)  # images.to_u8
        return [_Host([u8[i, :, :h, :w] for i, (h, w) in enumerate(sizes)])]


def _pad_to(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) padded at the bottom/right to ``size``: reflect where possible, else replicate (translator.pad_to)."""
    ph, pw = size[0] - rgb.shape[-2], size[1] - rgb.shape[-1]
    if ph == 0 and pw == 0:
        return rgb
    mode = "reflect" if ph < rgb.shape[-2] and pw < rgb.shape[-1] else "edge"
    return np.pad(rgb, ((0, 0), (0, ph), (0, pw)), mode=mode)  # type: ignore[call-overload]


def run_cached(in_dir: str | Path, out_dir: str | Path, opts: RunOptions | None = None, *,
               progress: Progress | None = None) -> RunSummary | None:
    """infer.run's work for a run its cached OpenVINO model can take alone (see the module's text),
    or None, having written nothing, for infer.run to take."""
    opts, progress = opts or RunOptions(), progress or Progress.silent()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    found = _cached(opts)  # (first: a run it declines walks the folder once, in infer.run)
    if found is None:
        return None
    files = run_inputs(in_dir, out_dir, opts)
    entry, facts, precision, bf16 = found
    start = time.perf_counter()
    opts = dataclasses.replace(opts, batch_size=opts.batch_size or 1)
    jobs, summary = plan(in_dir, out_dir, opts, files=files)
    if any(job.size[0] * job.size[1] > opts.max_pixels for job in jobs):
        return None  # tiles: torch's (tiling.py)
    try:
        compiled = compile_cached(entry, bf16=bf16)
    except (ImportError, RuntimeError):
        return None
    tr = CachedTranslator(compiled, int(facts["multiple"]), int(facts.get("nz") or 0))
    summary.precision, summary.device, summary.out_dir, summary.engine = precision, "cpu", out_dir, "openvino"
    outputs = Outputs(jobs, opts, summary, progress)
    batches = ({"items": [decode_job(jobs[i], i) for i in b]} for b in group_batches(jobs, tr.multiple, opts))
    summary.interrupted = translate_batches(batches, tr.launch, outputs, writers=0)
    summary.seconds = time.perf_counter() - start
    return summary


def translate_folder(in_dir: str | Path, out_dir: str | Path, opts: RunOptions | None = None, *,
                     progress: Progress | None = None) -> RunSummary:
    """`translate run`: :func:`run_cached` where it can, else infer.run (which imports torch, only then)."""
    summary = run_cached(in_dir, out_dir, opts, progress=progress)
    if summary is None:
        from translate.inference.infer import run

        summary = run(in_dir, out_dir, opts, progress=progress)
    return summary


def _cached(opts: RunOptions) -> tuple[EngineCache, dict[str, Any], str, bool] | None:
    """(cache entry, its facts, precision, whether OpenVINO computes bf16) of the model the full
    path would run ``opts`` with, where it is cached and the run is one this module takes; else None."""
    if (sys.platform != "linux" or opts.engine not in ("auto", "openvino") or opts.compile or opts.samples != 1
            or opts.seed is not None or opts.style is not None or opts.size or opts.workers
            or opts.device not in ("auto", "cpu") or (opts.device == "auto" and _gpu_present())
            or os.environ.get("WORLD_SIZE", "1") != "1"):
        return None
    native = cpu_bf16_native()
    if native is None:
        return None
    precision = opts.precision if opts.precision != "auto" else "bf16" if native else "fp32"
    if precision not in ("fp32", "bf16") or (opts.engine == "auto" and not native and precision == "fp32"):
        return None
    entry = _entry(opts)
    facts = entry.facts() if entry is not None and entry.valid() else None
    if not facts or facts.get("resolution") or facts.get("in_ch") != 3 or facts.get("out_ch") != 3:
        return None
    return entry, facts, precision, precision == "bf16" and native  # type: ignore[return-value]


def _entry(opts: RunOptions) -> EngineCache | None:
    """The cache entry of the generator ``opts`` asks for, keyed from the weights file's bytes, or
    None where the file is not a translator's weights as this version writes them (the full path
    then says what is wrong)."""
    try:
        path = Path(opts.weights or DEFAULT_WEIGHTS)
        if not path.is_file():  # (a folder, a FIFO, a device: the full path says what it is, unread)
            return None
        raw = read_safetensors(path)
        meta = raw.meta
        nets, arch = json.loads(meta["nets"]), json.loads(meta["arch"])
        if meta.get("format") != WEIGHTS_FORMAT or weights_kind(meta, nets) != "translator":
            return None
        name = pick_generator(nets, path, opts.direction)
        tensors = [(key.partition(".")[2], TORCH_DTYPES[dtype], shape, data)
                   for key, (dtype, shape, data) in raw.tensors.items() if key.partition(".")[0] == name]
        digest = tensors_digest(json.dumps(arch[name], sort_keys=True), tensors)
        return EngineCache(cache_root(), cache_key(digest))
    except Exception:  # (unreadable, not ours, an unknown dtype, openvino not installed ...): the full path's to say
        return None


def cpu_bf16_native() -> bool | None:
    """What core/devices.cpu_bf16_native (oneDNN, through torch) says, from the CPU's flags: True for
    AVX-512 (F, BW, VL, DQ: oneDNN computes bf16 there), False for a CPU with neither it nor the
    AVX-NE-CONVERT of AVX2-VNNI-2; None where it cannot be told without oneDNN (another CPU, or
    oneDNN capped by ONEDNN_MAX_CPU_ISA or its older name DNNL_MAX_CPU_ISA)."""
    if any(os.environ.get(cap, "ALL").upper() != "ALL" for cap in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")):
        return None
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return None
    flags = set(line.partition(":")[2].split())
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return True
    return None if "avx_ne_convert" in flags or "avx2" not in flags else False


def _gpu_present() -> bool:
    """A GPU torch may use (NVIDIA's driver, ROCm's or WSL's device): then ``--device auto`` is torch's to pick."""
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg"))
