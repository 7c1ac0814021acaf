"""FID and KID between two folders of images, as pytorch-fid and torch-fidelity compute them.

The network is pytorch-fid's own (``pytorch_fid.inception.InceptionV3``, its FID Inception for the
TensorFlow weights ``pt_inception-2015-12-05-6726825d.pth``), built from the local file the user
passes: nothing is downloaded. The features are the 2048 values of its final average pool.

How images reach the network (``resize``):
- ``pytorch-fid`` (the default): each image as floats in [0, 1] at its own size; the network resizes it
  to 299x299 bilinearly (align_corners=False), as pytorch-fid does by default. The numbers papers
  quote are these: quote them.
- ``clean``: resized to 299x299 in uint8 first, bicubic with antialiasing (the resize clean-fid argues
  for, and every reader here uses); the network's own resize then leaves the image as it is. Better
  behaved on small images, but not comparable with published FIDs.

FID = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), the trace of the square root taken from the
eigenvalues of S_1 S_2 as torchmetrics does (or, with fewer images than dimensions, exactly from the
singular values of the small N_1 x N_2 product of the centred features): pytorch-fid's scipy ``sqrtm``
gives the same number (tests/test_fid.py) in 7x the time (23 s against 3 s for 2048 dimensions on 2
CPU cores). KID is
torch-fidelity's: the unbiased MMD^2 with the kernel (x.y / d + 1)^3, mean and standard deviation over
random subsets drawn as torch-fidelity draws them (numpy ``RandomState(seed).choice``, the generated
images' subset first), so the same seed gives the same subsets and the same number. A folder's
features are computed once and cached beside it, keyed by its file list (names, sizes, times), the
resize and the weights file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from translate.core.devices import pick_device
from translate.core.errors import TranslateError, reason
from translate.core.files import atomic_path, image_files
from translate.core.images import read_folder, read_rgb, resize_u8, to_u8
from translate.inference.generate import sample
from translate.inference.tiling import launch_fitting
from translate.inference.translator import load_translator

if TYPE_CHECKING:
    from translate.core.recipes import Recipe

FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
MISSING = (f"FID and KID need the Inception weights the common FID tools use: pass --inception FILE, the "
           f"{FID_WEIGHTS} file (released with pytorch-fid); nothing is downloaded")
RESIZES = ("pytorch-fid", "clean")
KID_SUBSET_SIZE = 1000  # torch-fidelity's default
KID_SEED = 2020  # torch-fidelity's default rng_seed


def load_inception(path: str | Path | None, device: torch.device) -> tuple[nn.Module, str]:
    """pytorch-fid's FID network with the weights of ``path`` (a state dict read without unpickling), and
    a key that names those weights for the feature cache."""
    from unittest import mock

    from pytorch_fid import inception

    if not path:
        raise TranslateError(MISSING)
    path = Path(path)
    if not path.is_file():
        raise TranslateError(f"--inception file not found: {path} ({MISSING.split(': ', 1)[1]})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise TranslateError(f"--inception {path} is not a PyTorch state dict ({FID_WEIGHTS} is expected)") from None
    wrong = TranslateError(f"--inception {path} does not hold the FID Inception weights ({FID_WEIGHTS})")
    if not isinstance(state, dict):
        raise wrong
    # pytorch-fid's builder takes its weights from load_state_dict_from_url (torch's hub cache, else a
    # download); it is handed the user's file instead, read above without unpickling arbitrary objects
    try:
        with mock.patch.object(inception, "load_state_dict_from_url", lambda *_, **__: state):
            net = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except (RuntimeError, TypeError, KeyError):
        raise wrong from None
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
    digest.update(str(path.stat().st_size).encode())
    return net.to(device).eval(), digest.hexdigest()[:16]


def image_features(net: nn.Module, images: Tensor, resize: str = "pytorch-fid") -> Tensor:
    """(N, 2048) float64 features (on the CPU) of a batch of uint8 (N, 3, H, W) images."""
    if resize == "clean":
        images = torch.stack([resize_u8(x, (299, 299)) for x in images])
    param = next(net.parameters())
    with torch.no_grad():
        return net(images.to(param.device).float() / 255)[0].flatten(1).double().cpu()


def _same_size_batches(files: list[Path], batch_size: int, failed: list[tuple[str, str]]) -> Iterator[Tensor]:
    """uint8 batches of the readable files, in order, at their own sizes: consecutive files of one size
    share a batch (a folder of generated images is one batch after another)."""
    batch: list[Tensor] = []
    for path in files:
        try:
            img = read_rgb(path)
        except Exception as e:  # any unreadable file is that file's failure
            failed.append((str(path), reason(e)))
            continue
        if batch and (len(batch) == batch_size or batch[0].shape != img.shape):
            yield torch.stack(batch)
            batch = []
        batch.append(img)
    if batch:
        yield torch.stack(batch)


def folder_features(net: nn.Module, weights_key: str, folder: str | Path, resize: str = "pytorch-fid",
                    batch_size: int = 32) -> tuple[Tensor, bool]:
    """(N, 2048) float64 features of every image under ``folder``, and whether they came from its cache."""
    if resize not in RESIZES:
        raise TranslateError(f"--resize {resize!r}: choose {' or '.join(RESIZES)}")
    reading = read_folder(folder)
    listing = [(str(p.relative_to(reading.root)), p.stat().st_size, p.stat().st_mtime_ns) for p in reading.files]
    key = hashlib.sha1(json.dumps([weights_key, resize, listing]).encode()).hexdigest()[:16]
    cache = reading.root / f".translate-features-{key}.safetensors"
    if cache.is_file():
        return load_file(str(cache))["features"], True
    feats = [image_features(net, x, resize) for x in _same_size_batches(reading.files, batch_size, reading.failed)]
    if reading.failed:
        bad = ", ".join(f"{p} ({why})" for p, why in reading.failed[:3])
        raise TranslateError(f"{folder}: {len(reading.failed)} unreadable image(s): {bad}")
    features = torch.cat(feats)
    try:
        with atomic_path(cache) as tmp:
            save_file({"features": features.contiguous()}, str(tmp))
    except OSError:
        pass  # a read-only folder: no cache, the same numbers
    return features, False


def fid(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (float64); symmetric."""
    mu1, mu2 = a.mean(0), b.mean(0)
    (n1, d), n2 = a.shape, len(b)
    if min(n1, n2) < d:
        # Fewer images than dimensions (every evaluation during training): with S_1 = X^T X, S_2 = Y^T Y
        # (centred, scaled), tr (S_1 S_2)^(1/2) is the sum of the singular values of the small X Y^T,
        # exact and quick, where the d x d eigenvalues would be d - n values of rounding noise around 0.
        x, y = (a - mu1) / (n1 - 1) ** 0.5, (b - mu2) / (n2 - 1) ** 0.5
        traces = x.square().sum() + y.square().sum()
        sqrt_trace = torch.linalg.svdvals(x @ y.T).sum()
    else:
        s1, s2 = torch.cov(a.T), torch.cov(b.T)
        traces = s1.trace() + s2.trace()
        sqrt_trace = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    return float((mu1 - mu2).square().sum() + traces - 2 * sqrt_trace)


