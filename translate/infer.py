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
import math
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
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from translate import resource
from translate.checkpoints import WeightsFile, read_weights
from translate.devices import (
    DTYPES,
    autotune,
    close_distributed,
    init_distributed,
    peak_gpu_bytes,
    pick_device,
    resolve_precision,
)
from translate.errors import EXIT_PARTIAL, TranslateError, exit_code
from translate.images import FORMATS, IMAGE_EXTENSIONS, decode, encode_atomic, is_image_file, probe_size, resize_u8
from translate.options import RunOptions
from translate.signals import StopSignals, blocked, ignore_in_worker

DEFAULT_WEIGHTS = resource("weights") / "default.safetensors"


@dataclass
class RunSummary:
    found: int = 0
    translated: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    precision: str = ""
    device: str = ""
    failed_elsewhere: int = 0  # failures met by other ranks (they list their own)
    interrupted: int | None = None  # the signal that stopped the run early
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
        return EXIT_PARTIAL if self.n_failed else 0

    def line(self) -> str:
        """The one-line summary `translate run` prints last."""
        peak = f", peak GPU memory {self.peak_gpu_bytes / 2**30:.2f} GiB" if self.peak_gpu_bytes else ""
        text = (f"translated {self.translated}, skipped {self.skipped} (already there), failed {self.n_failed} of "
                f"{self.found} images in {self.seconds:.1f}s ({self.images_per_s:.2f} img/s, {self.precision} "
                f"on {self.device}{peak})")
        if self.interrupted is not None:
            return (f"interrupted by {signal.Signals(self.interrupted).name}: {text}; outputs in {self.out_dir}; "
                    "run the same command again to translate the rest")
        return f"{text}; outputs in {self.out_dir}"


# --- the model --------------------------------------------------------------------------------------

def pick_generator(wf: WeightsFile, direction: str) -> str:
    """Which net of a weights file translates in ``direction``."""
    if direction not in ("AtoB", "BtoA"):
        raise TranslateError(f"--direction must be AtoB or BtoA, not {direction!r}")
    if "G_A" in wf.nets:  # CycleGAN: G_A maps A to B, G_B maps B to A
        return "G_A" if direction == "AtoB" else "G_B"
    if direction == "BtoA":
        raise TranslateError(f"{wf.path} translates one way only (its model has no B-to-A generator); "
                             "train with data.direction=BtoA for the other way")
    if "G" in wf.nets:
        return "G"
    raise TranslateError(f"{wf.path} holds no generator (nets: {', '.join(wf.nets)})")


def input_size(spec: dict[str, Any]) -> tuple[int, int | None]:
    """(multiple, fixed resolution or None) the net's inputs need, from its registry entry (and its parts')."""
    from translate.registry import NETS

    if spec["net"] not in NETS:
        raise TranslateError(f"the weights' network {spec['net']!r} is not one this version knows "
                             f"(translators: {', '.join(NETS.names(role='translator'))})")
    return NETS.input_size(spec)


def size_multiple(spec: dict[str, Any]) -> int:
    """Inputs must be a multiple of this for the net to return the same size."""
    return input_size(spec)[0]


def io_channels(spec: dict[str, Any]) -> tuple[int, int]:
    """(input, output) image channels of a translator's spec; a composed one's from its halves."""
    kw = spec.get("kwargs", {})
    if "encoder" in kw and "decoder" in kw:
        return io_channels(kw["encoder"])[0] - kw.get("nz", 0), io_channels(kw["decoder"])[1]
    return kw.get("in_ch", kw.get("channels", 3)), kw.get("out_ch", kw.get("channels", 3))


