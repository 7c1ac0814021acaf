"""Reading images as RGB uint8 tensors, whatever their mode, bit depth or EXIF orientation."""

from __future__ import annotations

import io
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from translate.core.checkpoints import atomic_path
from translate.core.errors import TranslateError, reason
from translate.core.progress import Progress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


class NotRegularFile(OSError):
    """A path named like an image that is a FIFO, socket or device: never opened, as opening a FIFO
    blocks until something writes to it (a `translate run` once hung there for good)."""


NOT_A_FILE = "not an image file"  # how every such path is reported (and recognised: evaluate.py)
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def check_regular(path: str | Path) -> None:
    """Raise :class:`NotRegularFile` unless ``path`` is (a link to) a regular file; stat only, no open."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "a special file")
        raise NotRegularFile(f"{kind}, {NOT_A_FILE}")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted, skipping hidden files and folders."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if is_image_file(Path(f))]
    return sorted(found)


def image_files(in_dir: str | Path) -> list[Path]:
    """The images under a folder given as input (``list_images``), or a one-line error: none, or no folder."""
    root = Path(in_dir)
    if not root.is_dir():
        raise TranslateError(f"input is not a folder: {root}" if root.exists() else f"input folder not found: {root}")
    files = list_images(root)
    if not files:
        kinds = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise TranslateError(f"no images found in {root} (looked for: {kinds}; hidden files and folders are skipped)")
    return files


LUMA = torch.tensor([0.2989, 0.587, 0.114])  # ITU-R 601 weights of R, G, B, as torchvision's rgb_to_grayscale


def to_gray(img: Tensor) -> Tensor:
    """(3, H, W) uint8 -> (1, H, W) uint8 luma, truncated (as torchvision's rgb_to_grayscale)."""
    r, g, b = img.float().unbind(0)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).to(torch.uint8)[None]


def to_signed(x: Tensor) -> Tensor:
    """uint8 pixels [0, 255] -> float [-1, 1], the range every network here works in."""
    return x.float().div(127.5).sub_(1.0)  # a new tensor even when x is float already