def kid_subset(n_images: int, n_ref: int, asked: int | None) -> tuple[int, str]:
    """The KID subset size and, where the default was shrunk to fit the folders, a line saying so.
    ``asked``: the user's size, which must fit (torch-fidelity stops too), or None for the default."""
    n = min(n_images, n_ref)
    if n < 2:
        raise TranslateError("FID and KID need at least 2 images in each folder")
    if asked is None:
        if n >= KID_SUBSET_SIZE:
            return KID_SUBSET_SIZE, ""
        return n, (f"KID subsets of {n} images (the default {KID_SUBSET_SIZE} is more than the {n_images} "
                   f"images against {n_ref}); with subsets as large as the sets the std is 0")
    if asked > n:
        raise TranslateError(f"--kid-subset-size {asked} is more than the images there are ({n_images} against "
                             f"{n_ref}): pass {n} or fewer, or leave it out to use {n}")
    return asked, ""


def kid(images: Tensor, ref: Tensor, subsets: int = 100, subset_size: int = KID_SUBSET_SIZE,
        seed: int = KID_SEED) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 with the kernel (x.y / d + 1)^3 over random subsets, drawn as
    torch-fidelity draws them. ``subset_size`` must fit both sets (:func:`kid_subset`)."""
    rng = np.random.RandomState(seed)

    def pick(features: Tensor) -> Tensor:
        return features[torch.from_numpy(rng.choice(len(features), subset_size, replace=False))]

    t = torch.tensor([_mmd2(pick(images), pick(ref)) for _ in range(subsets)], dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False))


def _mmd2(x: Tensor, y: Tensor) -> float:
    d = x.shape[1]
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m = x.shape[0]
    xx, yy = ((k.sum() - k.diagonal().sum()) / (m * (m - 1)) for k in (k_xx, k_yy))
    return float(xx + yy - 2 * k_xy.sum() / m**2)


@dataclass
class DistanceSummary:
    fid: float
    kid: tuple[float, float]
    n_images: int
    n_ref: int
    cached: tuple[bool, bool]
    notes: list[str] = field(default_factory=list)


def distances(images: str | Path, ref: str | Path, inception: str | Path | None, *, device: str = "auto",
              resize: str = "pytorch-fid", kid_subsets: int = 100,
              kid_subset_size: int | None = None) -> DistanceSummary:
    """FID and KID between the images in ``images`` (a model's outputs, `translate sample` grids' images)
    and a reference folder. ``kid_subset_size``: None for torch-fidelity's 1000, or the smaller
    folder's size when it has fewer (said in ``notes``)."""
    dev = pick_device(device)
    net, key = load_inception(inception, dev)
    a, cached_a = folder_features(net, key, images, resize)
    b, cached_b = folder_features(net, key, ref, resize)
    size, note = kid_subset(len(a), len(b), kid_subset_size)
    return DistanceSummary(fid(a, b), kid(a, b, kid_subsets, size), len(a), len(b), (cached_a, cached_b),
                           [note] if note else [])


