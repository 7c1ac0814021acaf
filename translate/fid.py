"""FID and KID between two folders of images, with the Inception network the common FID tools use.

The network is Inception-v3 as pytorch-fid builds it for the TensorFlow FID weights
(``pt_inception-2015-12-05-6726825d.pth``, the file those tools download; here it is a local file the
user passes, nothing is downloaded): torchvision's layout with 1008 classes, average pools that leave
padding out of the mean in the A, C and first E blocks, and a max pool in the last E block. Images are
read as RGB, resized to 299x299 as every reader here resizes (bicubic, antialiased; pytorch-fid
resizes bilinearly inside the network, so for images of another size its numbers differ slightly),
scaled to [-1, 1]; the features are the 2048 values of the final average pool.

FID = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), with the trace of the square root taken
from the eigenvalues of S_1 S_2 (as torchmetrics computes it). KID is the unbiased MMD^2 with the
cubic polynomial kernel (x.y / d + 1)^3, averaged over random subsets (mean and standard deviation,
as torchmetrics and the KID paper). A folder's features are computed once and cached beside it,
keyed by its file list (names, sizes, times) and the weights file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.errors import TranslateError
from translate.images import to_unit

FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
MISSING = (f"FID and KID need the Inception weights the common FID tools use: pass --inception FILE, the "
           f"{FID_WEIGHTS} file (released with pytorch-fid); nothing is downloaded")


class BasicConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], **kw: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, bias=False, **kw)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg(x: Tensor) -> Tensor:  # the FID variant: padding left out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, c: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = BasicConv2d(c, 48, 1), BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, c: int, c7: int) -> None:
        super().__init__()
        row, col = {"padding": (0, 3)}, {"padding": (3, 0)}
        self.branch1x1 = BasicConv2d(c, 192, 1)
        self.branch7x7_1 = BasicConv2d(c, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), **col)
        self.branch7x7dbl_1 = BasicConv2d(c, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), **row)
        self.branch_pool = BasicConv2d(c, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = BasicConv2d(c, 192, 1), BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, c: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool  # the last block of the FID network pools with max, the one before with avg
        self.branch1x1 = BasicConv2d(c, 320, 1)
        self.branch3x3_1 = BasicConv2d(c, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class FIDInception(nn.Module):
    """Images (N, 3, H, W) in [0, 1] -> (N, 2048) pool features."""

    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, max_pool=False), InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # in the weights file; features are taken before it

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


def load_inception(path: str | Path | None, device: torch.device) -> tuple[FIDInception, str]:
    """The FID network with the weights of ``path`` (a state dict read without unpickling), and a key
    that names those weights for the feature cache."""
    if not path:
        raise TranslateError(MISSING)
    path = Path(path)
    if not path.is_file():
        raise TranslateError(f"--inception file not found: {path} ({MISSING.split(': ', 1)[1]})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise TranslateError(f"--inception {path} is not a PyTorch state dict ({FID_WEIGHTS} is expected)") from None
    net = FIDInception()
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError):
        raise TranslateError(f"--inception {path} does not hold the FID Inception weights ({FID_WEIGHTS})") from None
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
    digest.update(str(path.stat().st_size).encode())
    return net.to(device).eval(), digest.hexdigest()[:16]


def folder_features(net: nn.Module, weights_key: str, folder: str | Path, device: torch.device,
                    batch_size: int = 32) -> tuple[Tensor, bool]:
    """(N, 2048) float64 features of every image under ``folder``, and whether they came from its cache."""
    from safetensors.torch import load_file, save_file

    from translate.analyze import batches
    from translate.analyze import folder as read_folder
    from translate.checkpoints import atomic_path

    reading = read_folder(folder)
    listing = [(str(p.relative_to(reading.root)), p.stat().st_size, p.stat().st_mtime_ns) for p in reading.files]
    key = hashlib.sha1(json.dumps([weights_key, listing]).encode()).hexdigest()[:16]
    cache = reading.root / f".translate-features-{key}.safetensors"
    if cache.is_file():
        return load_file(str(cache))["features"], True
    feats = []
    with torch.no_grad():
        for _, x in batches(reading, 3, 299, batch_size, device):
            feats.append(net(to_unit(x)).double().cpu())
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


def fid(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (float64)."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = torch.cov(real.T), torch.cov(fake.T)
    sqrt_trace = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * sqrt_trace)


def kid(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 with the kernel (x.y / d + 1)^3 over random subsets."""
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise TranslateError("KID needs at least 2 images in each folder")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=g)[:m]]
        y = fake[torch.randperm(len(fake), generator=g)[:m]]
        values.append(_mmd2(x, y))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if len(values) > 1 else 0.0


def _mmd2(x: Tensor, y: Tensor) -> float:
    d = x.shape[1]
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m = x.shape[0]
    xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * k_xy.sum() / m**2)


@dataclass
class DistanceSummary:
    fid: float
    kid: tuple[float, float]
    n_images: int
    n_ref: int
    cached: tuple[bool, bool]


def distances(images: str | Path, ref: str | Path, inception: str | Path | None, *, device: str = "auto",
              kid_subsets: int = 100, kid_subset_size: int = 1000) -> DistanceSummary:
    """FID and KID between the images in ``images`` (a model's outputs, `translate sample` grids' images)
    and a reference folder."""
    from translate.devices import pick_device

    dev = pick_device(device)
    net, key = load_inception(inception, dev)
    a, cached_a = folder_features(net, key, images, dev)
    b, cached_b = folder_features(net, key, ref, dev)
    if min(len(a), len(b)) < 2:
        raise TranslateError("FID needs at least 2 images in each folder")
    return DistanceSummary(fid(b, a), kid(b, a, kid_subsets, kid_subset_size), len(a), len(b), (cached_a, cached_b))
