"""Image folders in the reference's layouts, decoded in DataLoader workers.

Workers do only what is deterministic (decode, convert to RGB, resize to ``load_size``); the random
crop and flip happen later, batched on the training device (see ``augment.py``). So data order and
augmentation are both driven by seeded generators in the main process, which is what makes
``--resume`` exact.

Layouts (``data.layout = auto`` picks from what the folder holds):

- ``aligned``: side-by-side A|B images in ``train/`` (or directly in the folder);
- ``paired_folders``: ``A/`` and ``B/`` with matching file names (``A/train`` and ``B/train`` too);
- ``unaligned``: ``trainA/`` and ``trainB/``, B drawn independently of A;
- for the generative models: every image of a folder (``images``), or one subfolder per class
  (``classes``, as torchvision's ImageFolder);
- pairs made from every image of a folder (``data.degrade``): the image is the target B, a degraded
  copy (downsampled, half masked) the input A, for restoration (pSp super-resolution, inpainting).

An unreadable or truncated file yields an item with an ``error``; :func:`collate` drops it and
the trainer reports it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from translate.core.errors import TranslateError
from translate.core.files import NotRegularFile, list_images
from translate.core.images import read_rgb, resize_u8, to_gray
from translate.core.recipes import DataConfig

Item = dict[str, Any]


class _Unreadable(Exception):
    """A file that cannot be read: args are the message and the path its item names."""


def _center_crop(t: Tensor, h: int, w: int) -> Tensor:
    top, left = int(round((t.shape[-2] - h) / 2.0)), int(round((t.shape[-1] - w) / 2.0))
    return t[..., top : top + h, left : left + w]


def prepare(img: Tensor, cfg: DataConfig) -> tuple[Tensor, str | None]:
    """The deterministic part of the reference's preprocessing; returns (image, warning)."""
    h, w = img.shape[-2:]
    p, load, crop = cfg.preprocess, cfg.load_size, cfg.crop_size
    if p == "resize_and_crop":
        img = resize_u8(img, (load, load))
    elif p.startswith("scale_width"):
        img = resize_u8(img, (max(int(round(load * h / w)), crop if "crop" in p else 1), load))
    elif p == "none":  # sizes a multiple of 4, as the reference's make_power_2(base=4)
        img = resize_u8(img, (max(4, round(h / 4) * 4), max(4, round(w / 4) * 4)))
    h, w = img.shape[-2:]
    if "crop" in p and (h < crop or w < crop):
        scale = crop / min(h, w)
        img = resize_u8(img, (max(crop, round(h * scale)), max(crop, round(w * scale))))
        return img, f"{h}x{w} is smaller than crop_size {crop}: resized up"
    return img, None


def _load(path: Path, cfg: DataConfig, item: Path | None = None) -> Tensor:
    """The image at ``path``; a file that cannot be read raises :class:`_Unreadable` naming ``item``
    (by default ``path``) as its item's path."""
    try:
        img = read_rgb(path)
    except NotRegularFile as e:  # a FIFO named x.jpg: never opened
        raise _Unreadable(f"{path}: {e}", item or path) from None
    except Exception as e:  # PIL raises many types for bad files; each is a skip, not a crash
        raise _Unreadable(f"{path}: unreadable ({type(e).__name__}: {e})", item or path) from None
    return to_gray(img) if cfg.channels == 1 else img


class FileDataset(Dataset):
    """One item per entry of ``files`` (read by ``read``); an item whose file cannot be read is
    ``{"error": message, "path": path}``."""

    def __init__(self, files: list[Any], cfg: DataConfig) -> None:
        self.files, self.cfg = files, cfg

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        try:
            return self.read(i)
        except _Unreadable as e:
            return {"error": e.args[0], "path": str(e.args[1])}

    def read(self, i: int) -> Item:
        raise NotImplementedError


class AlignedDataset(FileDataset):
    """Side-by-side pairs: the left half is A, the right half B."""

    def read(self, i: int) -> Item:
        img = _load(self.files[i], self.cfg)
        half = img.shape[-1] // 2
        return _pair(img[..., :half], img[..., half : 2 * half], self.files[i], self.cfg)