class TrainingFID:
    """FID and KID of a run's generator every ``train.eval_every`` epochs (``train.inception``): a
    translator's outputs on the held-out A images (``testA/``, its first ``train.eval_images``), read as
    test time reads them (``crop_size``, no crop or flip), against the held-out B images (``testB/``);
    a generator's ``train.eval_images`` samples (seeded, the same latents each time) against its
    training images. Images reach the network as `translate eval --images --ref` feeds them
    (pytorch-fid's way); the reference set's features are computed once per run (and cached beside it)."""

    def __init__(self, recipe: Recipe, data_kind: str, device: torch.device) -> None:
        t, d = recipe.train, recipe.data
        root = Path(d.path)
        self.translator = data_kind == "unpaired"
        self.split = "test" if self.translator else "train"  # where the reference images come from
        if self.translator:
            src, dst = ("A", "B") if d.direction == "AtoB" else ("B", "A")
            inputs, self.ref = root / f"test{src}", root / f"test{dst}"
            if not (inputs.is_dir() and self.ref.is_dir()):
                raise TranslateError(f"train.eval_every needs held-out images beside the training ones: {inputs}/ "
                                     f"and {self.ref}/; not found")

            failed: list[tuple[str, str]] = []
            # read once, as test time reads them; RGB: the translator converts for a one-channel net
            self.inputs = [resize_u8(x, (d.crop_size, d.crop_size)) for b in
                           _same_size_batches(image_files(inputs)[: t.eval_images or None], 64, failed) for x in b]
            if failed:
                raise TranslateError(f"{inputs}: {len(failed)} unreadable image(s): {failed[0][0]} ({failed[0][1]})")
        else:
            self.ref = root
        self.net, self.key = load_inception(t.inception, device)
        self.n_samples, self.device = t.eval_images, device
        self.ref_features: Tensor | None = None

    def __call__(self, weights: Path) -> tuple[dict[str, float], str]:
        """{fid, kid, kid_std} of ``weights``, and a note when KID's subset size was shrunk to fit."""
        if self.ref_features is None:
            self.ref_features = folder_features(self.net, self.key, self.ref)[0]
        ref = self.ref_features
        outputs = torch.cat(list(self._outputs(weights, self.n_samples or len(ref))))
        size, note = kid_subset(len(outputs), len(ref), None)
        mean, std = kid(outputs, ref, subset_size=size)
        return {"fid": fid(outputs, ref), "kid": mean, "kid_std": std}, note

    def _outputs(self, weights: Path, n_samples: int, batch: int = 16) -> Iterator[Tensor]:
        """Features of the translator's outputs (or a generator's ``n_samples``), a batch at a time, as
        8-bit RGB images."""
        if self.translator:
            # torch, not a compiled engine: these weights are new at every evaluation
            tr, multiple, _ = load_translator(weights, "AtoB", self.device, "fp32", engine="torch")
            for i in range(0, len(self.inputs), batch):
                ys = launch_fitting(tr, self.inputs[i : i + batch], multiple).result()
                yield image_features(self.net, torch.stack([y.expand(3, -1, -1) for y in ys]))
        else:
            for i in range(0, n_samples, batch):  # seeds by batch: the same latents at every evaluation
                x = to_u8(sample(weights, min(batch, n_samples - i), seed=i, device=self.device)).cpu()
                yield image_features(self.net, x.expand(-1, 3, -1, -1))
