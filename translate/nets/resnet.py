"""ResNet generator (Johnson et al.), laid out exactly as the reference's ``ResnetGenerator``.

The layer order is part of the contract: state-dict keys such as ``model.1.weight`` or
``model.10.conv_block.1.weight`` are indices into ``nn.Sequential`` containers, so the reference's
checkpoints load here without renaming. Parameter-free layers (padding, ReLU, norm "none") still
occupy their slots for that reason.

``antialias`` / ``antialias_up`` give the CUT code's default layout (its ``--no_antialias`` and
``--no_antialias_up`` off): each strided conv becomes a stride-1 conv followed by a blur-pool, each
transposed conv a blur-upsampling followed by a conv (layers.BlurDown, layers.BlurUp). The extra
slots shift the indices after them, as there, so CUT's ``nce_layers`` name the same layers and its
checkpoints load as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from translate.core.registry import NETS
from translate.nets.layers import BlurDown, BlurUp, ReflectionPad2d, norm_layer, uses_bias

N_DOWNSAMPLING = 2


class ResnetBlock(nn.Module):
    """Two reflect-padded 3x3 convs with a residual connection (optional dropout between)."""

    def __init__(self, dim: int, norm: str = "instance", dropout: bool = False) -> None:
        super().__init__()
        make_norm = norm_layer(norm)
        bias = uses_bias(norm)
        layers: list[nn.Module] = [
            ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=bias),
            make_norm(dim),
            nn.ReLU(True),
        ]
        if dropout:
            # Shifts the second conv from conv_block.5 to conv_block.6, as in the reference.
            layers.append(nn.Dropout(0.5))
        layers += [
            ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=bias),
            make_norm(dim),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _down(in_ch: int, ngf: int, norm: str, antialias: bool = False) -> list[nn.Module]:
    """7x7 stem and two 2x downsamplings: ``in_ch`` x H x W -> 4 ngf x H/4 x W/4."""
    make_norm, bias = norm_layer(norm), uses_bias(norm)
    layers: list[nn.Module] = [
        ReflectionPad2d(3),
        nn.Conv2d(in_ch, ngf, kernel_size=7, padding=0, bias=bias),
        make_norm(ngf),
        nn.ReLU(True),
    ]
    for i in range(N_DOWNSAMPLING):
        ch = ngf * 2**i
        stride = 1 if antialias else 2
        layers += [
            nn.Conv2d(ch, ch * 2, kernel_size=3, stride=stride, padding=1, bias=bias),
            make_norm(ch * 2),
            nn.ReLU(True),
            *([BlurDown(ch * 2)] if antialias else []),
        ]
    return layers


def _blocks(ngf: int, norm: str, dropout: bool, n_blocks: int) -> list[nn.Module]:
    if n_blocks < 0:
        raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
    return [ResnetBlock(ngf * 2**N_DOWNSAMPLING, norm=norm, dropout=dropout) for _ in range(n_blocks)]


def _up(out_ch: int, ngf: int, norm: str, antialias_up: bool = False) -> list[nn.Module]:
    """Two 2x upsamplings and a 7x7 output conv (always biased: no norm follows) with tanh."""
    make_norm, bias = norm_layer(norm), uses_bias(norm)
    layers: list[nn.Module] = []
    for i in range(N_DOWNSAMPLING):
        ch = ngf * 2 ** (N_DOWNSAMPLING - i)
        if antialias_up:
            layers += [BlurUp(ch), nn.Conv2d(ch, ch // 2, kernel_size=3, stride=1, padding=1, bias=bias)]
        else:
            layers += [nn.ConvTranspose2d(ch, ch // 2, kernel_size=3, stride=2, padding=1, output_padding=1,
                                          bias=bias)]
        layers += [make_norm(ch // 2), nn.ReLU(True)]
    return [*layers, ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, kernel_size=7, padding=0), nn.Tanh()]


class ResnetGenerator(nn.Module):
    """7x7 stem, two 2x downsamplings (strided convs, or anti-aliased), ``n_blocks`` residual blocks,
    two 2x upsamplings (transposed convs, or anti-aliased) and a 7x7 output conv with tanh. Input
    sides must be multiples of 4."""

    def __init__(
        self,
        in_ch: int = 3,
        out_ch: int = 3,
        ngf: int = 64,
        norm: str = "instance",
        dropout: bool = False,
        n_blocks: int = 9,
        antialias: bool = False,
        antialias_up: bool = False,
    ) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.ngf = in_ch, out_ch, ngf
        layers = [*_down(in_ch, ngf, norm, antialias), *_blocks(ngf, norm, dropout, n_blocks),
                  *_up(out_ch, ngf, norm, antialias_up)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, layers: list[int] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """The translation; with ``layers``, instead the outputs of those layers of ``model`` (CUT's
        PatchNCE features, as the CUT code numbers them), the rest of the network not run."""
        if layers is None:
            return self.model(x)
        wanted, feats = set(layers), {}
        for i, layer in enumerate(self.model):
            if i > max(layers):
                break
            x = layer(x)
            if i in wanted:
                feats[i] = x
        return [feats[i] for i in layers]


@NETS.register("resnet_encoder", role="encoder", family="image", size_multiple=4, gives="features",
               options=lambda c: {"in_ch": c["in_ch"], "ngf": c["ngf"], "norm": c["norm"], "dropout": c["dropout"]})
class ResnetEncoder(nn.Module):
    """ResNet generator's stem, downsampling and residual blocks (a feature map at 1/4 size).

    The first half of the ResNet generator; gives a ``features`` code (4 ngf x H/4 x W/4)."""

    def __init__(self, in_ch: int = 3, ngf: int = 64, norm: str = "instance", dropout: bool = False,
                 n_blocks: int = 9) -> None:
        super().__init__()
        self.model = nn.Sequential(*_down(in_ch, ngf, norm), *_blocks(ngf, norm, dropout, n_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@NETS.register("resnet_decoder", role="decoder", family="image", size_multiple=4, takes=("features",),
               options=lambda c: {"out_ch": c["out_ch"], "ngf": c["ngf"], "norm": c["norm"]})
class ResnetDecoder(nn.Module):
    """ResNet generator's upsampling and output conv.

    The second half, from a ``features`` code to an image."""

    def __init__(self, out_ch: int = 3, ngf: int = 64, norm: str = "instance") -> None:
        super().__init__()
        self.model = nn.Sequential(*_up(out_ch, ngf, norm))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)


@NETS.register("resnet_9blocks", role="translator", family="image", size_multiple=4, reference=True)
def resnet_9blocks(
    in_ch: int = 3, out_ch: int = 3, ngf: int = 64, norm: str = "instance", dropout: bool = False,
    antialias: bool = False, antialias_up: bool = False,
) -> nn.Module:
    """The reference's default CycleGAN generator (256x256 training); anti-aliased, CUT's."""
    return ResnetGenerator(in_ch, out_ch, ngf, norm=norm, dropout=dropout, n_blocks=9, antialias=antialias,
                           antialias_up=antialias_up)


@NETS.register("resnet_6blocks", role="translator", family="image", size_multiple=4, reference=True)
def resnet_6blocks(
    in_ch: int = 3, out_ch: int = 3, ngf: int = 64, norm: str = "instance", dropout: bool = False,
    antialias: bool = False, antialias_up: bool = False,
) -> nn.Module:
    """The lighter variant the CycleGAN paper uses for 128x128 images."""
    return ResnetGenerator(in_ch, out_ch, ngf, norm=norm, dropout=dropout, n_blocks=6, antialias=antialias,
                           antialias_up=antialias_up)