class PairedFoldersDataset(FileDataset):
    """A/name and B/name are one pair (``files`` holds the pairs of paths)."""

    def read(self, i: int) -> Item:
        pa, pb = self.files[i]
        a, b = _load(pa, self.cfg), _load(pb, self.cfg, item=pa)
        if a.shape[-2:] != b.shape[-2:]:
            b = resize_u8(b, a.shape[-2:])
        return _pair(a, b, pa, self.cfg)


def _pair(a: Tensor, b: Tensor, path: Path, cfg: DataConfig) -> Item:
    if cfg.direction == "BtoA":
        a, b = b, a
    a, wa = prepare(a, cfg)
    b, _ = prepare(b, cfg)
    return {"A": a, "B": b, "path": str(path), "notes": [f"{path}: {wa}"] if wa else []}


class UnalignedDataset(FileDataset):
    """Two unpaired domains. A is walked in order; B is drawn at random, independently.

    The B index depends only on (seed, epoch, index), so it is the same in any worker, after a
    resume, and on any rank.
    """

    def __init__(self, files_a: list[Path], files_b: list[Path], cfg: DataConfig, seed: int = 0) -> None:
        if cfg.direction == "BtoA":
            files_a, files_b = files_b, files_a
        self.files_a, self.files_b, self.cfg, self.seed = files_a, files_b, cfg, seed
        self.epoch = 0

    def __len__(self) -> int:
        return max(len(self.files_a), len(self.files_b))

    def b_index(self, i: int) -> int:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + i)
        return int(torch.randint(len(self.files_b), (), generator=g))

    def read(self, i: int) -> Item:
        pa, pb = self.files_a[i % len(self.files_a)], self.files_b[self.b_index(i)]
        a, wa = prepare(_load(pa, self.cfg), self.cfg)
        b, wb = prepare(_load(pb, self.cfg), self.cfg)
        return {"A": a, "B": b, "path": str(pa), "notes": [f"{p}: {w}" for p, w in ((pa, wa), (pb, wb)) if w]}


class ImageFolderDataset(FileDataset):
    """Single images for the generative models; with ``classes``, labelled by their subfolder."""

    def __init__(self, files: list[Path], cfg: DataConfig, labels: list[int] | None = None,
                 classes: list[str] | None = None) -> None:
        self.files, self.cfg, self.labels, self.classes = files, cfg, labels, classes or []

    def read(self, i: int) -> Item:
        path = self.files[i]
        img, warning = prepare(_load(path, self.cfg), self.cfg)
        item = {"A": img, "path": str(path), "notes": [f"{path}: {warning}"] if warning else []}
        if self.labels is not None:
            item["label"] = self.labels[i]
        return item