def to_u8(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 pixels, rounded (values outside are clipped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def to_unit(x: Tensor) -> Tensor:
    """float [-1, 1] -> [0, 1], as image grids are saved."""
    return (x.float() + 1.0) / 2.0


_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def bit_depth(im: Image.Image) -> int | None:
    """Significant bits per sample of a 16- or 32-bit mode image, where the file says so.

    A 12-bit TIFF opens as I;16 with values up to 4095: scaled as 16-bit it would come out black.
    Ask the image as opened: a copy has lost the format and the TIFF tags."""
    if im.mode not in _DEEP_MODES or im.mode == "F":
        return None
    if im.format == "TIFF":
        tags = getattr(im, "tag_v2", {})
        bits = tags.get(258)
        bits = bits[0] if isinstance(bits, tuple) else bits
        fmt = tags.get(339, 1)
        if isinstance(bits, int) and 8 < bits <= 16 and (fmt[0] if isinstance(fmt, tuple) else fmt) == 1:
            return bits
        return 16 if im.mode.startswith("I;16") else None
    if im.mode.startswith("I;16") or im.format in ("PNG", "PPM"):  # older Pillow opens 16-bit PNG as I
        return 16
    return None


def to_rgb(im: Image.Image, bits: int | None = None) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16-bit and 32-bit integer images are scaled, not clipped.

    ``bits`` (see bit_depth) known: the high 8 bits are kept, as Pillow itself decodes 16-bit RGB
    PNG/TIFF and torchvision's 16-bit PNG is reduced in decode(), so a picture decodes to the same
    pixels whether it is stored as 8- or 16-bit, gray or RGB (v8 * 257 and v8 * 256 both give v8).
    Otherwise (32-bit integers, floats) the peak is guessed from the values.
    """
    if im.mode in _DEEP_MODES:
        bits = bits or bit_depth(im)
        a = np.asarray(im)
        if bits:
            a = (a >> (bits - 8)).clip(0, 255)  # in the file's own dtype: no 8-byte copy of a large image
        else:
            a = a.astype(np.float32)
            top = float(a.max())
            peak = 1.0 if im.mode == "F" and top <= 1.0 else 255.0 if top <= 255 else 65535.0
            a = np.round(a / peak * 255.0).clip(0, 255)
        im = Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


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
    """Decode a file to a (3, H, W) uint8 tensor, EXIF orientation applied.

    Raises OSError (or PIL's subclasses) for unreadable or truncated files: callers decide
    whether to skip (:class:`NotRegularFile` for a FIFO, socket or device, which is not opened).
    """
    check_regular(path)
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        return _pillow_decode(im, data, with_alpha=False)[0]


def model_input(img: Tensor, channels: int, resolution: int) -> Tensor:
    """A (3, H, W) uint8 image as the (channels, resolution, resolution) uint8 input of a net that works
    at one size (an autoencoder, a classifier), as training read it: luma for one channel, the
    antialiased bicubic resize. `score`, `classify`, `reconstruct` and `encode` all read images so."""
    return resize_u8(to_gray(img) if channels == 1 else img, (resolution, resolution))


def _pillow_decode(im: Image.Image, data: bytes, with_alpha: bool) -> tuple[Tensor, Tensor | None]:
    """An image opened from ``data`` -> ((3, H, W) uint8 RGB, (1, H, W) uint8 alpha or None), EXIF
    orientation applied here, to the 8-bit tensors, the same way for every format and Pillow.

    Pillow turns a TIFF itself on load, differently by version. Measured with exif_transpose after
    it, as this module did: 10.0 turns every oriented TIFF twice (Pillow #7381), 10.1-10.4 get it
    right, 11.0-13.0 (upright size at open since Pillow #8390) give scrambled pixels for L, I;16
    and RGBA TIFFs with orientation 5-8. So a TIFF is decoded from a copy whose tag says 1."""
    orientation = im.getexif().get(ORIENTATION, 1)
    if im.format == "TIFF" and orientation != 1:
        with Image.open(io.BytesIO(_tiff_orientation_1(data))) as stored:
            if stored.getexif().get(ORIENTATION, 1) != 1:
                raise OSError(f"cannot read this TIFF unturned (orientation {orientation})")
            return _decode_stored(stored, orientation, with_alpha)
    return _decode_stored(im, orientation, with_alpha)


def _decode_stored(im: Image.Image, orientation: int, with_alpha: bool) -> tuple[Tensor, Tensor | None]:
    bits = bit_depth(im)
    im.load()
    alpha = None
    if with_alpha:
        a = (im.convert("RGBA") if im.mode in ("P", "PA") else im).getchannel("A")
        alpha = _orient(np.asarray(a)[:, :, None], orientation)
    return _orient(np.asarray(to_rgb(im, bits)), orientation), alpha


def _tiff_orientation_1(data: bytes) -> bytes:
    """TIFF (or BigTIFF) bytes with the Orientation tag of the first IFD set to 1."""
    e = "<" if data[:2] == b"II" else ">"
    try:
        big = struct.unpack_from(e + "H", data, 2)[0] == 43
        ifd = struct.unpack_from(e + ("Q" if big else "I"), data, 8 if big else 4)[0]
        n = struct.unpack_from(e + ("Q" if big else "H"), data, ifd)[0]
        size, first = (20, ifd + 8) if big else (12, ifd + 2)
        for i in range(min(n, 4096)):
            at = first + i * size
            tag, kind = struct.unpack_from(e + "HH", data, at)
            if tag == ORIENTATION and kind in (3, 4):  # SHORT (as the standard has it) or LONG
                out = bytearray(data)
                struct.pack_into(e + ("H" if kind == 3 else "I"), out, at + (12 if big else 8), 1)
                return bytes(out)
    except struct.error:
        pass
    return data


def _orient(a: np.ndarray, orientation: int) -> Tensor:
    """(H, W, C) uint8 as stored -> (C, H, W) tensor upright, for EXIF orientation 1-8 (as
    ImageOps.exif_transpose). In numpy, whose copies run in the calling thread: torch's
    parallelised the (3, 256, 256) copy over its threads and took 7.7 ms where numpy takes 0.2 ms
    (2-core EPYC), and from several I/O threads at once its thread pools fight for the cores."""
    a = a.transpose(2, 0, 1)
    if orientation in (2, 3):
        a = a[:, :, ::-1]
    if orientation in (3, 4):
        a = a[:, ::-1, :]
    if orientation in (5, 7):
        a = a.transpose(0, 2, 1)
    if orientation == 7:
        a = a[:, ::-1, ::-1]
    if orientation in (6, 8):
        a = np.rot90(a, -1 if orientation == 6 else 1, (1, 2))
    return torch.from_numpy(a.copy(order="C"))  # always a copy: Pillow's buffer is read-only


def save_png_atomic(image: Tensor, path: str | Path) -> None:
    """Save a (3, H, W) float image in [0, 1] (or uint8) as PNG via a temp file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = image.permute(1, 2, 0).contiguous().cpu().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


# --- batch translation: decode with metadata, encode with metadata ---------------------------------

ORIENTATION = 0x0112
FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF",
           "tiff": "TIFF", "ppm": "PPM"}
EXIF_IFD, GPS_IFD, INTEROP_IFD = 0x8769, 0x8825, 0xA005

# The EXIF tags an output carries over: what describes the scene, the camera and the author, never
# how the pixels are stored. A TIFF's first IFD is its EXIF as Pillow reads it, so carrying it whole
# put the input's BitsPerSample, Compression, StripOffsets ... in the output's header, and a 16-bit
# TIFF became an 8-bit file whose header says 16 bits, which no reader opens. Hence a list of tags
# to keep (any tag not named is dropped), not of tags to drop.
CARRIED_TAGS = frozenset({
    0x010D, 0x010E,  # DocumentName, ImageDescription
    0x010F, 0x0110,  # Make, Model
    ORIENTATION,  # reset to 1: the pixels are decoded upright
    0x011A, 0x011B, 0x0128,  # XResolution, YResolution, ResolutionUnit (print size; not the pixel grid)
    0x0131, 0x0132, 0x013B, 0x013C,  # Software, DateTime, Artist, HostComputer
    0x4746, 0x4749,  # Rating, RatingPercent
    0x8298,  # Copyright
    EXIF_IFD,  # exposure, lens, DateTimeOriginal, ... (filtered below)
    GPS_IFD,
    0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E, 0x9C9F,  # Windows' XPTitle, XPComment, XPAuthor, XPKeywords, XPSubject
    # Exif IFD tags that some writers put in the first IFD (seen in horse2zebra's JPEGs): exposure
    # time, f-number, program, ISO, dates, shutter, aperture, brightness, bias, max aperture,
    # distance, metering, light source, flash, focal length; rendering, exposure mode, white
    # balance, zoom, 35 mm focal length, scene type, gain, contrast, saturation, sharpness,
    # distance range; unique id, owner, body serial, lens specification, make, model, serial.
    0x829A, 0x829D, 0x8822, 0x8827, 0x9003, 0x9004, 0x9201, 0x9202, 0x9203, 0x9204, 0x9205, 0x9206,
    0x9207, 0x9208, 0x9209, 0x920A, *range(0xA401, 0xA40D), 0xA420, *range(0xA430, 0xA436),
})
# Of the Exif IFD, everything but the size of the stored pixels (the output may be resized or
# rotated) and the interoperability IFD (a pointer into the input file).
_DROPPED_EXIF_IFD_TAGS = frozenset({0xA002, 0xA003, INTEROP_IFD})  # PixelXDimension, PixelYDimension


def carried_exif(exif: Image.Exif) -> bytes | None:
    """EXIF for the output: CARRIED_TAGS of ``exif``, orientation reset to 1; None if nothing is left.

    Call it while the image's file is open: the Exif and GPS IFDs of a TIFF are read from it.
    A damaged sub-IFD is left out rather than failing the image (its pixels are what matters)."""
    out = Image.Exif()
    for tag in sorted(CARRIED_TAGS.intersection(exif)):
        if tag in (EXIF_IFD, GPS_IFD):
            try:
                value = exif[tag] if isinstance(exif[tag], dict) else exif.get_ifd(tag)  # built or read
                ifd = {k: v for k, v in value.items() if not (tag == EXIF_IFD and k in _DROPPED_EXIF_IFD_TAGS)}
            except Exception:
                ifd = {}
            if ifd:
                out[tag] = ifd
        else:
            out[tag] = exif[tag]
    if not len(out):
        return None
    out[ORIENTATION] = 1
    try:
        return out.tobytes()
    except Exception:  # a value Pillow read but cannot write back: keep the safe minimum
        minimal = Image.Exif()
        minimal[ORIENTATION] = 1
        return minimal.tobytes()


@dataclass
class Decoded:
    """An image ready for a network, plus what must be carried over to its output file."""

    rgb: Tensor  # (3, H, W) uint8, EXIF orientation applied
    alpha: Tensor | None  # (1, H, W) uint8 or None
    icc: bytes | None
    exif: bytes | None  # carried_exif(): camera and scene tags, orientation reset to 1


def probe_size(path: str | Path) -> tuple[int, int]:
    """(height, width) as displayed (EXIF rotation applied), from the header only."""
    check_regular(path)
    with Image.open(path) as im:
        w, h = im.size
        if im.format == "TIFF":  # Pillow 11+ gives a TIFF's upright size here, 10.x the stored one
            from PIL import TiffImagePlugin  # loaded already: it opened this file

            assert isinstance(im, TiffImagePlugin.TiffImageFile)
            w, h = im.tag_v2.get(256, w), im.tag_v2.get(257, h)
        if im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):
            w, h = h, w
        return h, w


def _jpeg_complete(data: bytes) -> bool:
    """A JPEG whose data ends early lacks the end marker after its last scan."""
    sos = data.rfind(b"\xff\xda")
    return sos < 0 or data.find(b"\xff\xd9", sos) >= 0


def decode(path: str | Path) -> Decoded:
    """Decode any supported image with its alpha, ICC profile and carried EXIF. Raises on bad files.

    Pillow only: torchvision's decoders were faster per image (0.9 against 1.4 ms for a 256x256
    JPEG) but importing torchvision takes 2.7 s (it pulls in torch._dynamo; 2-core EPYC, torch
    2.14), more than a CPU run of a few images spends decoding, and on a GPU machine the decoding
    processes keep up either way."""
    check_regular(path)
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        exif = im.getexif()
        icc = im.info.get("icc_profile")
        exif_bytes = carried_exif(exif) if len(exif) else None
        has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        if im.format == "JPEG" and not _jpeg_complete(data):
            raise OSError("truncated JPEG (no end-of-image marker)")
        rgb, alpha = _pillow_decode(im, data, with_alpha=has_alpha)
        return Decoded(rgb, alpha, icc, exif_bytes)


def _verify(path: Path, fmt: str, size: tuple[int, int], modes: tuple[str, ...]) -> None:
    """Read a just-written file back; raise unless it decodes whole to ``size`` in one of ``modes``.

    A file that does not is a failure, not a translation. Cost on a 1000x750 photo (best of 15, 2
    busy cores, Pillow 13): JPEG q95 written in 3.0 ms, read back whole in 2.9 ms, with draft() in
    1.7 ms (it still decodes every scan, so truncation is caught, but builds an 1/8 image: used
    here); PNG written in 335 ms, read back in 25 ms; WebP 123 and 23 ms; TIFF 3.3 and 1.1 ms.
    Next to ~1 s of network per image on a CPU, or a GPU batch, it is small.
    """
    with Image.open(path) as im:
        if im.format != fmt or im.size != size:
            raise OSError(f"written {fmt} reads back as {im.format} {im.size[0]}x{im.size[1]}, "
                          f"not {size[0]}x{size[1]}")
        if fmt == "JPEG":
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        mode = im.mode
        im.load()
        if mode not in modes:
            raise OSError(f"written {fmt} reads back as mode {mode}, not {' or '.join(modes)}")


def encode_atomic(path: str | Path, rgb: Tensor, alpha: Tensor | None = None, icc: bytes | None = None,
                  exif: bytes | None = None, quality: int = 95) -> None:
    """Write (3, H, W) uint8 (+ alpha) in the format the suffix names, carrying ICC and EXIF over,
    through a temp file and a rename so no half-written file is ever left. The temp file is read
    back first (see _verify): an output no reader can open raises here and never takes the name."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower().lstrip("."), "PNG")
    im = Image.fromarray(np.ascontiguousarray(rgb.numpy().transpose(1, 2, 0)))  # numpy: see _orient
    modes: tuple[str, ...] = ("RGB",)
    if alpha is not None and fmt in ("PNG", "WEBP", "TIFF"):
        im.putalpha(Image.fromarray(np.ascontiguousarray(alpha[0].numpy())))
        modes = ("RGBA", "RGB") if fmt == "WEBP" else ("RGBA",)  # libwebp may drop an opaque alpha
    kwargs: dict = {}
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    if icc and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kwargs["icc_profile"] = icc
    if exif and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kwargs["exif"] = exif
    with atomic_path(path) as tmp:
        im.save(tmp, format=fmt, **kwargs)
        _verify(tmp, fmt, im.size, modes)


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
        good = []
        for it in items:
            if "error" in it:
                reading.failed.append((str(reading.files[it["i"]]), it["error"]))
                progress.fail(str(reading.files[it["i"]]), it["error"])
            else:
                good.append(it)
        if good:
            x = torch.stack([it["x"] for it in good]).to(device, non_blocking=cuda)
            yield [it["i"] for it in good], to_signed(x)
            for _ in good:
                progress.advance()
