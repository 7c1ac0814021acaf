"""Files on disk, without torch: written whole or not at all (atomic_path), images listed,
probed, decoded to numpy (any mode, bit depth, EXIF orientation; alpha, ICC, EXIF kept) and
encoded back with their metadata. `translate run` with a cached OpenVINO model works from here and
never imports torch (1.4 s of its start-up on a 2-core Zen5); core/images.py turns pixels into tensors."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from translate.core.errors import TranslateError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (named by :func:`temp_prefix`, cut to the folder's name limit);
    rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


TMP_SUFFIX = ".tmp"


def temp_prefix(path: Path) -> str:
    """``.NAME.``, cut to fit the folder's name limit with mkstemp's 8 random characters and the
    suffix: a legal 250-byte name would otherwise give an illegal 264-byte temporary one. Cut at a
    character boundary, so a name of multi-byte characters stays valid UTF-8."""
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    room = limit - 8 - len(TMP_SUFFIX)
    prefix = f".{path.name}.".encode(errors="surrogateescape")
    if len(prefix) <= room:
        return f".{path.name}."
    return prefix[: room - 1].decode(errors="ignore") + "."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm")


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
        found += [Path(dirpath) / f for f in filenames
                  if Path(f).suffix.lower() in IMAGE_EXTENSIONS and not f.startswith(".")]
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


def read_pixels(path: str | Path) -> np.ndarray:
    """Decode a file to (3, H, W) uint8 RGB, EXIF orientation applied (core/images.read_rgb: as a tensor).

    Raises OSError (or PIL's subclasses) for unreadable or truncated files: callers decide
    whether to skip (:class:`NotRegularFile` for a FIFO, socket or device, which is not opened).
    """
    check_regular(path)
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        return _pillow_decode(im, data, with_alpha=False)[0]


def _pillow_decode(im: Image.Image, data: bytes, with_alpha: bool) -> tuple[np.ndarray, np.ndarray | None]:
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


def _decode_stored(im: Image.Image, orientation: int, with_alpha: bool) -> tuple[np.ndarray, np.ndarray | None]:
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
    with contextlib.suppress(struct.error):
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
    return data


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) uint8 as stored -> (C, H, W) upright, for EXIF orientation 1-8 (as
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
    return a.copy(order="C")  # always a copy: Pillow's buffer is read-only (torch.from_numpy warns)


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

    rgb: np.ndarray  # (3, H, W) uint8, EXIF orientation applied
    alpha: np.ndarray | None  # (1, H, W) uint8 or None
    icc: bytes | None
    exif: bytes | None  # carried_exif(): camera and scene tags, orientation reset to 1


def probe_size(path: str | Path) -> tuple[int, int]:
    """(height, width) as displayed (EXIF rotation applied), from the header only."""
    check_regular(path)
    with Image.open(path) as im:
        w, h = im.size
        if im.format == "TIFF":  # Pillow 11+ gives a TIFF's upright size here, 10.x the stored one
            tags = getattr(im, "tag_v2", {})
            w, h = tags.get(256, w), tags.get(257, h)
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


def encode_atomic(path: str | Path, rgb: Any, alpha: Any = None, icc: bytes | None = None,
                  exif: bytes | None = None, quality: int = 95) -> None:
    """Write (3, H, W) uint8 (+ (1, H, W) alpha; numpy or CPU tensors) in the format the suffix names,
    carrying ICC and EXIF over, through a temp file and a rename so no half-written file is ever
    left. The temp file is read back first (see _verify): an output no reader can open raises here
    and never takes the name."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower().lstrip("."), "PNG")
    im = Image.fromarray(np.ascontiguousarray(np.asarray(rgb).transpose(1, 2, 0)))
    modes: tuple[str, ...] = ("RGB",)
    if alpha is not None and fmt in ("PNG", "WEBP", "TIFF"):
        im.putalpha(Image.fromarray(np.ascontiguousarray(np.asarray(alpha)[0])))
        modes = ("RGBA", "RGB") if fmt == "WEBP" else ("RGBA",)  # libwebp may drop an opaque alpha
    kwargs: dict = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF"):  # the formats that carry ICC and EXIF
        kwargs.update({key: value for key, value in (("icc_profile", icc), ("exif", exif)) if value})
    with atomic_path(path) as tmp:
        im.save(tmp, format=fmt, **kwargs)
        _verify(tmp, fmt, im.size, modes)


# --- a safetensors file, raw ------------------------------------------------------------------------

WEIGHTS_FORMAT = "translate-weights/1"  # the metadata's "format" of a translate weights file
# what each kind of model is for: the commands that take it
KIND_COMMANDS = {"translator": ("run",),
                 "generator": ("sample", "interpolate"),
                 "autoencoder": ("sample", "interpolate", "reconstruct", "encode", "score")}
# files written before the kind was saved: these methods' held a generator (the rest a translator,
# or an autoencoder, told by its ``AE`` net); frozen, as every newer file says its kind itself
_GENERATORS_BEFORE_KIND = frozenset({"dcgan", "cgan", "pggan", "stylegan2"})


def weights_kind(meta: dict[str, str], nets: list[str]) -> str:
    """translator | generator | autoencoder: from a weights file's metadata, or for a file written
    before it was kept, from its nets and the method that made it."""
    if meta.get("kind") in KIND_COMMANDS:
        return meta["kind"]
    if "AE" in nets:
        return "autoencoder"
    return "generator" if meta.get("method") in _GENERATORS_BEFORE_KIND else "translator"


# safetensors' dtype names -> torch's, as engines.tensors_id names a tensor's dtype
TORCH_DTYPES = {"F64": "torch.float64", "F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16",
                "I64": "torch.int64", "I32": "torch.int32", "I16": "torch.int16", "I8": "torch.int8",
                "U8": "torch.uint8", "BOOL": "torch.bool"}


@dataclass
class RawTensors:
    """A safetensors file as stored: its metadata, and each tensor's dtype (safetensors' name), shape
    and little-endian bytes (views of the file's one read)."""

    meta: dict[str, str]
    tensors: dict[str, tuple[str, tuple[int, ...], memoryview]]


def read_safetensors(path: str | Path) -> RawTensors:
    """The header and raw tensors of a safetensors file, without torch (the format is an 8-byte
    little-endian header length, a JSON header, then the data). Raises ValueError for a file that
    is not one, OSError for one that cannot be read."""
    data = memoryview(Path(path).read_bytes())
    if len(data) < 8:
        raise ValueError("too short for a safetensors file")
    n = struct.unpack("<Q", data[:8])[0]
    if n > len(data) - 8:
        raise ValueError("safetensors header longer than the file")
    header = json.loads(bytes(data[8 : 8 + n]))
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    body = data[8 + n :]
    tensors = {}
    for key, t in header.items():
        start, end = t["data_offsets"]
        if not 0 <= start <= end <= len(body):
            raise ValueError(f"tensor {key} lies outside the file")
        tensors[key] = (str(t["dtype"]), tuple(int(d) for d in t["shape"]), body[start:end])
    return RawTensors(meta, tensors)
