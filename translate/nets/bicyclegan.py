"""BicycleGAN's networks, laid out exactly as the BicycleGAN code's (junyanz/BicycleGAN,
models/networks.py), so its checkpoints load as they are, key for key: ``latest_net_G.pth`` and
``latest_net_E.pth`` through ``translate import``, its Ds' state dicts into ours.

- ``bicycle_unet_256`` / ``bicycle_unet_128``: the generator (its ``G_Unet_add_all``, ``where_add=all``,
  the default): a U-Net whose every down conv sees the latent z tiled beside its input. Keys
  ``model.down.0.weight``, ``model.submodule.down.1.weight``, ... ``model.up.1.weight``.
- ``e_resnet``: the encoder E (its ``E_ResNet``, VAE-like): residual blocks that halve the image down
  to 8x8, an 8x8 mean, then the mean (``fc``) and the log-variance (``fcVar``) of q(z|B).
- ``basic_256_multi`` / ``basic_128_multi``: the discriminators (its ``D_NLayersMulti``): a PatchGAN at
  ``num_D`` scales, each next one on a 2x average-pooled input with half the filters, returning the
  list of their patch maps (keys ``model_0.*``, ``model_1.*``; ``model.*`` for one scale).

They compute what the BicycleGAN code computes, operation for operation (the parity test,
tests/test_parity_bicyclegan.py, finds its steps equal to the bit). Its in-place activations are
kept where they rewrite only a fresh tensor (the same numbers either way); where one rewrites a
tensor that is read again (E's blocks without a norm), that effect is written out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.core.registry import NETS
from translate.nets.layers import ReflectionPad2d, norm_layer, power_of_two

FAMILY = "bicyclegan"  # G, E and the multi-scale Ds train together, and only with each other
ACTIVATIONS = ("relu", "lrelu", "elu")  # the code's --nl, for G's up path (E and D: leaky ReLU always)
UPSAMPLES = ("basic", "bilinear")  # the code's --upsample: a transposed conv, or bilinear x2 + a 3x3 conv


def _norm(kind: str) -> Callable[[int], nn.Module] | None:
    """The code's norm layers: instance (no affine, no statistics), batch, or no layer at all for
    ``none`` (a missing layer, not an Identity: in E's blocks it moves the conv keys)."""
    make = norm_layer(kind)  # (checks the name)
    return None if kind == "none" else make


def _activation(kind: str) -> nn.Module:
    if kind not in ACTIVATIONS:
        raise ValueError(f"nl must be one of {', '.join(ACTIVATIONS)}, got {kind!r}")
    if kind == "relu":
        return nn.ReLU(True)
    return nn.LeakyReLU(0.2, True) if kind == "lrelu" else nn.ELU(inplace=True)


def _upsample(in_ch: int, out_ch: int, kind: str) -> list[nn.Module]:
    if kind not in UPSAMPLES:
        raise ValueError(f"upsample must be one of {', '.join(UPSAMPLES)}, got {kind!r}")
    if kind == "basic":
        return [nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)]
    return [nn.Upsample(scale_factor=2, mode="bilinear"), ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3, 1, 0)]


# --- G: a U-Net with z at every level -------------------------------------------------------------

class UnetBlockWithZ(nn.Module):
    """One U-Net level (the code's ``UnetBlock_with_z``): ``down`` (conv of the input with z tiled
    beside it), the inner levels, ``up`` (activation, upsampling, norm, dropout); the input itself is
    the skip beside the up path's output. Every conv has a bias, whatever the norm, as there.

    * outermost: ``down = [conv]``, ``up = [act, upconv, tanh]``, no skip
    * middle:    ``down = [leaky, conv, norm]``, ``up = [act, upconv, norm, (dropout)]``
    * innermost: ``down = [leaky, conv]``, ``up = [act, upconv, norm]``

    The code's LeakyReLU is in place on ``cat(x, z)``, a new tensor, so the skip carries the raw input
    (unlike pix2pix's U-Net, whose in-place LeakyReLU rewrites the skip); ours is not in place, the
    same numbers.
    """

    def __init__(self, in_ch: int, outer_ch: int, inner_ch: int, nz: int, submodule: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, norm: str = "instance", nl: str = "relu",
                 dropout: bool = False, upsample: str = "basic") -> None:
        super().__init__()
        if innermost == (submodule is not None) or (innermost and outermost):
            raise ValueError("the innermost level takes no submodule; every other level needs one")
        self.outermost, self.innermost, self.nz = outermost, innermost, nz
        make_norm = _norm(norm)
        conv = nn.Conv2d(in_ch + nz, inner_ch, kernel_size=4, stride=2, padding=1)
        down: list[nn.Module]
        up: list[nn.Module]
        if outermost:
            down = [conv]
            up = [_activation(nl), *_upsample(inner_ch * 2, outer_ch, upsample), nn.Tanh()]
        elif innermost:
            down = [nn.LeakyReLU(0.2), conv]
            up = [_activation(nl), *_upsample(inner_ch, outer_ch, upsample)]
            up += [make_norm(outer_ch)] if make_norm else []
        else:
            down = [nn.LeakyReLU(0.2), conv, *([make_norm(inner_ch)] if make_norm else [])]
            up = [_activation(nl), *_upsample(inner_ch * 2, outer_ch, upsample)]
            up += [make_norm(outer_ch)] if make_norm else []
            up += [nn.Dropout(0.5)] if dropout else []
        self.down = nn.Sequential(*down)
        self.submodule = submodule  # registered between down and up, as there (parameter order, keys)
        self.up = nn.Sequential(*up)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        if self.nz:  # z tiled over the image: the code's view + expand, for the same autograd graph
            x_and_z = torch.cat([x, z.view(z.size(0), z.size(1), 1, 1).expand(-1, -1, x.size(2), x.size(3))], 1)
        else:
            x_and_z = x
        if self.innermost:
            return torch.cat([self.up(self.down(x_and_z)), x], 1)
        assert self.submodule is not None  # every level but the innermost has one (checked in __init__)
        y = self.up(self.submodule(self.down(x_and_z), z))
        return y if self.outermost else torch.cat([y, x], 1)


