"""Images above ``max_pixels`` in overlapping, blended tiles, normalised as the whole image (see translate_tiled)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.core.devices import fitting
from translate.core.images import to_signed, to_u8
from translate.core.options import RunOptions
from translate.inference.plan import padded
from translate.inference.translator import Launched, Translator, launch_batch, pad_to


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
    return [*range(0, length - tile, step), length - tile]


def translate_tiled(tr: Translator, rgb: Tensor, multiple: int, opts: RunOptions, z: Tensor | None = None) -> Tensor:
    """Translate a large image in overlapping tiles, blended with linear ramps.

    Tiles alone would each normalise by their own InstanceNorm statistics and disagree in tone.
    So every tile uses statistics of the whole image instead, measured in one pass over the image
    scaled down to ``max_pixels``. (Refining them from the full-resolution tiles is not worth it:
    each refinement pass fixes only one more layer, as every layer's statistics depend on the
    layers before.) Memory stays bounded by the tile size and ``max_pixels``, whatever the image.
    ``multiple``: the net's size multiple; ``z``: its latent, if it takes one.
    """
    h, w = rgb.shape[-2:]
    x = to_signed(rgb.to(tr.device))[None]
    stats: dict[nn.Module, tuple[Tensor, Tensor]] = {}
    if any(isinstance(mod, nn.InstanceNorm2d) for mod in _base(tr.net).modules()):
        s = min(1.0, math.sqrt(opts.max_pixels / (h * w)))
        small_size = [max(multiple, round(side * s / multiple) * multiple) for side in (h, w)]
        small = F.interpolate(x, size=small_size, mode="bilinear", antialias=True, align_corners=False)
        stats = instance_norm_stats(tr, small, z)
    # Tiles start on multiples of the size multiple, the grid of the net's strided convolutions, as the whole image
    # does: pad the image as the untiled path would, tile that, crop back. A tile off the grid is
    # sampled on another grid by the strided convolutions and disagrees with its neighbours.
    hp, wp = padded((h, w), multiple)
    x = pad_to(x, (hp, wp))
    tile = max(multiple, (min(opts.tile, max(hp, wp)) // multiple) * multiple)
    overlap = min(opts.overlap, tile // 4)
    step = max(multiple, (tile - overlap) // multiple * multiple)
    out = torch.zeros(3, hp, wp, device=tr.device)
    weight = torch.zeros(1, hp, wp, device=tr.device)
    with shared_instance_norm(_base(tr.net), stats):
        for top in _starts(hp, tile, step):
            for left in _starts(wp, tile, step):
                piece = x[..., top : top + tile, left : left + tile]
                ph, pw = piece.shape[-2:]
                y = tr(pad_to(piece, padded((ph, pw), multiple)), z)[0, :, :ph, :pw]
                wy = _ramp(ph, overlap, top == 0, top + ph >= hp, tr.device)
                wx = _ramp(pw, overlap, left == 0, left + pw >= wp, tr.device)
                wt = wy[:, None] * wx[None, :]
                out[:, top : top + ph, left : left + pw] += y * wt
                weight[:, top : top + ph, left : left + pw] += wt
    return to_u8(out[:, :h, :w] / weight[:, :h, :w]).cpu()


@dataclasses.dataclass
class Joined:
    """The parts of a batch that was split to fit in memory, read as one :class:`Launched`."""

    parts: list[Launched | Joined]

    @property
    def done(self) -> Any:
        return self.parts[-1].done

    def result(self) -> list[Tensor]:
        return [img for part in self.parts for img in part.result()]


def launch_fitting(tr: Translator, rgbs: list[Tensor] | Tensor, multiple: int, z: Tensor | None = None,
                   opts: RunOptions | None = None, note: Callable[[str], None] = lambda _: None
                   ) -> Launched | Joined:
    """:func:`launch_batch`, but where the device runs out of memory the batch is halved and tried
    again (``devices.fitting``), down to one image, and that one image in ever smaller tiles; ``note``
    hears each retreat. Out of memory is CUDA's (``torch.cuda.OutOfMemoryError``); a CPU that runs
    out is stopped by the kernel before Python sees it."""

    def launch(part: list[Tensor] | Tensor) -> Launched | Joined:
        try:
            return launch_batch(tr, part, multiple, z)
        except torch.cuda.OutOfMemoryError:
            if len(part) > 1:
                raise  # fitting halves it
        if tr.device.type == "cuda":  # (outside the handler: the failed attempt's tensors are freed first)
            torch.cuda.empty_cache()
        return _tiled_to_fit(tr, part[0], multiple, z, opts or RunOptions(), note)

    return fitting(launch, rgbs, note, join=lambda a, b: Joined([a, b]))


def _tiled_to_fit(tr: Translator, rgb: Tensor, multiple: int, z: Tensor | None, opts: RunOptions,
                  note: Callable[[str], None]) -> Launched:
    """One image that does not fit whole, in tiles halved until they do."""
    h, w = rgb.shape[-2:]
    tile = min(opts.tile, max(h, w)) // 2
    while tile >= 4 * multiple:
        note(f"out of GPU memory with one {w}x{h} image: translating it in tiles of {tile}x{tile}")
        smaller = dataclasses.replace(opts, tile=tile, max_pixels=min(opts.max_pixels, tile * tile))
        try:
            return Launched(translate_tiled(tr.eager(), rgb, multiple, smaller, z)[None], [(h, w)])
        except torch.cuda.OutOfMemoryError:
            tile //= 2
    raise torch.cuda.OutOfMemoryError(f"a {w}x{h} image does not fit in GPU memory even in {4 * multiple}px tiles")
