"""StyleGAN2 (Karras et al. 2020) in plain PyTorch: no custom CUDA ops.

Generator: a mapping MLP turns z into w; a synthesis network starts from a learned 4x4 constant
and, at each resolution, runs modulated + demodulated 3x3 convolutions (styles from w), adds
per-pixel noise of learned strength, and sums an RGB output per resolution (the "skip"
architecture). Discriminator: residual blocks down to 4x4, minibatch standard deviation, and a
small head. Every layer uses the equalised learning rate and resamples with the paper's FIR filter
(nets/blocks.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.core.registry import NETS
from translate.nets.blocks import EqualConv2d, EqualLinear, MinibatchStdDev, fir_kernel, lrelu, pixel_norm, upsample2x
from translate.nets.layers import power_of_two

NOISE_MODES = ("const", "random")


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled per sample by a style from w (modulation), and
    whose output channels are then rescaled to unit expected variance (demodulation), which
    replaces AdaIN's normalisation of activations and so removes its "droplet" artefacts.

    Scaling the weights per sample equals scaling the activations before one shared convolution
    and the outputs after it; that form is a plain convolution, several times faster than a
    grouped one with per-sample weights. ``up``: a stride-2 transposed convolution then the FIR
    filter, so the convolution runs at the input's (lower) resolution.
    """

    fir: Tensor | None  # the FIR filter where ``up``, else None

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, kernel: int, demodulate: bool = True,
                 up: bool = False) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)  # styles start at 1: plain convolution
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.weight_gain = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.demodulate, self.up = demodulate, up
        self.register_buffer("fir", fir_kernel() if up else None, persistent=False)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w)  # (N, in_ch)
        weight = self.weight * self.weight_gain
        x = x * styles.to(x.dtype)[:, :, None, None]
        if self.up:  # (H, W) -> (2H + 1, 2W + 1) -> blur with padding 1 -> (2H, 2W)
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            c = x.shape[1]
            assert self.fir is not None  # registered where up
            x = F.conv2d(x, (self.fir * 4).to(x.dtype).repeat(c, 1, 1, 1), padding=1, groups=c)
        else:
            x = F.conv2d(x, weight, padding=weight.shape[-1] // 2)
        if self.demodulate:  # 1 / the norm of each sample's modulated filter: sum_i s_i^2 sum_k w_oik^2
            norm2 = styles.float().square() @ weight.float().square().sum(dim=(2, 3)).t()  # (N, out_ch)
            x = x * torch.rsqrt(norm2 + 1e-8).to(x.dtype)[:, :, None, None]
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally upsampling), noise of learned strength, bias, leaky ReLU."""

    noise_const: Tensor

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, resolution: int, up: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, w_dim, kernel=3, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))  # fixed noise for "const"

    def forward(self, x: Tensor, w: Tensor, noise_mode: str) -> Tensor:
        x = self.conv(x, w)
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        else:
            noise = self.noise_const.to(x.dtype)
        x = x + noise * self.noise_strength.to(x.dtype)
        return lrelu(x + self.bias.to(x.dtype).view(1, -1, 1, 1))


class ToRGB(nn.Module):
    """Modulated 1x1 conv to image channels, without demodulation (colours keep their scale)."""

    def __init__(self, in_ch: int, channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, channels, w_dim, kernel=1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        x = self.conv(x, w)
        return x + self.bias.to(x.dtype).view(1, -1, 1, 1)


def channel_counts(resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """Feature maps per resolution: ``channel_base / res``, capped at ``channel_max`` (as the paper)."""
    return {4 * 2**i: min(channel_base // (4 * 2**i), channel_max) for i in range(int(math.log2(resolution)) - 1)}


def check_resolution(resolution: int) -> None:
    if not power_of_two(resolution, 8):
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")


class MappingNetwork(nn.Module):
    """z -> w: normalise z's second moment, then an MLP at 1/100 of the learning rate.

    ``w_avg`` follows the mean w during training (an EMA); truncation pulls w towards it.
    """

    w_avg: Tensor

    def __init__(self, z_dim: int, w_dim: int, layers: int, lr_mul: float = 0.01, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.net = nn.Sequential(*(EqualLinear(a, b, lr_mul=lr_mul, activation=True)
                                   for a, b in zip(dims[:-1], dims[1:], strict=True)))
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.w_avg_beta = w_avg_beta

    def forward(self, z: Tensor, truncation: float = 1.0, track: bool = False) -> Tensor:
        w = self.net(pixel_norm(z))
        if track:
            with torch.no_grad():
                self.w_avg.copy_(torch.lerp(w.detach().float().mean(0), self.w_avg, self.w_avg_beta))
        if truncation != 1.0:
            w_avg = self.w_avg.to(w.dtype)
            w = w_avg + truncation * (w - w_avg)
        return w


class SynthesisBlock(nn.Module):
    """One resolution: (upsampling conv), conv, and this resolution's RGB added to the upsampled image."""

    fir: Tensor

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, resolution: int, channels: int) -> None:
        super().__init__()
        first = resolution == 4
        if first:
            self.const = nn.Parameter(torch.randn(out_ch, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_ch, out_ch, w_dim, resolution, up=True)
        self.conv1 = SynthesisLayer(out_ch, out_ch, w_dim, resolution)
        self.torgb = ToRGB(out_ch, channels, w_dim)
        self.register_buffer("fir", fir_kernel(), persistent=False)
        self.num_conv = 1 if first else 2

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str) -> tuple[Tensor, Tensor]:
        """``ws``: (N, num_conv + 1, w_dim); the last w drives toRGB (shared with the next block's first conv)."""
        if x is None:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
        x = self.conv1(x, ws[:, self.num_conv - 1], noise_mode)
        rgb = self.torgb(x, ws[:, self.num_conv])
        img = rgb if img is None else upsample2x(img, self.fir).to(rgb.dtype) + rgb
        return x, img