class BicycleUnet(nn.Module):
    """The code's ``G_Unet_add_all``: ``num_downs`` levels of widths ngf, 2ngf, 4ngf, then 8ngf to the
    1x1 bottleneck; dropout (``dropout``) in the 8ngf levels but the innermost. ``forward(x, z)``;
    without a z, zeros (the prior's mean), so a plain call is repeatable."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, nz: int = 8, num_downs: int = 8, ngf: int = 64,
                 norm: str = "instance", nl: str = "relu", dropout: bool = False, upsample: str = "basic") -> None:
        if num_downs < 6:
            raise ValueError(f"num_downs must be >= 6 (the code builds at least two 8ngf levels), got {num_downs}")
        super().__init__()
        self.in_ch, self.out_ch, self.nz = in_ch, out_ch, nz
        level = functools.partial(UnetBlockWithZ, nz=nz, norm=norm, nl=nl, upsample=upsample)
        block = level(ngf * 8, ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = level(ngf * 8, ngf * 8, ngf * 8, submodule=block, dropout=dropout)
        for mult in (4, 2, 1):
            block = level(ngf * mult, ngf * mult, ngf * mult * 2, submodule=block)
        self.model = level(in_ch, out_ch, ngf, submodule=block, outermost=True)

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        if z is None:
            z = x.new_zeros(x.shape[0], self.nz)
        return self.model(x, z.to(x.dtype))


@NETS.register("bicycle_unet_256", role="translator", family=FAMILY, size_multiple=256, reference=True, latent=True)
def bicycle_unet_256(in_ch: int = 3, out_ch: int = 3, nz: int = 8, ngf: int = 64, norm: str = "instance",
                     dropout: bool = False, upsample: str = "basic", nl: str = "relu") -> nn.Module:
    """BicycleGAN's U-Net, z added at each of its 8 levels: 256x256 reaches 1x1 (the code's default)."""
    return BicycleUnet(in_ch, out_ch, nz, 8, ngf, norm, nl, dropout, upsample)


@NETS.register("bicycle_unet_128", role="translator", family=FAMILY, size_multiple=128, reference=True, latent=True)
def bicycle_unet_128(in_ch: int = 3, out_ch: int = 3, nz: int = 8, ngf: int = 64, norm: str = "instance",
                     dropout: bool = False, upsample: str = "basic", nl: str = "relu") -> nn.Module:
    """BicycleGAN's U-Net with 7 levels, for 128x128 (the code's unet_128)."""
    return BicycleUnet(in_ch, out_ch, nz, 7, ngf, norm, nl, dropout, upsample)


# --- E: the ResNet encoder of q(z|B) ---------------------------------------------------------------

class ResBlockDown(nn.Module):
    """The code's ``BasicBlock``: ``conv(x) + shortcut(x)``, both halving the size.
    ``conv = [norm, leaky, conv3x3, norm, leaky, [conv3x3, avgpool2]]``,
    ``shortcut = [avgpool2, conv1x1]``; without a norm the list starts with the leaky ReLU."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "instance") -> None:
        super().__init__()
        make_norm = _norm(norm)
        layers: list[nn.Module] = [*([make_norm(in_ch)] if make_norm else []), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(in_ch, in_ch, 3, 1, 1),
                                   *([make_norm(in_ch)] if make_norm else []), nn.LeakyReLU(0.2, True),
                                   nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, 1, 1), nn.AvgPool2d(2, 2))]
        self.conv = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(in_ch, out_ch, 1, 1, 0))
        self.leaky_first = make_norm is None

    def forward(self, x: Tensor) -> Tensor:
        if self.leaky_first:  # the code's in-place LeakyReLU rewrites x itself, which the shortcut reads next
            x = F.leaky_relu(x, 0.2)
            return self.conv[1:](x) + self.shortcut(x)
        return self.conv(x) + self.shortcut(x)


