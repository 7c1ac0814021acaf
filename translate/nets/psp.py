"""pSp's encoder ("Encoding in Style", Richardson et al. 2021): an image to one style per synthesis
layer of a StyleGAN2 (W+), through a feature pyramid.

A convolutional backbone halves the image four times; a feature pyramid (lateral 1x1 convs, each
level plus the upsampled coarser one, as in FPN) gives three maps. As in the paper, the coarse
styles (the first 3 layers: pose, shape) are read from the smallest map, the medium ones (layers
3-6) from the middle one and the fine ones (colour, texture) from the largest. Each style has its
own small head: strided convs, a global average (any input size that is a multiple of 16 works),
and a linear layer to ``w_dim``. The styles are offsets from the generator's average w (the
decoder adds it), and the heads start small, so an untrained encoder gives the average image.

Group norm (per image) keeps the activations in range without batch statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.core.registry import NETS
from translate.nets.layers import group_norm
from translate.nets.stylegan2 import num_ws

COARSE, MEDIUM = 3, 7  # styles [0, 3) from the coarse map, [3, 7) from the medium one, the rest from the fine


def _conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    conv = (StridedConv if stride > 1 else nn.Conv2d)(c_in, c_out, 3, stride, 1)
    return [conv, group_norm(c_out), nn.LeakyReLU(0.2, True)]


class StridedConv(nn.Conv2d):
    """A 3x3 stride-2 conv (padding 1) that takes a 1x1 map as the 1x1 conv of its centre tap.

    The style heads halve their map twice whatever its size, so at a 32x32 input (the shipped
    recipe) the coarse heads convolve a 1x1 map, where the other eight taps only ever multiply
    padding: the result is the same, and their gradient is zero. Computed as a 3x3 conv, torch
    2.14.1's oneDNN weight-gradient kernel for native bf16 (CPUs with AVX512-BF16) leaves those
    eight gradients unwritten, whatever the memory held (NaN, 1e37) in about half of all calls,
    and Adam wrote it into the weights (tests/test_backbones.py). fp32, and bf16 emulated on AVX2,
    are right; so is every other conv of every recipe (tests/test_contracts.py compares each)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] == (1, 1):
            return F.conv2d(x, self.weight[:, :, 1:2, 1:2], self.bias)
        return super().forward(x)


class StyleHead(nn.Module):
    """A pyramid map -> one style: two stride-2 convs, the spatial mean, a linear layer."""

    def __init__(self, width: int, w_dim: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(*_conv(width, width, 2), *_conv(width, width, 2))
        self.fc = nn.Linear(width, w_dim)
        with torch.no_grad():
            self.fc.weight.mul_(0.1)  # start near the average w
            self.fc.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.convs(x).mean((2, 3)))


def _options(c: dict) -> dict:
    decoder = c["decoder"]  # the W+ it writes must fit the decoder's synthesis network
    return {"in_ch": c["in_ch"], "num_ws": num_ws(decoder["resolution"]), "w_dim": decoder["w_dim"], "nf": c["ngf"]}


@NETS.register("psp_encoder", role="encoder", family="stylegan2", size_multiple=16, gives="wplus",
               recipe_init=False, options=_options)
class PSPEncoder(nn.Module):
    """pSp's feature-pyramid encoder: an image to W+ style offsets for a StyleGAN2 decoder.

    (N, in_ch, H, W) -> (N, num_ws, w_dim) style offsets; H and W multiples of 16."""

    def __init__(self, in_ch: int = 3, num_ws: int = 14, w_dim: int = 512, nf: int = 32) -> None:
        super().__init__()
        self.num_ws, self.w_dim = num_ws, w_dim
        widths = [nf, nf * 2, nf * 4, nf * 8, nf * 8]  # at H, H/2, H/4 (fine), H/8 (medium), H/16 (coarse)
        self.stem = nn.Sequential(*_conv(in_ch, widths[0]))
        self.stages = nn.ModuleList(nn.Sequential(*_conv(a, b, 2), *_conv(b, b))
                                    for a, b in zip(widths, widths[1:], strict=False))
        top = widths[-1]
        self.lateral = nn.ModuleList([nn.Conv2d(widths[2], top, 1), nn.Conv2d(widths[3], top, 1)])
        self.heads = nn.ModuleList(StyleHead(top, w_dim) for _ in range(num_ws))

    def forward(self, x: Tensor) -> Tensor:
        feats = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        fine, medium, coarse = feats[1], feats[2], feats[3]
        medium = self.lateral[1](medium) + F.interpolate(coarse, size=medium.shape[-2:], mode="nearest")
        fine = self.lateral[0](fine) + F.interpolate(medium, size=fine.shape[-2:], mode="nearest")
        maps = [coarse if i < COARSE else medium if i < MEDIUM else fine for i in range(self.num_ws)]
        return torch.stack([head(m) for head, m in zip(self.heads, maps, strict=True)], 1)

