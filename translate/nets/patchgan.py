"""PatchGAN discriminators, laid out exactly as the reference's ``NLayerDiscriminator`` and
``PixelDiscriminator`` (so their ``latest_net_D*.pth`` keys match too).

They output raw logits (no sigmoid); the GAN loss decides how to read them.
"""

from __future__ import annotations

import torch
from torch import nn

from translate.core.registry import NETS
from translate.nets.layers import BlurDown, norm_layer, uses_bias


@NETS.register("n_layers", role="discriminator", family="image")
class NLayerDiscriminator(nn.Module):
    """PatchGAN with a chosen depth (receptive field grows with ``n_layers``).

    A Conv-LeakyReLU stack scoring overlapping patches; ``n_layers=3`` sees 70x70 patches.
    ``n_layers`` stride-2 convs then one stride-1 conv widen the features by ``min(2**n, 8)``;
    a final stride-1 conv maps to one channel. The first conv (no norm after it) and the last
    one always carry a bias. ``antialias``: each stride-2 conv is a stride-1 conv and a blur-pool
    after its activation (layers.BlurDown), as the CUT code's default discriminator.
    """

    def __init__(self, in_ch: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance",
                 antialias: bool = False) -> None:
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        super().__init__()
        make_norm = norm_layer(norm)
        bias = uses_bias(norm)
        stride = 1 if antialias else 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, ndf, kernel_size=4, stride=stride, padding=1),
            nn.LeakyReLU(0.2, True),
            *([BlurDown(ndf)] if antialias else []),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            last = n == n_layers  # the last widening conv keeps the resolution
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=1 if last else stride, padding=1, bias=bias),
                make_norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
                *([BlurDown(ndf * mult)] if antialias and not last else []),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN: judges each pixel on its own (colour statistics only)."""

    def __init__(self, in_ch: int = 3, ndf: int = 64, norm: str = "instance") -> None:
        super().__init__()
        make_norm = norm_layer(norm)
        bias = uses_bias(norm)
        # The attribute is ``net`` (not ``model``) in the reference; kept for key compatibility.
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, ndf, kernel_size=1, stride=1, padding=0),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, stride=1, padding=0, bias=bias),
            make_norm(ndf * 2),
            nn.LeakyReLU(0.2, True),
            # The reference ties this output conv's bias to the norm too (unlike NLayer's).
            nn.Conv2d(ndf * 2, 1, kernel_size=1, stride=1, padding=0, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@NETS.register("basic", role="discriminator", family="image")
def basic(in_ch: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance", antialias: bool = False
          ) -> nn.Module:
    """The standard 70x70 PatchGAN; ``n_layers`` is accepted for a uniform signature but fixed at 3."""
    return NLayerDiscriminator(in_ch, ndf, n_layers=3, norm=norm, antialias=antialias)


@NETS.register("pixel", role="discriminator", family="image")
def pixel(in_ch: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance") -> nn.Module:
    """1x1 PixelGAN; ``n_layers`` is accepted for a uniform signature and ignored."""
    return PixelDiscriminator(in_ch, ndf, norm=norm)