class Translator:
    """A generator prepared for inference: eval, weights in the chosen precision, then what makes
    it faster on its device (each measured; bench/net_variants.py).

    Low precision means the whole net in bf16/fp16, not autocast: on a 2-core Zen4 CPU a bf16
    resnet_9blocks ran 0.83 img/s that way against 0.62 with autocast (fp32 0.37), with the same
    output (48 dB PSNR to fp32). Memory format: plain NCHW everywhere. On an H200 (torch 2.11,
    bf16, resnet_9blocks at 256x256) NCHW ran 1,320 img/s at batch 64 against 998 for
    channels_last: InstanceNorm works on NCHW and converted each layer's input back and forth.
    On the CPU channels_last slowed bf16 (-10%) and was no gain for fp32. CUDA graphs of each batch
    shape gained 0-2% at batch 16-128 there (the kernels, not their launches, take the time), so
    they are not used. ``winograd``: the CPU's 3x3 convolutions in fp32 as Winograd F(4x4, 3x3),
    fewer multiplications for the same sums (nets/winograd.py).

    What the net's weights fix is met here, so callers pass any RGB batch: ``resolution`` (a net that
    works at one size, as a StyleGAN2 decoder): images are resized to it and the outputs back;
    ``in_ch`` / ``out_ch`` 1: grayscale in (ITU-R 601 luma, as training's), gray repeated out;
    ``nz`` > 0: the net takes a latent z (BicycleGAN), zeros unless one is given.
    """

    def __init__(self, net: nn.Module, device: torch.device, precision: str, compile: bool = False, *,
                 channels_last: bool = False, winograd: bool | None = None, resolution: int | None = None,
                 in_ch: int = 3, out_ch: int = 3) -> None:
        self.device, self.precision = device, precision
        self.resolution, self.in_ch, self.out_ch = resolution, in_ch, out_ch
        self.nz = int(getattr(net, "nz", 0))
        self.dtype = DTYPES[precision]
        self.channels_last = channels_last
        from translate.nets.winograd import use_winograd, winograd_pays

        self.winograd = winograd_pays(device, self.dtype) if winograd is None else winograd
        net = net.to(device, self.dtype).eval()
        net.requires_grad_(False)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.winograd:
            use_winograd(net)
        self.net = torch.compile(net) if compile else net

    @torch.inference_mode()
    def __call__(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """float [-1, 1] (N, 3, H, W) on the device (and a latent (nz,) or (N, nz)) -> float32 (N, 3, H, W)."""
        size = tuple(x.shape[-2:])
        if self.in_ch == 1 and x.shape[1] == 3:
            x = (x * torch.tensor([0.2989, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if self.resolution and size != (self.resolution,) * 2:
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bicubic", antialias=True, align_corners=False)
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.nz:
            z = x.new_zeros(self.nz) if z is None else z.to(x.device, x.dtype)
            y = self.net(x, z.expand(x.shape[0], self.nz)).float()
        else:
            y = self.net(x).float()
        if tuple(y.shape[-2:]) != size:
            y = F.interpolate(y, size=size, mode="bicubic", antialias=True, align_corners=False)
        return y.expand(-1, 3, -1, -1) if y.shape[1] == 1 else y


def load_translator(weights: Path | None, direction: str, device: torch.device, precision: str,
                    compile: bool = False, **prepare: bool) -> tuple[Translator, int, str]:
    """Weights file -> (Translator, size multiple, net name)."""
    path = weights or DEFAULT_WEIGHTS
    if weights is None and not DEFAULT_WEIGHTS.is_file():
        raise TranslateError(f"no --weights given and the shipped default model is missing ({DEFAULT_WEIGHTS})")
    wf = read_weights(path)
    from translate.generate import model_kind, with_article

    if model_kind(wf) != "translator":
        raise TranslateError(f"`translate run` does not apply to {path.name}: it holds "
                             f"{with_article(str(wf.meta.get('method')))} {model_kind(wf)} (use translate sample)")
    name = pick_generator(wf, direction)
    net = wf.build(name)
    multiple, fixed = input_size(wf.arch[name])
    in_ch, out_ch = io_channels(wf.arch[name])
    tr = Translator(net, device, precision, compile, resolution=fixed, in_ch=in_ch, out_ch=out_ch, **prepare)
    return tr, 1 if fixed else multiple, name  # a fixed-size net resizes: no padding


def latents(tr: Translator, samples: int, seed: int | None) -> list[Tensor | None]:
    """One latent per output of each image: the same ``samples`` latents for every image, so the
    k-th outputs share a style and a rerun with the seed gives the same files. One sample without a
    seed: z = 0, the prior's mean. A model without a latent: [None]."""
    if not tr.nz:
        if samples > 1 or seed is not None:
            raise TranslateError(f"--samples and --seed need a model with a latent code; this one gives one "
                                 f"translation per input (recipes with one: {', '.join(latent_recipes())})")
        return [None]
    if samples == 1 and seed is None:
        return [torch.zeros(tr.nz)]
    return list(torch.randn(samples, tr.nz, generator=torch.Generator().manual_seed(seed or 0)))


def latent_recipes() -> list[str]:
    """Shipped recipes whose model takes a latent beside the image (a ``model.nz``)."""
    from translate.methods import get_method
    from translate.recipes import list_recipes, load_recipe

    return [n for n in list_recipes() if "nz" in {f.name for f in dataclasses.fields(
        get_method(load_recipe(n).method).ModelConfig)}]


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


def walk(in_dir: Path) -> list[Path]:
    """Every non-hidden image file under ``in_dir``, sorted (other files are ignored)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(in_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if is_image_file(Path(f))]
    return sorted(found)


def plan(in_dir: Path, out_dir: Path, opts: RunOptions, rank: int = 0, world: int = 1
         ) -> tuple[list[Job], RunSummary]:
    """This rank's jobs (a disjoint shard of the sorted list), with skips and header failures counted."""
    files = walk(in_dir)
    summary = RunSummary(found=len(files))
    jobs = []
    for src in files[rank::world]:
        dst = output_path(src, in_dir, out_dir, opts.format)
        if opts.skip_existing and all(sample_path(dst, k, opts.samples).exists() for k in range(opts.samples)):
            summary.skipped += 1
            continue
        try:
            h, w = probe_size(src)
        except Exception as e:  # any header problem is this file's failure, not the run's
            summary.failed.append((str(src), _reason(e)))
            continue
        jobs.append(Job(src, dst, scaled_size(h, w, opts.size), (h, w), opts.samples))
    return jobs, summary


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


MIN_SIDE = 16  # below this, the innermost feature maps of the generators shrink to a single pixel


def padded(size: tuple[int, int], m: int) -> tuple[int, int]:
    """The size the network sees: each side a multiple of ``m`` and at least ``MIN_SIDE``."""
    low = max(m, MIN_SIDE)
    return max(low, math.ceil(size[0] / m) * m), max(low, math.ceil(size[1] / m) * m)


def group_batches(jobs: list[Job], m: int, opts: RunOptions) -> list[list[int]]:
    """Batches of job indices whose padded sizes are equal; large images alone (they are tiled)."""
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    batches = []
    for i, job in enumerate(jobs):
        if job.size[0] * job.size[1] > opts.max_pixels:
            batches.append([i])
        else:
            by_size[padded(job.size, m)].append(i)
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
            return {"index": i, "error": _reason(e)}
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


# --- on the device --------------------------------------------------------------------------------

def pad_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Pad (N, C, h, w) at the bottom/right to ``size``: reflect where possible, else replicate."""
    ph, pw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def to_model(rgb: Tensor, device: torch.device) -> Tensor:
    return rgb.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def to_u8(x: Tensor) -> Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


@dataclass
class Launched:
    """A batch handed to the device: its uint8 output is on its way to (pinned) host memory."""

    host: Tensor  # (N, 3, H, W) uint8, padded size
    sizes: list[tuple[int, int]]
    done: Any = None  # a CUDA event recorded after the copy; None on the CPU

    def result(self) -> list[Tensor]:
        """Wait for the copy; uint8 (3, h, w) per image, cropped back to its own size."""
        if self.done is not None:
            self.done.synchronize()
        return [self.host[i, :, :h, :w] for i, (h, w) in enumerate(self.sizes)]


def launch_batch(tr: Translator, rgbs: list[Tensor] | Tensor, m: int, z: Tensor | None = None) -> Launched:
    """Queue the translation of images of one padded size (a list, or a stacked (N, 3, h, w)
    tensor) without waiting for it: on CUDA the host goes on to prepare the next batch while the
    device computes and copies this one back."""
    sizes = [tuple(r.shape[-2:]) for r in rgbs]
    size = padded(sizes[0], m)
    if isinstance(rgbs, Tensor):
        x = pad_to(to_model(rgbs, tr.device), size)
    else:
        x = torch.cat([pad_to(to_model(r, tr.device)[None], size) for r in rgbs])
    y = to_u8(tr(x, z))
    if y.device.type != "cuda":
        return Launched(y.cpu(), sizes)
    host = torch.empty(y.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(y, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return Launched(host, sizes, done)


def translate_batch(tr: Translator, rgbs: list[Tensor] | Tensor, m: int) -> list[Tensor]:
    """Translate images of one padded size together; returns uint8 (3, h, w) on the CPU."""
    return launch_batch(tr, rgbs, m).result()


@contextlib.contextmanager
def shared_instance_norm(net: nn.Module, stats: dict[nn.Module, tuple[Tensor, Tensor]]) -> Iterator[None]:
    """Make every InstanceNorm use fixed (mean, var) instead of each input's own statistics.

    Tiles of one image then share the whole image's normalisation, so their tones agree and the
    blended seams do not show.
    """
    originals = {}
    for mod, (mean, var) in stats.items():
        def forward(x: Tensor, mod=mod, mean=mean, var=var) -> Tensor:
            y = (x - mean.to(x.dtype)) * torch.rsqrt(var.to(x.dtype) + mod.eps)
            if mod.affine:
                y = y * mod.weight[None, :, None, None] + mod.bias[None, :, None, None]
            return y
        originals[mod] = mod.forward
        mod.forward = forward
    try:
        yield
    finally:
        for mod, fwd in originals.items():
            mod.forward = fwd


def instance_norm_stats(tr: Translator, x: Tensor, z: Tensor | None = None) -> dict[nn.Module, tuple[Tensor, Tensor]]:
    """Per-channel (mean, var) at every InstanceNorm layer for input ``x``."""
    stats: dict[nn.Module, tuple[Tensor, Tensor]] = {}
    norms = [mod for mod in _base(tr.net).modules() if isinstance(mod, nn.InstanceNorm2d)]

    def hook(mod: nn.Module, args: tuple[Tensor]) -> None:
        v = args[0].float()
        stats[mod] = (v.mean((2, 3), keepdim=True), v.var((2, 3), unbiased=False, keepdim=True))

    handles = [mod.register_forward_pre_hook(hook) for mod in norms]
    try:
        tr(x, z)
    finally:
        for h in handles:
            h.remove()
    return stats


def _base(net: nn.Module) -> nn.Module:
    return getattr(net, "_orig_mod", net)


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool, device: torch.device) -> Tensor:
    """1-D blending weights: rising over the overlap unless at the image border."""
    w = torch.ones(n, device=device)
    k = min(overlap, n // 2)
    if k > 0:
        ramp = (torch.arange(k, device=device, dtype=torch.float32) + 0.5) / k
        if not at_start:
            w[:k] = ramp
        if not at_end:
            w[n - k :] = ramp.flip(0)
    return w


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def translate_tiled(tr: Translator, rgb: Tensor, m: int, opts: RunOptions, z: Tensor | None = None) -> Tensor:
    """Translate a large image in overlapping tiles, blended with linear ramps.

    Tiles alone would each normalise by their own InstanceNorm statistics and disagree in tone.
    So every tile uses statistics of the whole image instead, measured in one pass over the image
    scaled down to ``max_pixels``. (Refining them from the full-resolution tiles is not worth it:
    each refinement pass fixes only one more layer, as every layer's statistics depend on the
    layers before.) Memory stays bounded by the tile size and ``max_pixels``, whatever the image.
    """
    h, w = rgb.shape[-2:]
    x = to_model(rgb, tr.device)[None]
    stats: dict[nn.Module, tuple[Tensor, Tensor]] = {}
    if any(isinstance(mod, nn.InstanceNorm2d) for mod in _base(tr.net).modules()):
        s = min(1.0, math.sqrt(opts.max_pixels / (h * w)))
        small_size = (max(m, round(h * s / m) * m), max(m, round(w * s / m) * m))
        small = F.interpolate(x, size=small_size, mode="bilinear", antialias=True, align_corners=False)
        stats = instance_norm_stats(tr, small, z)
    # Tiles start on multiples of m, the grid of the net's strided convolutions, as the whole image
    # does: pad the image as the untiled path would, tile that, crop back. A tile off the grid is
    # sampled on another grid by the strided convolutions and disagrees with its neighbours.
    hp, wp = padded((h, w), m)
    x = pad_to(x, (hp, wp))
    tile = max(m, (min(opts.tile, max(hp, wp)) // m) * m)
    overlap = min(opts.overlap, tile // 4)
    step = max(m, (tile - overlap) // m * m)
    out = torch.zeros(3, hp, wp, device=tr.device)
    weight = torch.zeros(1, hp, wp, device=tr.device)
    with shared_instance_norm(_base(tr.net), stats):
        for top in _starts(hp, tile, step):
            for left in _starts(wp, tile, step):
                piece = x[..., top : top + tile, left : left + tile]
                ph, pw = piece.shape[-2:]
                y = tr(pad_to(piece, padded((ph, pw), m)), z)[0, :, :ph, :pw]
                wy = _ramp(ph, overlap, top == 0, top + ph >= hp, tr.device)
                wx = _ramp(pw, overlap, left == 0, left + pw >= wp, tr.device)
                wt = wy[:, None] * wx[None, :]
                out[:, top : top + ph, left : left + pw] += y * wt
                weight[:, top : top + ph, left : left + pw] += wt
    return to_u8(out[:, :h, :w] / weight[:, :h, :w]).cpu()


# --- the run ------------------------------------------------------------------------------------------

def check_folders(in_dir: Path, out_dir: Path) -> None:
    if not in_dir.exists():
        raise TranslateError(f"input folder not found: {in_dir}")
    if not in_dir.is_dir():
        raise TranslateError(f"input is not a folder: {in_dir}")
    if out_dir.exists() and not out_dir.is_dir():
        raise TranslateError(f"output {out_dir} is a file, not a folder: give a folder to write the "
                             "translated images to")
    i, o = in_dir.resolve(), out_dir.resolve()
    if o == i or i in o.parents:
        raise TranslateError(f"output folder {out_dir} is inside the input folder {in_dir}: "
                             "outputs would be read as inputs next time; choose another place")


def run(in_dir: str | Path, out_dir: str | Path, opts: RunOptions | None = None, *, progress: Any = None
        ) -> RunSummary:
    """Translate every image under ``in_dir`` into the same tree under ``out_dir``.

    Returns a summary; ``summary.exit_code`` is 3 when some files failed. Under torchrun each rank
    takes a disjoint shard of the sorted file list.
    """
    opts = opts or RunOptions()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    check_folders(in_dir, out_dir)
    if opts.format != "keep" and opts.format not in FORMATS:
        raise TranslateError(f"--format must be keep, png, jpg or webp, not {opts.format!r}")
    device = pick_device(opts.device)
    dist = init_distributed(device)
    precision = resolve_precision(opts.precision, device)
    tr, m, _ = load_translator(opts.weights, opts.direction, device, precision, opts.compile)
    zs = latents(tr, opts.samples, opts.seed)
    start = time.perf_counter()
    if opts.batch_size is None:
        opts = dataclasses.replace(opts, batch_size=16 if device.type == "cuda" else 1)
    if tr.resolution:  # the net sees every image at its one size: nothing to tile
        opts = dataclasses.replace(opts, max_pixels=2**62)
    jobs, summary = plan(in_dir, out_dir, opts, dist.rank, dist.world_size)
    if not summary.found:
        kinds = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise TranslateError(f"no images found in {in_dir} (looked for: {kinds}; hidden files and folders "
                             "are skipped)")
    summary.precision, summary.device, summary.out_dir = precision, str(device), out_dir
    if progress is not None:
        progress.start(total=len(jobs) + summary.skipped + len(summary.failed), done=summary.skipped)
        for path, reason in summary.failed:
            progress.fail(path, reason)
    cuda = device.type == "cuda"
    workers, writers = _parallelism(opts, cuda)
    loader = DataLoader(_Decode(jobs), batch_sampler=group_batches(jobs, m, opts), num_workers=workers,
                        collate_fn=_collate, pin_memory=cuda, prefetch_factor=4 if workers else None,
                        worker_init_fn=ignore_in_worker)
    pending: list[Future] = []
    in_flight: tuple[list[dict[str, Any]], list[Launched]] | None = None

    def hand_over(good: list[dict[str, Any]], launched: list[Launched]) -> None:
        nonlocal pending
        outputs = zip(*(sample.result() for sample in launched), strict=True)  # per image, its samples
        for it, ys in zip(good, outputs, strict=True):
            alpha = it["alpha"] if opts.keep_alpha else None
            pending.append(writer.submit(_write, jobs[it["index"]], ys, alpha, it, opts.quality))
        pending = _drain(pending, summary, progress, limit=max(16, 4 * opts.batch_size))

    # On SIGINT/SIGTERM: take no new batch, finish the batch and writes in flight (each is atomic),
    # report. A rerun skips what is there and translates the rest.
    with StopSignals(progress.interrupted if progress is not None else None) as signals, \
            _writer(writers) as writer, autotune(cuda):
        with blocked():  # decoding workers start here
            batches = iter(loader)
        for batch in batches:
            if signals.stop is not None:
                break
            good = []
            for it in batch["items"]:
                if "error" in it:
                    summary.failed.append((str(jobs[it["index"]].src), it["error"]))
                    if progress is not None:
                        progress.fail(str(jobs[it["index"]].src), it["error"])
                else:
                    good.append(it)
            if not good:
                continue
            first = batch["stacked"] if batch["stacked"] is not None else good[0]["rgb"]
            if first.shape[-2] * first.shape[-1] > opts.max_pixels:
                launched = [Launched(translate_tiled(tr, good[0]["rgb"], m, opts, z)[None], [tuple(first.shape[-2:])])
                            for z in zs]
            else:
                rgbs = batch["stacked"] if batch["stacked"] is not None else [it["rgb"] for it in good]
                launched = [launch_batch(tr, rgbs, m, z) for z in zs]
            if in_flight is not None:
                hand_over(*in_flight)
                in_flight = None
            if launched[-1].done is None:  # already on the host (CPU, tiles): nothing to overlap, write now
                hand_over(good, launched)
            else:
                in_flight = (good, launched)
        if in_flight is not None:
            hand_over(*in_flight)
        _drain(pending, summary, progress, limit=0)
        summary.interrupted = signals.stop
    summary.seconds = time.perf_counter() - start
    summary.peak_gpu_bytes = peak_gpu_bytes(device)
    if dist.enabled:
        _gather(summary, device)
        close_distributed()
    return summary


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


class _Inline:
    """An executor that runs each task at once, in the calling thread."""

    def submit(self, fn: Any, *args: Any) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args))
        return fut


@contextlib.contextmanager
def _writer(threads: int) -> Iterator[Any]:
    if threads == 0:
        yield _Inline()
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield pool


def _write(job: Job, rgbs: tuple[Tensor, ...], alpha: Tensor | None, item: dict[str, Any], quality: int
           ) -> tuple[Job, str | None]:
    try:
        for dst, rgb in zip(job.outputs, rgbs, strict=True):
            encode_atomic(dst, rgb, alpha, item["icc"], item["exif"], quality)
    except Exception as e:  # e.g. a full disk or a read-only folder: this file fails, the run goes on
        return job, f"write failed: {_reason(e)}"
    return job, None


def _drain(pending: list[Future], summary: RunSummary, progress: Any, limit: int) -> list[Future]:
    """Collect finished writes; block while more than ``limit`` are in flight (bounds memory)."""
    still = []
    for i, fut in enumerate(pending):
        if fut.done() or len(pending) - i > limit:
            job, error = fut.result()
            if error is None:
                summary.translated += 1
                if progress is not None:
                    progress.advance()
            else:
                summary.failed.append((str(job.src), error))
                if progress is not None:
                    progress.fail(str(job.src), error)
        else:
            still.append(fut)
    return still


def _gather(summary: RunSummary, device: torch.device) -> None:
    """Sum the counts of all ranks (failures are listed by the rank that met them)."""
    import torch.distributed as dist

    t = torch.tensor([summary.translated, summary.skipped, len(summary.failed)], dtype=torch.float64,
                     device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    summary.translated, summary.skipped = int(t[0]), int(t[1])
    summary.failed_elsewhere = int(t[2]) - len(summary.failed)
    st = torch.tensor([summary.seconds], dtype=torch.float64, device=t.device)
    dist.all_reduce(st, op=dist.ReduceOp.MAX)
    summary.seconds = float(st)


class RunProgress:
    """Progress for `translate run`: a rich bar with rate and ETA on a terminal, plain lines every
    few seconds otherwise (logs of batch jobs), nothing with ``quiet``. Failures are always shown."""

    def __init__(self, console: Any, quiet: bool = False, every_s: float = 10.0, verb: str = "translating") -> None:
        self.console, self.quiet, self.every_s, self.verb = console, quiet, every_s, verb
        self.bar = None

    def start(self, total: int, done: int) -> None:
        self.total, self.done, self.t0, self.last = total, done, time.perf_counter(), 0.0
        self.first = done
        if self.quiet or not self.console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(self.verb), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TextColumn("eta"), TimeRemainingColumn(),
                            console=self.console)
        self.bar.start()
        self.task = self.bar.add_task("run", total=total, completed=done, rate="")

    def advance(self) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=f"{rate:.2f} img/s")
        elif not self.quiet and (elapsed - self.last >= self.every_s or self.done == self.total):
            self.last = elapsed
            self.console.print(f"{self.done}/{self.total} images, {rate:.2f} img/s", highlight=False)

    def interrupted(self, signum: int) -> None:
        self.console.print(f"{signal.Signals(signum).name}: finishing the images in flight, then stopping ...",
                           highlight=False)

    def fail(self, path: str, reason: str) -> None:
        self.console.print(f"[yellow]failed:[/] {path}: {reason}", highlight=False, soft_wrap=True)
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
