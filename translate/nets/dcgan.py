"""DCGAN networks (Radford et al. 2016), optionally class-conditional.

Generator: z -> 4x4 by a transposed conv, then stride-2 transposed convs with BatchNorm and ReLU that
double the resolution and halve the width, and tanh. Discriminator: stride-2 convs with LeakyReLU
(BatchNorm after all but the first, or none) down to 4x4, then a linear score.

Class conditioning. The generator concatenates a learned class embedding to z (Mirza & Osindero
2014): simple, and it leaves ``truncation`` (which scales z only) meaning "the class's average".
The discriminator is a projection discriminator (Miyato & Koyama 2018): with phi(x) its flattened
4x4 features, score = psi(phi(x)) + <embed(y), phi(x)>.

Both nets initialise themselves as DCGAN does: conv, linear and embedding weights N(0, 0.02),
BatchNorm scales N(1, 0.02), biases 0. (A generator embedding at PyTorch's N(0, 1), the scale of z,
collapsed each class to one image on MNIST: G put all its variation into the label.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from translate.core.registry import NETS
from translate.nets.layers import power_of_two

MIN_RESOLUTION = 16
MAX_WIDTH_MULT = 8  # widths stop growing at 8 x ngf / ndf, as DCGAN's 64x64 nets


def _levels(resolution: int) -> int:
    """Stride-2 stages between 4x4 and ``resolution`` (which must be a power of two >= 16)."""
    if not power_of_two(resolution, MIN_RESOLUTION):
        raise ValueError(f"resolution must be a power of two >= {MIN_RESOLUTION}, got {resolution}")
    return int(math.log2(resolution)) - 2


def _widths(base: int, levels: int) -> list[int]:
    """Feature widths from the 4x4 end outwards: 8b, 4b, 2b, b at 64x64 (fewer levels drop the widest)."""
    return [base * min(2 ** (levels - 1 - i), MAX_WIDTH_MULT) for i in range(levels)]


def dcgan_init(net: nn.Module) -> nn.Module:
    """DCGAN's init in place: N(0, 0.02) weights, BatchNorm N(1, 0.02) scales, zero biases."""
    for m in net.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return net


@NETS.register("dcgan_g", role="generator", family="dcgan", recipe_init=False, power_of_two=16)
class DCGANGenerator(nn.Module):
    """DCGAN generator; ``num_classes > 0`` makes it class-conditional (embedding concatenated to z).

    (N, z_dim) noise (and (N,) labels if ``num_classes``) -> (N, channels, R, R) images in [-1, 1]."""

    def __init__(self, z_dim: int = 100, resolution: int = 64, channels: int = 3, ngf: int = 64,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.z_dim, self.resolution, self.channels, self.num_classes = z_dim, resolution, channels, num_classes
        widths = _widths(ngf, _levels(resolution))
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        in_ch = z_dim * (2 if num_classes else 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_ch, widths[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for prev, width in zip(widths, widths[1:], strict=False):
            layers += [nn.ConvTranspose2d(prev, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: Tensor, label: Tensor | None = None, truncation: float = 1.0) -> Tensor:
        """``truncation`` scales z towards 0 (the mode of its prior): 0 gives one image per class."""
        z = z * truncation
        if self.embed is not None:
            if label is None:
                raise ValueError("this generator is class-conditional: pass a label per sample")
            z = torch.cat([z, self.embed(label).to(z.dtype)], 1)
        return self.main(z[:, :, None, None])


@NETS.register("dcgan_d", role="discriminator", family="dcgan", recipe_init=False, power_of_two=16)
class ProjectionDiscriminator(nn.Module):
    """DCGAN discriminator; ``num_classes > 0`` adds the class projection.

    (N, channels, R, R) images (and (N,) labels if ``num_classes``) -> (N,) real/fake logits."""

    def __init__(self, resolution: int = 64, channels: int = 3, ndf: int = 64, norm: str = "batch",
                 num_classes: int = 0) -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        widths = _widths(ndf, _levels(resolution))[::-1]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for prev, width in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(prev, width, 4, 2, 1, bias=norm == "none"),
                       nn.BatchNorm2d(width) if norm == "batch" else nn.Identity(), nn.LeakyReLU(0.2, True)]
        self.main = nn.Sequential(*layers)  # phi: down to (N, widths[-1], 4, 4)
        features = widths[-1] * 16
        self.psi = nn.Linear(features, 1)  # the same map as DCGAN's final 4x4 conv to one channel
        self.embed = nn.Embedding(num_classes, features) if num_classes else None
        dcgan_init(self)

    def forward(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        phi = self.main(x).flatten(1)
        score = self.psi(phi).squeeze(1)
        if self.embed is not None:
            if label is None:
                raise ValueError("this discriminator is class-conditional: pass a label per sample")
            score = score + (self.embed(label).to(phi.dtype) * phi).sum(1)
        return score

