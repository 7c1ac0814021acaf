"""Using the generative models: sample, interpolate, reconstruct, encode, and the zoo table.

Works from a weights file alone. A generator is exported as ``G`` (``forward(z, label, truncation)``),
an autoencoder as ``AE`` (``encode``/``decode``); see docs/zoo-contract.md. Translators (pix2pix,
CycleGAN) are for `translate run`; asking them to sample is a one-line error, and the other way round.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.core.checkpoints import WeightsFile, read_weights
from translate.core.errors import PartialFailures, TranslateError
from translate.core.files import atomic_path, probe_size
from translate.core.images import (
    Reading,
    model_batches,
    model_input,
    read_folder,
    read_named,
    save_png_atomic,
    to_signed,
    to_unit,
)
from translate.core.progress import Progress
from translate.inference.plan import padded
from translate.inference.translator import latent_recipes, load_translator, pad_to

if TYPE_CHECKING:
    from translate.nets import ExportedNet


def _open(weights: str | Path, command: str, device: str | torch.device
          ) -> tuple[WeightsFile, str, ExportedNet, torch.device]:
    """The weights file, its kind (checked for ``command``), its net (``AE`` or ``G``) on the device."""
    wf, device = read_weights(weights), torch.device(device)
    wf.check_kind(command)
    return wf, wf.kind, cast("ExportedNet", wf.build("AE" if wf.kind == "autoencoder" else "G", device)), device


def _labels(wf: WeightsFile, net: nn.Module, n: int, class_name: str | None, device: torch.device) -> Tensor | None:
    k = int(getattr(net, "num_classes", 0) or 0)
    if not k:
        if class_name is not None:
            raise TranslateError(f"--class: {wf.path.name} is not class-conditional")
        return None
    if class_name is None:
        return torch.arange(n, device=device) % k
    names = list(wf.info.get("classes", []))
    if class_name not in names:
        raise TranslateError(f"--class {class_name!r}: the model knows {', '.join(names) or f'{k} classes'}")
    return torch.full((n,), names.index(class_name), device=device, dtype=torch.long)


def _latents(n: int, z_dim: int, seed: int, device: torch.device) -> Tensor:
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed)).to(device)


@torch.inference_mode()
def _generate(net: ExportedNet, kind: str, z: Tensor, labels: Tensor | None, truncation: float) -> Tensor:
    if kind == "autoencoder":
        return net.decode(z * truncation)
    return net(z, labels, truncation=truncation)


def to_grid(images: Tensor, nrow: int) -> Tensor:
    """(N, C, H, W) in [-1, 1] -> one (3, H', W') image in [0, 1] with a 2-pixel gap."""
    from torchvision.utils import make_grid

    images = to_unit(images.clamp(-1, 1))
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return make_grid(images.cpu(), nrow=nrow, padding=2, pad_value=1.0)


def save_grid(images: Tensor, cols: int, path: str | Path) -> tuple[int, int]:
    """``images`` in [-1, 1] as a PNG grid of ``cols`` columns, written atomically; (rows, cols)."""
    save_png_atomic(to_grid(images, cols), path)
    return math.ceil(images.shape[0] / cols), cols


def sample(weights: str | Path, n: int = 64, seed: int = 0, truncation: float = 1.0, class_name: str | None = None,
           device: str | torch.device = "cpu") -> Tensor:
    """``n`` images from random latents (seeded), in [-1, 1]."""
    wf, kind, net, device = _open(weights, "sample", device)
    z = _latents(n, net.z_dim, seed, device)
    return _generate(net, kind, z, _labels(wf, net, n, class_name, device), truncation)


def write_samples(weights: str | Path, output: str | Path, n: int = 64, seed: int = 0, truncation: float = 1.0,
                  class_name: str | None = None, device: str | torch.device = "cpu") -> tuple[int, int]:
    """`translate sample`: :func:`sample`'s images as a near-square PNG grid in ``output``."""
    return save_grid(sample(weights, n, seed, truncation, class_name, device), max(1, math.ceil(math.sqrt(n))), output)


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation (rows of a to rows of b), the right path between Gaussian latents."""
    an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def load_for(net: ExportedNet, path: str | Path, device: torch.device) -> tuple[Tensor, tuple[int, int]]:
    """An image file as the autoencoder's input (its channels, its resolution, [-1, 1]) and the
    image's own (H, W)."""
    img = read_named(path)
    x = to_signed(model_input(img, net.channels, net.resolution))[None]
    return x.to(device), (img.shape[-2], img.shape[-1])


def interpolate(weights: str | Path, steps: int = 8, seed: int = 0, rows: int = 4,
                between: tuple[str | Path, str | Path] | None = None, device: str | torch.device = "cpu",
                image: str | Path | None = None) -> Tensor:
    """Rows of ``steps`` images along a latent path: slerp between random latents, or (``between``,
    autoencoders only) a straight line between the codes of two images, or (``image``, translators
    with a latent: BicycleGAN) the image, then its translations along slerp paths between latents."""
    if read_weights(weights).kind == "translator":
        return _interpolate_translation(weights, image, steps, seed, rows, torch.device(device))
    if image is not None:
        raise TranslateError("--input is for translators with a latent code (bicyclegan); generators walk between "
                             "random latents, autoencoders also --between two images")
    wf, kind, net, device = _open(weights, "interpolate", device)
    t = torch.linspace(0, 1, steps, device=device)[:, None]
    if between is not None:
        if kind != "autoencoder":
            raise TranslateError("--between needs a model with an encoder (ae, vae or beta-vae weights)")
        with torch.inference_mode():
            za, zb = (net.encode(load_for(net, p, device)[0]) for p in between)
            return net.decode(za * (1 - t) + zb * t)
    z = _latents(2 * rows, net.z_dim, seed, device)
    path = torch.cat([slerp(z[i : i + 1], z[rows + i : rows + i + 1], t) for i in range(rows)])
    labels = _labels(wf, net, rows, None, device)
    labels = labels.repeat_interleave(steps) if labels is not None else None
    return _generate(net, kind, path, labels, 1.0)