class SynthesisNetwork(nn.Module):
    """Per-layer w's -> image, one block per resolution from 4x4 up."""

    def __init__(self, w_dim: int, resolution: int, channels: int, channel_base: int, channel_max: int) -> None:
        super().__init__()
        widths = channel_counts(resolution, channel_base, channel_max)
        blocks = [SynthesisBlock(widths.get(res // 2, 0), widths[res], w_dim, res, channels) for res in widths]
        self.blocks = nn.ModuleList(blocks)
        self.num_ws = sum(b.num_conv for b in blocks) + 1  # + the last block's toRGB

    def forward(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        x: Tensor | None = None
        img: Tensor | None = None
        i = 0
        for block in cast("Iterable[SynthesisBlock]", self.blocks):
            x, img = block(x, img, ws[:, i : i + block.num_conv + 1], noise_mode)
            i += block.num_conv
        assert img is not None  # there is at least the 4x4 block
        return img


@NETS.register("stylegan2_g", role="generator", family="stylegan2", recipe_init=False, power_of_two=8)
class Generator(nn.Module):
    """StyleGAN2 generator (mapping + skip synthesis); initialises itself (N(0, 1), equalised lr).

    ``forward(z) -> images`` of ``channels`` x ``resolution``^2. Contract attributes: ``z_dim``,
    ``resolution``, ``channels``, ``num_classes`` (0: unconditional). In eval mode the output is
    clamped to [-1, 1] (the inference contract); training sees the raw output, as in the paper.
    """

    num_classes = 0

    def __init__(self, z_dim: int = 512, w_dim: int = 512, resolution: int = 256, channels: int = 3,
                 channel_base: int = 32768, channel_max: int = 512, mapping_layers: int = 8) -> None:
        check_resolution(resolution)
        super().__init__()
        self.z_dim, self.w_dim, self.resolution, self.channels = z_dim, w_dim, resolution, channels
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers)
        self.synthesis = SynthesisNetwork(w_dim, resolution, channels, channel_base, channel_max)
        self.num_ws = self.synthesis.num_ws

    def forward(self, z: Tensor, label: Tensor | None = None, truncation: float = 1.0, z2: Tensor | None = None,
                mix_layer: int | None = None, noise_mode: str = "const",
                return_ws: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Images from latents ``z`` (N, z_dim).

        ``truncation``: w = w_avg + truncation * (w - w_avg); 0 gives w_avg's image for every z.
        ``z2`` and ``mix_layer``: style mixing, layers ``mix_layer`` on (of ``num_ws``) take z2's w.
        ``noise_mode``: ``"const"`` (fixed per-layer noise: deterministic) or ``"random"`` (training).
        ``return_ws``: also return the per-layer w's (N, num_ws, w_dim), for path-length regularisation.
        """
        if label is not None:
            raise ValueError("this StyleGAN2 generator is unconditional (num_classes 0); pass label=None")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")
        if (z2 is None) != (mix_layer is None):
            raise ValueError("style mixing needs both z2 and mix_layer")
        ws = self.mapping(z, truncation, track=self.training).unsqueeze(1).repeat(1, self.num_ws, 1)
        if z2 is not None and mix_layer is not None:  # both or neither (checked above)
            w2 = self.mapping(z2, truncation).unsqueeze(1)
            later = torch.arange(self.num_ws, device=ws.device).view(1, -1, 1) >= mix_layer
            ws = torch.where(later, w2.to(ws.dtype), ws)
        img = self.synthesis(ws, noise_mode)
        if not self.training:
            img = img.clamp(-1, 1)
        return (img, ws) if return_ws else img


def num_ws(resolution: int) -> int:
    """w's a synthesis network of ``resolution`` takes: two per block but the 4x4 one's single conv, and
    the last toRGB's."""
    return 2 * int(math.log2(resolution)) - 2


@NETS.register("stylegan2_decoder", role="decoder", family="stylegan2", fixed_size=True, takes=("vector", "wplus"),
               recipe_init=False, source=("stylegan2_g", "", "stylegan2"),
               options=lambda c: {"z_dim": c["z_dim"], "w_dim": c["z_dim"], "resolution": c["size"],
                                  "channels": c["out_ch"], "channel_base": c["ngf"] * 512,
                                  "channel_max": c["ngf"] * 8})
class StyleDecoder(Generator):
    """StyleGAN2 synthesis from a z (vector) or W+ code; starts from `translate train --recipe stylegan2` weights.

    The generator as the decoder of a composed translator: constant noise when it translates
    (deterministic), random noise while the translator trains (as pSp's training draws it).

    It takes a ``vector`` code as z (through the mapping network) or a ``wplus`` code, one style
    offset per layer from the average w (pSp's encoders predict offsets, so an untrained encoder
    gives the average image). Its keys are the generator's: a zoo StyleGAN2's weights load as they
    are, and the average w it was trained with (``mapping.w_avg``) is no longer updated.
    """

    random_noise = False  # set by the composed translator: True while it trains (pSp's randomize_noise)

    def forward(self, code: Tensor) -> Tensor:  # type: ignore[override]
        if code.dim() == 2:
            ws = self.mapping(code).unsqueeze(1).repeat(1, self.num_ws, 1)
        else:
            ws = self.mapping.w_avg.to(code.dtype) + code
        img = self.synthesis(ws, "random" if self.random_noise else "const")
        return img if self.training else img.clamp(-1, 1)


class DiscriminatorBlock(nn.Module):
    """Residual block: two 3x3 convs (the second halves the size) plus a 1x1 halving skip, both
    scaled by sqrt(1/2) so the sum keeps unit variance."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        half = math.sqrt(0.5)
        self.conv0 = EqualConv2d(in_ch, in_ch, 3, activation=True)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3, down=True, activation=True, out_gain=half)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False, down=True, out_gain=half)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.conv1(self.conv0(x))


@NETS.register("stylegan2_d", role="discriminator", family="stylegan2", recipe_init=False, power_of_two=8)
class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with minibatch stddev; initialises itself.

    Image -> one logit per sample, shape (N, 1)."""

    def __init__(self, resolution: int = 256, channels: int = 3, channel_base: int = 32768, channel_max: int = 512,
                 mbstd_group: int = 4) -> None:
        check_resolution(resolution)
        super().__init__()
        self.resolution, self.channels = resolution, channels
        widths = channel_counts(resolution, channel_base, channel_max)
        self.fromrgb = EqualConv2d(channels, widths[resolution], 1, activation=True)
        self.blocks = nn.Sequential(*(DiscriminatorBlock(widths[res], widths[res // 2])
                                      for res in sorted(widths, reverse=True) if res > 4))
        c = widths[4]
        self.mbstd = MinibatchStdDev(mbstd_group)
        self.conv = EqualConv2d(c + 1, c, 3, activation=True)
        self.fc = EqualLinear(c * 16, c, activation=True)
        self.out = EqualLinear(c, 1)

    def forward(self, img: Tensor) -> Tensor:
        x = self.blocks(self.fromrgb(img))
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1)))

