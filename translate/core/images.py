"""Images as tensors: uint8 pixels <-> the [-1, 1] range of the networks, luma, resize, and folders
read as a model's inputs. Decoding and encoding the files themselves is core/files.py (no torch)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from translate.core.errors import TranslateError, reason
from translate.core.files import NotRegularFile, atomic_path, check_regular, image_files, read_pixels
from translate.core.progress import Progress

LUMA = torch.tensor([0.2989, 0.587, 0.114])  # ITU-R 601 weights of R, G, B, as torchvision's rgb_to_grayscale


def to_gray(img: Tensor) -> Tensor:
    """(..., 3, H, W) uint8 -> (..., 1, H, W) uint8 luma, truncated (as torchvision's rgb_to_grayscale)."""
    r, g, b = img.float().unbind(-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).to(torch.uint8).unsqueeze(-3)


def to_signed(x: Tensor) -> Tensor:
    """uint8 pixels [0, 255] -> float [-1, 1], the range every network here works in."""
    return x.float().div(127.5).sub_(1.0)  # a new tensor even when x is float already


def to_u8(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 pixels, rounded (values outside are clipped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def to_unit(x: Tensor) -> Tensor:
    """float [-1, 1] -> [0, 1], as image grids are saved."""
    return (x.float() + 1.0) / 2.0


def resize_u8(img: Tensor, size: Sequence[int]) -> Tensor:
    """Bicubic, antialiased resize of a (C, H, W) uint8 image, as the reference's PIL resize does it
    (the same pixels as torchvision's resize, whose import alone takes 2.7 s: it pulls in
    torch._dynamo)."""
    h, w = size
    if tuple(img.shape[-2:]) == (h, w):
        return img
    return torch.nn.functional.interpolate(img[None], size=(h, w), mode="bicubic", antialias=True,
                                           align_corners=False)[0]


def read_rgb(path: str | Path) -> Tensor:
    """:func:`files.read_pixels` (its errors too) as a (3, H, W) uint8 tensor, EXIF orientation applied."""
    return torch.from_numpy(read_pixels(path))


def read_named(path: str | Path, what: str = "") -> Tensor:
    """:func:`read_rgb` of one file the user named (``what``: its option), or a one-line error."""
    try:
        return read_rgb(path)
    except (OSError, ValueError) as e:
        raise TranslateError(f"{what}{': ' if what else ''}cannot read {path}: {e}") from None


def model_input(img: Tensor, channels: int, resolution: int) -> Tensor:
    """A (3, H, W) uint8 image as the (channels, resolution, resolution) uint8 input of a net that works
    at one size (an autoencoder, a classifier), as training read it: luma for one channel, the
    antialiased bicubic resize. `score`, `classify`, `reconstruct` and `encode` all read images so."""
    return resize_u8(to_gray(img) if channels == 1 else img, (resolution, resolution))


def save_png_atomic(image: Tensor, path: str | Path) -> None:
    """Save a (3, H, W) float image in [0, 1] (or uint8) as PNG via a temp file and rename."""
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = image.permute(1, 2, 0).contiguous().cpu().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


# --- folders as model inputs ------------------------------------------------------------------------

class _Read(Dataset):
    def __init__(self, files: list[Path], channels: int, resolution: int) -> None:
        self.files, self.channels, self.resolution = files, channels, resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            return {"i": i, "x": model_input(read_rgb(self.files[i]), self.channels, self.resolution)}
        except Exception as e:  # any unreadable file is that file's failure
            return {"i": i, "error": reason(e)}


@dataclass
class Reading:
    """What reading a folder found: the files, those skipped unopened (FIFOs, sockets, devices) and
    those that failed, with their reasons."""

    root: Path
    files: list[Path]
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_folder(in_dir: str | Path) -> Reading:
    """The images under ``in_dir``; FIFOs, sockets and devices named like images set aside unopened."""
    reading = Reading(Path(in_dir), [])
    for path in image_files(in_dir):
        try:
            check_regular(path)
        except NotRegularFile as e:
            reading.skipped.append((str(path), str(e)))
            continue
        except OSError:
            pass  # (a broken link): it fails when read, with its reason
        reading.files.append(path)
    return reading


def model_batches(reading: Reading, channels: int, resolution: int, batch_size: int, device: torch.device,
            progress: Progress | None = None) -> Iterator[tuple[list[int], Tensor]]:
    """(file indices, float [-1, 1] batch on ``device``) over the readable files, each read as training
    reads it (:func:`model_input`); a file that cannot be read is recorded in ``reading.failed`` and said."""
    progress = progress or Progress.silent()
    for path, why in reading.skipped:
        progress.say(f"skipped {path}: {why}")
    cuda = device.type == "cuda"
    loader = DataLoader(_Read(reading.files, channels, resolution), batch_size=batch_size, collate_fn=list,
                        num_workers=4 if cuda else 0, pin_memory=cuda)
    for items in loader:
        for it in items:
            if "error" in it:
                reading.failed.append((str(reading.files[it["i"]]), it["error"]))
                progress.fail(str(reading.files[it["i"]]), it["error"])
        good = [it for it in items if "error" not in it]
        if good:
            x = torch.stack([it["x"] for it in good]).to(device, non_blocking=cuda)
            yield [it["i"] for it in good], to_signed(x)
            for _ in good:
                progress.advance()