def write_interpolation(weights: str | Path, output: str | Path, steps: int = 8, seed: int = 0, rows: int = 4,
                        between: tuple[str | Path, str | Path] | None = None, device: str | torch.device = "cpu",
                        image: str | Path | None = None) -> tuple[int, int]:
    """`translate interpolate`: :func:`interpolate`'s paths as a PNG grid in ``output``, one a row."""
    images = interpolate(weights, steps, seed, rows, between, device, image)
    # only a translator takes --input (interpolate refuses it otherwise), and its rows start with the input
    return save_grid(images, steps + 1 if image is not None else steps, output)


def _interpolate_translation(weights: str | Path, image: str | Path | None, steps: int, seed: int, rows: int,
                             device: torch.device) -> Tensor:
    """``rows`` x (the input, then ``steps`` translations with z slerped between two seeded latents)."""
    tr, multiple, _ = load_translator(Path(weights), "AtoB", device, "fp32")
    if not tr.nz:
        raise TranslateError(f"`translate interpolate` on a translator walks its latent code, and {Path(weights).name} "
                             f"has none (recipes with one: {', '.join(latent_recipes())})")
    if image is None:
        raise TranslateError("--input IMAGE: the image to translate along the path (a translator needs one)")
    rgb = read_named(image)
    h, w = rgb.shape[-2:]
    x = pad_to(to_signed(rgb)[None].to(device), padded((h, w), multiple))
    t = torch.linspace(0, 1, steps, device=device)[:, None]
    z = _latents(2 * rows, tr.nz, seed, device)
    out = []
    for i in range(rows):
        out.append(x[..., :h, :w])
        out += [tr(x, zi)[..., :h, :w] for zi in slerp(z[i : i + 1], z[rows + i : rows + i + 1], t)]
    return torch.cat(out)


@dataclass
class FolderSummary(PartialFailures):
    """What `reconstruct` / `encode` did with a folder: images done, those that failed (exit 3), and those
    set aside unopened (FIFOs, sockets and devices named like images)."""

    failed: list[tuple[str, str]]
    done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    z: Tensor | None = None  # encode's codes, one row per image done


def encode_folder(net: Any, reading: Reading, batch_size: int, device: torch.device,
                  progress: Progress | None = None) -> tuple[list[int], Tensor]:
    """The codes (``net.encode``, the mean for VAEs) of every readable file of ``reading``, on the CPU,
    and the files' indices in row order; a file that cannot be read is recorded and said."""
    progress = (progress or Progress.silent()).start(total=len(reading.files))
    rows: list[int] = []
    codes = []
    for idx, x in model_batches(reading, net.channels, net.resolution, batch_size, device, progress):
        with torch.inference_mode():
            codes.append(net.encode(x).float().cpu())
        rows += idx
    if not rows:
        raise TranslateError(f"no readable images in {reading.root}")
    return rows, torch.cat(codes)


def reconstruct(weights: str | Path, in_dir: str | Path, out_dir: str | Path, device: str | torch.device = "cpu",
                progress: Progress | None = None, batch_size: int = 16) -> FolderSummary:
    """Encode and decode every image under ``in_dir`` into PNGs under ``out_dir`` (the same tree, each at
    its own size); an image that cannot be read is said and skipped."""
    _, _, net, device = _open(weights, "reconstruct", device)
    reading = read_folder(in_dir)
    progress = (progress or Progress.silent()).start(total=len(reading.files))
    done = 0
    for idx, x in model_batches(reading, net.channels, net.resolution, batch_size, device, progress):
        with torch.inference_mode():
            ys = net(x).float().clamp(-1, 1)
        for y, i in zip(ys, idx, strict=True):
            size = probe_size(reading.files[i])  # (read already: its header is not going to fail now)
            y = F.interpolate(y[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
            rel = reading.files[i].relative_to(reading.root)
            save_png_atomic(to_unit(y.clamp(-1, 1)).expand(3, -1, -1).cpu(), Path(out_dir) / rel.with_suffix(".png"))
            done += 1
    return FolderSummary(reading.failed, done, reading.skipped)


def encode(weights: str | Path, in_dir: str | Path, out: str | Path, device: str | torch.device = "cpu",
           progress: Progress | None = None, batch_size: int = 64) -> FolderSummary:
    """Latent codes of every readable image under ``in_dir`` as one (N, z_dim) tensor in a safetensors
    file; its metadata lists the files in row order."""
    from safetensors.torch import save_file

    _, _, net, device = _open(weights, "encode", device)
    reading = read_folder(in_dir)
    rows, z = encode_folder(net, reading, batch_size, device, progress)
    meta = {"files": json.dumps([str(reading.files[i].relative_to(reading.root)) for i in rows]),
            "weights": str(weights)}
    with atomic_path(out) as tmp:
        save_file({"z": z.contiguous()}, str(tmp), metadata=meta)
    return FolderSummary(reading.failed, len(rows), reading.skipped, z)
