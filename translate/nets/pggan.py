"""Progressive GAN networks (Karras et al. 2018, "Progressive Growing of GANs").

Both nets are built for the final ``resolution`` but run only up to the current phase: ``level`` 0
is 4x4, level ``k`` is ``4 * 2**k``. While a level fades in, its output is blended with the previous
level's (G: upsampled RGB of the previous block; D: its input average-pooled into the previous
level's from-RGB) by ``alpha`` going from 0 to 1. Level and alpha are buffers, so a weights file
says where training stopped and the exported generator draws at that stage.

As in the paper: weights are stored N(0, 1) and scaled at run time by He's constant (equalised
learning rate), G normalises every pixel's feature vector (pixel norm), D appends the minibatch
standard deviation before its last block, and widths follow ``min(fmap_base / 2**stage, fmap_max)``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.core.registry import NETS
from translate.nets.blocks import LRELU_GAIN, EqualConv2d, EqualLinear, MinibatchStdDev, pixel_norm
from translate.nets.layers import power_of_two


def num_levels(resolution: int) -> int:
    """Levels from 4x4 to ``resolution`` (a power of two >= 4)."""
    if not power_of_two(resolution, 4):
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    return int(math.log2(resolution)) - 1


def level_size(level: int) -> int:
    return 4 * 2**level


def _conv(in_ch: int, out_ch: int, kernel: int = 3) -> EqualConv2d:
    """A conv that a leaky ReLU follows: He's sqrt(2) is part of its weights' scale, as in the paper."""
    return EqualConv2d(in_ch, out_ch, kernel, gain=LRELU_GAIN)


def lrelu(x: Tensor) -> Tensor:
    """Plain leaky ReLU(0.2): the sqrt(2) that keeps the variance is in the conv before it."""
    return F.leaky_relu(x, 0.2)


def fade(old: Tensor, new: Tensor, alpha: float) -> Tensor:
    """``old + alpha * (new - old)``: a new level blended in. Under autocast the two branches can
    differ in dtype (CUDA's runs nearest upsampling in fp32 and convolutions in bf16), and lerp
    takes one dtype ("expected dtype float for `end`", step 600 of a bf16 run), so both go to the
    wider one."""
    dtype = torch.promote_types(old.dtype, new.dtype)
    return torch.lerp(old.to(dtype), new.to(dtype), alpha)


class PhaseMixin(nn.Module):
    """The ``level`` and ``alpha`` buffers plus Python copies (read every forward without a device sync)."""

    level: Tensor
    alpha: Tensor

    def _init_phase(self, levels: int) -> None:
        self.levels = levels
        self.register_buffer("level", torch.tensor(levels - 1, dtype=torch.long))
        self.register_buffer("alpha", torch.tensor(1.0))
        self._level, self._alpha = levels - 1, 1.0
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_phase())

    def _sync_phase(self) -> None:
        self._level, self._alpha = int(self.level), float(self.alpha)

    def set_phase(self, level: int, alpha: float) -> None:
        """Grow to ``level`` (0 = 4x4), with the new block blended in by ``alpha`` in [0, 1]."""
        if not 0 <= level < self.levels or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"phase ({level}, {alpha}) outside levels 0..{self.levels - 1}, alpha 0..1")
        self.level.fill_(level)
        self.alpha.fill_(alpha)
        self._level, self._alpha = level, float(alpha)

    @property
    def phase(self) -> tuple[int, float]:
        """(level, alpha) the net runs at."""
        return self._level, self._alpha


def _widths(fmap_base: int, fmap_max: int):
    return lambda stage: max(1, min(fmap_base // 2**stage, fmap_max))


@NETS.register("pggan_g", role="generator", family="pggan", recipe_init=False, power_of_two=4)
class PGGANGenerator(PhaseMixin):
    """Progressive generator; build with ``init=False`` (it initialises itself, N(0, 1)).

    z -> image. ``forward`` draws at the current level and (by default) upsamples, nearest, to
    ``resolution``; in eval mode the output is clamped to [-1, 1] (training sees the paper's linear
    output)."""

    num_classes = 0

    def __init__(self, z_dim: int = 512, resolution: int = 32, channels: int = 3, fmap_base: int = 8192,
                 fmap_max: int = 512) -> None:
        super().__init__()
        self.z_dim, self.resolution, self.channels = z_dim, resolution, channels
        nf = _widths(fmap_base, fmap_max)
        levels = num_levels(resolution)
        self.dense = EqualLinear(z_dim, nf(1) * 16, gain=LRELU_GAIN / 4)  # as the official code
        blocks = [nn.ModuleList([_conv(nf(1), nf(1))])]
        for level in range(1, levels):
            blocks.append(nn.ModuleList([_conv(nf(level), nf(level + 1)), _conv(nf(level + 1), nf(level + 1))]))
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = nn.ModuleList([EqualConv2d(nf(level + 1), channels, 1) for level in range(levels)])
        self._init_phase(levels)

    def _block(self, level: int, x: Tensor) -> Tensor:
        if level == 0:
            x = pixel_norm(lrelu(self.dense(x).view(x.shape[0], -1, 4, 4)))
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        for conv in cast(nn.ModuleList, self.blocks[level]):  # a ModuleList of ModuleLists
            x = pixel_norm(lrelu(conv(x)))
        return x

    def forward(self, z: Tensor, label: Tensor | None = None, truncation: float = 1.0,
                upsample: bool = True) -> Tensor:
        """Images for latents ``z`` (N, z_dim). ``truncation`` scales the normalised latent (scaling
        z itself would be undone by the pixel norm); ``upsample=False`` returns the current level's
        size (what training feeds D). ``label`` is accepted for the zoo's interface and ignored."""
        level, alpha = self._level, self._alpha
        x = self._block(0, pixel_norm(z) * truncation)
        prev = x
        for i in range(1, level + 1):
            prev, x = x, self._block(i, x)
        out = self.to_rgb[level](x)
        if level > 0 and alpha < 1.0:
            skip = F.interpolate(self.to_rgb[level - 1](prev), scale_factor=2, mode="nearest")
            out = fade(skip, out, alpha)
        if upsample and out.shape[-1] != self.resolution:
            out = F.interpolate(out, size=(self.resolution, self.resolution), mode="nearest")
        return out if self.training else out.clamp(-1.0, 1.0)


@NETS.register("pggan_d", role="discriminator", family="pggan", recipe_init=False, power_of_two=4)
class PGGANDiscriminator(PhaseMixin):
    """Progressive critic with the minibatch standard deviation layer.

    Image at the current level's size -> one score per image (WGAN critic, no sigmoid)."""

    def __init__(self, resolution: int = 32, channels: int = 3, fmap_base: int = 8192, fmap_max: int = 512) -> None:
        super().__init__()
        self.resolution, self.channels = resolution, channels
        nf = _widths(fmap_base, fmap_max)
        levels = num_levels(resolution)
        self.from_rgb = nn.ModuleList([_conv(channels, nf(level + 1), 1) for level in range(levels)])
        self.mbstd = MinibatchStdDev()
        blocks = [nn.ModuleList([_conv(nf(1) + 1, nf(1))])]  # +1: the minibatch std map
        for level in range(1, levels):
            blocks.append(nn.ModuleList([_conv(nf(level + 1), nf(level + 1)), _conv(nf(level + 1), nf(level))]))
        self.blocks = nn.ModuleList(blocks)
        self.dense = EqualLinear(nf(1) * 16, nf(0), gain=LRELU_GAIN)
        self.out = EqualLinear(nf(0), 1)
        self._init_phase(levels)

    def _block(self, level: int, x: Tensor) -> Tensor:
        if level == 0:
            x = self.mbstd(x)
        for conv in cast(nn.ModuleList, self.blocks[level]):  # a ModuleList of ModuleLists
            x = lrelu(conv(x))
        if level == 0:
            return self.out(lrelu(self.dense(x.flatten(1))))
        return F.avg_pool2d(x, 2)

    def forward(self, x: Tensor) -> Tensor:
        level, alpha = self._level, self._alpha
        if x.shape[-1] != level_size(level):
            raise ValueError(f"D at level {level} takes {level_size(level)}x{level_size(level)} images, "
                             f"got {tuple(x.shape[-2:])}")
        h = self._block(level, lrelu(self.from_rgb[level](x)))
        if level > 0 and alpha < 1.0:
            skip = lrelu(self.from_rgb[level - 1](F.avg_pool2d(x, 2)))
            h = fade(skip, h, alpha)
        for i in range(level - 1, -1, -1):
            h = self._block(i, h)
        return h

