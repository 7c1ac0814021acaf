"""U-Net generator (pix2pix), laid out exactly as the reference's ``UnetGenerator``.

The network is a chain of nested skip blocks; each block's ``model`` Sequential holds the next
block, which yields the reference's keys (``model.model.0.weight``,
``model.model.1.model.1.weight``, ...). ``num_downs`` stride-2 convs take a ``2**num_downs`` image
down to 1x1, so unet_256 wants 256x256 inputs and unet_128 128x128 ones (any multiple works).
"""

from __future__ import annotations

from itertools import islice

import torch
from torch import nn

from translate.core.registry import NETS
from translate.nets.layers import norm_layer, uses_bias


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: down (conv) -> inner block -> up (transposed conv), plus the skip.

    Sequential layout, which fixes the state-dict indices:

    * outermost: ``[downconv, inner, relu, upconv(biased), tanh]`` (no concatenation)
    * middle:    ``[leaky, downconv, downnorm, inner, relu, upconv, upnorm, (dropout)]``
    * innermost: ``[leaky, downconv, relu, upconv, upnorm]``

    Middle and innermost blocks return ``cat([leaky_relu(x), out])``. The reference writes
    ``cat([x, model(x)])`` with an *in-place* LeakyReLU as the first layer, which overwrites
    ``x`` before the concatenation reads it, so its skip actually carries ``leaky_relu(x)``.
    We compute that explicitly (without mutating the input) to give the same numbers.
    """

    def __init__(
        self,
        outer_ch: int,
        inner_ch: int,
        in_ch: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "batch",
        dropout: bool = False,
    ) -> None:
        super().__init__()
        if innermost == (submodule is not None) or (innermost and outermost):
            raise ValueError("the innermost block takes no submodule; every other block needs one")
        self.outermost = outermost
        self.innermost = innermost
        make_norm = norm_layer(norm)
        bias = uses_bias(norm)
        in_ch = outer_ch if in_ch is None else in_ch

        down_conv = nn.Conv2d(in_ch, inner_ch, kernel_size=4, stride=2, padding=1, bias=bias)
        layers: list[nn.Module]
        if outermost:
            assert submodule is not None
            layers = [
                down_conv,
                submodule,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner_ch * 2, outer_ch, kernel_size=4, stride=2, padding=1),
                nn.Tanh(),
            ]
        elif innermost:
            layers = [
                nn.LeakyReLU(0.2),
                down_conv,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner_ch, outer_ch, kernel_size=4, stride=2, padding=1, bias=bias),
                make_norm(outer_ch),
            ]
        else:
            assert submodule is not None
            layers = [
                nn.LeakyReLU(0.2),
                down_conv,
                make_norm(inner_ch),
                submodule,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner_ch * 2, outer_ch, kernel_size=4, stride=2, padding=1, bias=bias),
                make_norm(outer_ch),
            ]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        skip = self.model[0](x)  # leaky_relu: what the reference's in-place op leaves in x
        out = skip
        for layer in islice(self.model, 1, None):
            out = layer(out)
        return torch.cat([skip, out], 1)


class UnetGenerator(nn.Module):
    """U-Net with ``num_downs`` levels: widths ngf, 2ngf, 4ngf, then 8ngf for every deeper level.

    Dropout (when enabled) sits only in the extra 8ngf levels between the 4ngf level and the
    innermost one, as in the reference.
    """

    def __init__(
        self,
        in_ch: int = 3,
        out_ch: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "batch",
        dropout: bool = False,
    ) -> None:
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5, got {num_downs}")
        super().__init__()
        self.in_ch, self.out_ch, self.ngf, self.num_downs = in_ch, out_ch, ngf, num_downs
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, norm=norm, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, dropout=dropout)
        for mult in (4, 2, 1):
            block = UnetSkipConnectionBlock(ngf * mult, ngf * mult * 2, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(
            out_ch, ngf, in_ch=in_ch, submodule=block, outermost=True, norm=norm
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@NETS.register("unet_256", role="translator", family="image", size_multiple=256, reference=True)
def unet_256(
    in_ch: int = 3, out_ch: int = 3, ngf: int = 64, norm: str = "instance", dropout: bool = False
) -> nn.Module:
    """Eight downsamplings: a 256x256 input reaches 1x1 at the bottleneck (pix2pix default)."""
    return UnetGenerator(in_ch, out_ch, num_downs=8, ngf=ngf, norm=norm, dropout=dropout)


@NETS.register("unet_128", role="translator", family="image", size_multiple=128, reference=True)
def unet_128(
    in_ch: int = 3, out_ch: int = 3, ngf: int = 64, norm: str = "instance", dropout: bool = False
) -> nn.Module:
    """Seven downsamplings, for 128x128 inputs."""
    return UnetGenerator(in_ch, out_ch, num_downs=7, ngf=ngf, norm=norm, dropout=dropout)


# --- the U-Net in two halves, for composed translators --------------------------------------------
# The same computation as UnetGenerator, written level by level instead of nested, so the encoder
# can hand every level's features (a ``skips`` code) to a decoder built apart from it.

def _widths(ngf: int, num_downs: int) -> list[int]:
    """Features after each down conv: ngf, 2 ngf, 4 ngf, then 8 ngf down to the bottleneck."""
    if num_downs < 5:
        raise ValueError(f"num_downs must be >= 5, got {num_downs}")
    return [ngf * min(2**i, 8) for i in range(num_downs)]


def unet_depth(size: int) -> int:
    """Levels for a training size: down to 1x1 (as unet_256 at 256), between 5 and 8 levels."""
    return min(8, max(5, size.bit_length() - 1))


def _depth_multiple(num_downs: int = 8, **_: object) -> int:
    return 2**num_downs


@NETS.register("unet_encoder", role="encoder", family="image", size_multiple=_depth_multiple, gives="skips",
               options=lambda c: {"in_ch": c["in_ch"], "ngf": c["ngf"], "norm": c["norm"],
                                  "num_downs": unet_depth(c["size"])})
class UnetEncoder(nn.Module):
    """U-Net's down path, every level's features kept for the decoder's skips.

    Stride-2 4x4 convs (LeakyReLU before and norm after each but the first), giving every
    level's output: ``skips[i]`` is ``widths[i]`` x H/2^(i+1) x W/2^(i+1)."""

    def __init__(self, in_ch: int = 3, ngf: int = 64, norm: str = "batch", num_downs: int = 8) -> None:
        super().__init__()
        w, make_norm, bias = _widths(ngf, num_downs), norm_layer(norm), uses_bias(norm)
        downs: list[nn.Module] = [nn.Conv2d(in_ch, w[0], kernel_size=4, stride=2, padding=1, bias=bias)]
        for i in range(1, num_downs):
            downs.append(nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(w[i - 1], w[i], 4, 2, 1, bias=bias),
                                       nn.Identity() if i == num_downs - 1 else make_norm(w[i])))  # innermost: none
        self.downs = nn.ModuleList(downs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        return skips


@NETS.register("unet_decoder", role="decoder", family="image", size_multiple=_depth_multiple, takes=("skips",),
               options=lambda c: {"out_ch": c["out_ch"], "ngf": c["ngf"], "norm": c["norm"],
                                  "dropout": c["dropout"], "num_downs": unet_depth(c["size"])})
class UnetDecoder(nn.Module):
    """U-Net's up path with skip connections, to a tanh image.

    Transposed convs back up, each level fed its own output beside the encoder's skip
    (LeakyReLU of it, as the reference's in-place activation leaves it)."""

    def __init__(self, out_ch: int = 3, ngf: int = 64, norm: str = "batch", dropout: bool = False,
                 num_downs: int = 8) -> None:
        super().__init__()
        w, make_norm, bias = _widths(ngf, num_downs), norm_layer(norm), uses_bias(norm)
        ups: list[nn.Module] = [nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(w[0] * 2, out_ch, 4, 2, 1), nn.Tanh())]
        for i in range(1, num_downs):
            c_in = w[i] if i == num_downs - 1 else w[i] * 2  # the bottleneck has no skip beside it
            layers = [nn.ReLU(True), nn.ConvTranspose2d(c_in, w[i - 1], 4, 2, 1, bias=bias), make_norm(w[i - 1])]
            if dropout and 4 <= i < num_downs - 1:  # the extra 8 ngf levels, as UnetGenerator
                layers.append(nn.Dropout(0.5))
            ups.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList(ups)
        self.leaky = nn.LeakyReLU(0.2)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        y = self.ups[-1](skips[-1])
        for i in range(len(skips) - 2, -1, -1):
            y = self.ups[i](torch.cat([self.leaky(skips[i]), y], 1))
        return y