@NETS.register("e_resnet", role="style_encoder", family=FAMILY, fixed_size=True, power_of_two=16)
class EResNet(nn.Module):
    """BicycleGAN's encoder E: an image to the mean and log-variance of its latent code.

    The code's ``E_ResNet`` (VAE-like): a 4x4 stride-2 conv, residual blocks that halve the image
    down to 8x8 (widths nef, 2nef, 3nef, then 4nef), leaky ReLU, an 8x8 mean; ``fc`` and ``fcVar``
    give the mean and log-variance of q(z|x). ``forward(x) -> (mu, logvar)``.

    ``resolution`` sets the number of blocks: log2(resolution) - 3 (the code's resnet_256: 5,
    resnet_128: 4); the input must be that size. ``fc``/``fcVar`` are registered before ``conv``, as
    there: they lead its parameters (and the code's Adam state)."""

    def __init__(self, in_ch: int = 3, nz: int = 8, nef: int = 64, resolution: int = 256,
                 norm: str = "instance") -> None:
        if not power_of_two(resolution, 16):
            raise ValueError(f"resolution must be a power of two >= 16, got {resolution}")
        super().__init__()
        self.in_ch, self.nz, self.resolution = in_ch, nz, resolution
        n_blocks = resolution.bit_length() - 4
        layers: list[nn.Module] = [nn.Conv2d(in_ch, nef, kernel_size=4, stride=2, padding=1)]
        layers += [ResBlockDown(nef * min(4, n), nef * min(4, n + 1), norm) for n in range(1, n_blocks)]
        layers += [nn.LeakyReLU(0.2, True), nn.AvgPool2d(8)]
        width = nef * min(4, n_blocks)
        self.fc = nn.Sequential(nn.Linear(width, nz))
        self.fcVar = nn.Sequential(nn.Linear(width, nz))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        flat = self.conv(x).view(x.size(0), -1)
        return self.fc(flat), self.fcVar(flat)


# --- D: PatchGANs at several scales -----------------------------------------------------------------

def _patchgan(in_ch: int, ndf: int, n_layers: int, norm: str) -> nn.Sequential:
    """The code's ``D_NLayersMulti.get_layers``: ``n_layers`` stride-2 4x4 convs, a stride-1 one, the
    1-channel output conv, every conv biased (unlike pix2pix's PatchGAN before instance norm: the
    same; before batch norm: a bias more). ``none`` keeps an Identity where the code fails."""
    make_norm = norm_layer(norm)
    layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, n_layers + 1):
        prev, mult = mult, min(2**n, 8)
        stride = 1 if n == n_layers else 2
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1), make_norm(ndf * mult),
                   nn.LeakyReLU(0.2, True)]
    layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
    return nn.Sequential(*layers)


class MultiscalePatchGAN(nn.Module):
    """``num_D`` PatchGANs, scale i on the input average-pooled i times (3x3, stride 2, padding not
    counted) with round(ndf / 2^i) filters. ``forward`` returns the list of their patch maps; the GAN
    loss is the sum of the per-scale losses, as the code's GANLoss."""

    def __init__(self, in_ch: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance",
                 num_D: int = 2) -> None:
        if num_D < 1:
            raise ValueError(f"num_D must be >= 1, got {num_D}")
        super().__init__()
        self.num_D = num_D
        if num_D == 1:
            self.model = _patchgan(in_ch, ndf, n_layers, norm)
            return
        self.model_0 = _patchgan(in_ch, ndf, n_layers, norm)
        self.down = nn.AvgPool2d(3, stride=2, padding=(1, 1), count_include_pad=False)
        for i in range(1, num_D):
            self.add_module(f"model_{i}", _patchgan(in_ch, int(round(ndf / 2**i)), n_layers, norm))

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.num_D == 1:
            return [self.model(x)]
        out = []
        for i in range(self.num_D):
            out.append(getattr(self, f"model_{i}")(x))
            if i != self.num_D - 1:
                x = self.down(x)
        return out


def _multi_size(n_layers: int) -> Callable[..., int]:
    """The smallest power of two whose last scale still gives a patch map: the last of ``num_D``
    scales sees side / 2^(num_D - 1), its stride-2 convs take that to 1/2^n_layers, and the two
    stride-1 4x4 convs take 1 pixel each, so it needs 4 pixels there."""
    return lambda num_D=2, **_: 2 ** (n_layers + num_D + 1)


@NETS.register("basic_256_multi", role="discriminator", family=FAMILY, size_multiple=_multi_size(3))
def basic_256_multi(in_ch: int = 3, ndf: int = 64, norm: str = "instance", num_D: int = 2) -> nn.Module:
    """70x70 PatchGANs at ``num_D`` scales (BicycleGAN's default D and D2)."""
    return MultiscalePatchGAN(in_ch, ndf, 3, norm, num_D)


@NETS.register("basic_128_multi", role="discriminator", family=FAMILY, size_multiple=_multi_size(2))
def basic_128_multi(in_ch: int = 3, ndf: int = 64, norm: str = "instance", num_D: int = 2) -> nn.Module:
    """Shallower PatchGANs (two stride-2 convs) at ``num_D`` scales, for 128x128 (the code's basic_128_multi)."""
    return MultiscalePatchGAN(in_ch, ndf, 2, norm, num_D)

