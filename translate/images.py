"""Reading images as RGB uint8 tensors, whatever their mode, bit depth or EXIF orientation."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
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


# --- batch translation: decode with metadata, encode with metadata ---------------------------------

ORIENTATION = 0x0112
FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF",
           "tiff": "TIFF", "ppm": "PPM"}
_FAST_MODES = {"RGB", "L", "RGBA", "LA"}


@dataclass
class Decoded:
    """An image ready for a network, plus what must be carried over to its output file."""

    rgb: Tensor  # (3, H, W) uint8, EXIF orientation applied
    alpha: Tensor | None  # (1, H, W) uint8 or None
    icc: bytes | None
    exif: bytes | None  # with the orientation tag reset to 1 (the pixels are already upright)


def probe_size(path: str | Path) -> tuple[int, int]:
    """(height, width) as displayed (EXIF rotation applied), from the header only."""
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):
            w, h = h, w
        return h, w


def _jpeg_complete(data: bytes) -> bool:
    """A JPEG whose data ends early lacks the end marker after its last scan."""
    sos = data.rfind(b"\xff\xda")
    return sos < 0 or data.find(b"\xff\xd9", sos) >= 0


def decode(path: str | Path) -> Decoded:
    """Decode any supported image: torchvision's decoders for plain 8-bit JPEG/PNG/WebP (the fast
    path), Pillow for every other mode, bit depth, format or orientation. Raises on bad files."""
    from torchvision.io import ImageReadMode, decode_image

    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        exif = im.getexif()
        orientation = exif.get(ORIENTATION, 1)
        icc = im.info.get("icc_profile")
        exif_bytes = None
        if len(exif):
            exif[ORIENTATION] = 1
            exif_bytes = exif.tobytes()
        has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        if im.format == "JPEG" and not _jpeg_complete(data):
            raise OSError("truncated JPEG (no end-of-image marker)")
        if im.format in ("JPEG", "PNG", "WEBP") and im.mode in _FAST_MODES and orientation == 1:
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            t = decode_image(buf, ImageReadMode.RGB_ALPHA if has_alpha else ImageReadMode.RGB)
            return Decoded(t[:3].contiguous(), t[3:4].contiguous() if has_alpha else None, icc, exif_bytes)
        im = ImageOps.exif_transpose(im)
        im.load()
        alpha = None
        if has_alpha:
            a = (im.convert("RGBA") if im.mode in ("P", "PA") else im).getchannel("A")
            alpha = torch.frombuffer(bytearray(a.tobytes()), dtype=torch.uint8).view(1, a.height, a.width)
        rgb = to_rgb(im)
        t = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
        return Decoded(t.permute(2, 0, 1).contiguous(), alpha, icc, exif_bytes)


def encode_atomic(path: str | Path, rgb: Tensor, alpha: Tensor | None = None, icc: bytes | None = None,
                  exif: bytes | None = None, quality: int = 95) -> None:
    """Write (3, H, W) uint8 (+ alpha) in the format the suffix names, carrying ICC and EXIF over,
    through a temp file and a rename so no half-written file is ever left."""
    from translate.checkpoints import atomic_path

    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower().lstrip("."), "PNG")
    arr = rgb.permute(1, 2, 0).contiguous().numpy()
    im = Image.fromarray(arr, mode="RGB")
    if alpha is not None and fmt in ("PNG", "WEBP", "TIFF"):
        im.putalpha(Image.fromarray(alpha[0].contiguous().numpy(), mode="L"))
    kwargs: dict = {}
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    if icc and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kwargs["icc_profile"] = icc
    if exif and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kwargs["exif"] = exif
    with atomic_path(path) as tmp:
        im.save(tmp, format=fmt, **kwargs)
