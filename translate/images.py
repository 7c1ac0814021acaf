"""Reading images as RGB uint8 tensors, whatever their mode, bit depth or EXIF orientation."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torch import Tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder``, sorted, skipping hidden files and folders."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if is_image_file(Path(f))]
        if not recursive:
            break
    return sorted(found)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16-bit and 32-bit integer images are scaled, not clipped."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        t = torch.from_numpy(__import__("numpy").asarray(im, dtype="float32").copy())
        peak = 65535.0 if im.mode.startswith("I;16") or float(t.max()) > 255 else 255.0
        if im.mode == "F" and float(t.max()) <= 1.0:
            peak = 1.0
        t = (t / peak * 255.0).round().clamp(0, 255).to(torch.uint8)
        im = Image.fromarray(t.numpy(), mode="L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


def read_rgb(path: str | Path) -> Tensor:
    """Decode a file to a (3, H, W) uint8 tensor, EXIF orientation applied.

    Raises OSError (or PIL's subclasses) for unreadable or truncated files: callers decide
    whether to skip.
    """
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im.load()
        im = to_rgb(im)
        t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        return t.view(im.height, im.width, 3).permute(2, 0, 1).contiguous()


def save_png_atomic(image: Tensor, path: str | Path) -> None:
    """Save a (3, H, W) float image in [0, 1] (or uint8) as PNG via a temp file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = image.permute(1, 2, 0).contiguous().cpu().numpy()
    from translate.checkpoints import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