def degrade(img: Tensor, how: str) -> Tensor:
    """A worse copy of a (C, H, W) uint8 image, the input that pSp-style restoration learns to undo:
    ``downsampleN`` loses detail (bicubic to 1/N and back), ``mask_half`` blacks out the right half."""
    h, w = img.shape[-2:]
    if how.startswith("downsample"):
        n = int(how.removeprefix("downsample"))
        return resize_u8(resize_u8(img, (max(1, h // n), max(1, w // n))), (h, w))
    if how == "mask_half":
        out = img.clone()
        out[..., w // 2 :] = 0
        return out
    raise ValueError(f"unknown degradation {how!r}")


class DegradedDataset(ImageFolderDataset):
    """Pairs made from single images: B the image, A its degraded copy (``data.degrade``)."""

    def read(self, i: int) -> Item:
        item = super().read(i)
        return {**item, "A": degrade(item["A"], self.cfg.degrade), "B": item["A"]}


def _open_images(root: Path, cfg: DataConfig, kind: str) -> ImageFolderDataset:
    """``images``: every image under the folder (its train/ if it has one); ``classes``: one
    subfolder per class, named by the folder."""
    folder = root / "train" if (root / "train").is_dir() else root
    limit = cfg.max_dataset_size or None
    if kind == "images":
        return ImageFolderDataset(_need(list_images(folder), folder, "images")[:limit], cfg)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise TranslateError(f"{folder}: class-conditional training needs one subfolder per class")
    found = [list_images(folder / name)[:limit] for name in classes]
    files = _need([f for fs in found for f in fs], folder, "class subfolders")
    labels = [label for label, fs in enumerate(found) for _ in fs]
    return ImageFolderDataset(files, cfg, labels, classes)


def _pick_layout(root: Path, kind: str) -> str:
    if (root / "trainA").is_dir() or (root / "trainB").is_dir():
        return "unaligned"
    if (root / "A").is_dir() and (root / "B").is_dir():
        return "paired_folders" if kind == "paired" else "unaligned"
    return "aligned"


def _need(files: list[Path], where: Path, what: str) -> list[Path]:
    if not files:
        raise TranslateError(f"no images found in {where} ({what})")
    return files


def open_dataset(cfg: DataConfig, kind: str, seed: int = 0, split: str = "train") -> FileDataset:
    """Open ``cfg.path`` for a method that wants ``kind``: paired, unpaired, images or classes.
    ``split`` (paired data): which sub-folder of the layout, ``train`` or e.g. ``test`` / ``val``
    for evaluation."""
    if not cfg.path:
        raise TranslateError("no data folder given (use --data DIR)")
    root = Path(cfg.path).expanduser()
    if not root.exists():
        raise TranslateError(f"data folder not found: {root}")
    if not root.is_dir():
        raise TranslateError(f"data path is not a folder: {root}")
    if cfg.degrade != "none":
        if kind != "paired":
            raise TranslateError(f"data.degrade makes input/target pairs; this method trains on {kind} data")
        return DegradedDataset(_open_images(root, cfg, "images").files, cfg)
    if kind in ("images", "classes"):
        return _open_images(root, cfg, kind)
    layout = cfg.layout if cfg.layout != "auto" else _pick_layout(root, kind)
    limit = cfg.max_dataset_size or None
    if kind == "unpaired":
        if layout == "aligned":
            raise TranslateError(
                f"{root}: unpaired training needs trainA/ and trainB/ folders (found neither)")
        a_dir, b_dir = (root / "trainA", root / "trainB") if (root / "trainA").is_dir() or (
            root / "trainB").is_dir() else (root / "A", root / "B")
        for d in (a_dir, b_dir):
            if not d.is_dir():
                raise TranslateError(f"{root}: unpaired training needs trainA/ and trainB/; missing {d.name}/")
        return UnalignedDataset(_need(list_images(a_dir), a_dir, "domain A")[:limit],
                                _need(list_images(b_dir), b_dir, "domain B")[:limit], cfg, seed)
    if kind != "paired":
        raise ValueError(f"unknown data kind {kind!r}")
    if layout == "unaligned":
        raise TranslateError(f"{root}: paired training needs side-by-side A|B images in train/ "
                             "or A/ and B/ folders with matching names, not trainA/trainB")
    if layout == "paired_folders":
        a_dir, b_dir = root / "A", root / "B"
        if (a_dir / split).is_dir():
            a_dir, b_dir = a_dir / split, b_dir / split
        elif split != "train":
            raise TranslateError(f"{root}: no A/{split}/ folder of {split} pairs")
        b_by_stem = {p.relative_to(b_dir).with_suffix(""): p for p in list_images(b_dir)}
        pairs = [(p, b_by_stem[k]) for p in list_images(a_dir)
                 if (k := p.relative_to(a_dir).with_suffix("")) in b_by_stem]
        if not pairs:
            raise TranslateError(f"{root}: no file in A/ has a partner of the same name in B/")
        return PairedFoldersDataset(pairs[:limit], cfg)
    if split != "train" and not (root / split).is_dir():
        raise TranslateError(f"{root}: no {split}/ folder of {split} pairs")
    folder = root / split if (root / split).is_dir() else root
    return AlignedDataset(_need(list_images(folder), folder, "side-by-side A|B pairs")[:limit], cfg)


def collate(items: list[Item]) -> dict[str, Any]:
    """Stack good items; carry errors and notes along for the trainer to report.

    Images of unequal size in one batch (``crop`` or ``none`` preprocessing over mixed sizes) are
    centre-cropped to the smallest, so they can be stacked.
    """
    good = [it for it in items if "error" not in it]
    out: dict[str, Any] = {
        "errors": [it["error"] for it in items if "error" in it],
        "notes": [n for it in good for n in it.get("notes", [])],
        "paths": [it["path"] for it in good],
    }
    if good and "label" in good[0]:
        out["label"] = torch.tensor([it["label"] for it in good])
    for key in ("A", "B"):
        if imgs := [it[key] for it in good if key in it]:
            h = min(t.shape[-2] for t in imgs)
            w = min(t.shape[-1] for t in imgs)
            out[key] = torch.stack([_center_crop(t, h, w) for t in imgs])
    return out
