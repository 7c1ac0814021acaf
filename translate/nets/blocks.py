"""Small blocks of the Karras GANs (PGGAN, StyleGAN2), one copy for both families.

Equalised learning rate (Karras et al. 2018): weights are stored N(0, 1) and scaled by ``gain / sqrt(fan_in)``
at run time, so Adam's step size means the same in every layer. PGGAN puts He's sqrt(2) into that scale,
StyleGAN2 multiplies it in after the activation (:func:`lrelu`); each family keeps its order, and so its numbers.
Resampling uses StyleGAN2's [1, 3, 3, 1] FIR filter as fixed depthwise (transposed) convolutions, which
autograd differentiates twice, as R1 and path-length regularisation need.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_GAIN = math.sqrt(2.0)  # keeps unit variance through leaky ReLU(0.2) (He et al.)


def lrelu(x: Tensor, gain: float = 1.0) -> Tensor:
    """StyleGAN2's leaky ReLU(0.2), variance-keeping; ``gain`` scales it further."""
    return F.leaky_relu(x, 0.2) * (LRELU_GAIN * gain)


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Each pixel's feature vector (or latent) scaled to unit mean square, so magnitudes cannot escalate."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def fir_kernel() -> Tensor:
    """The 4x4 [1, 3, 3, 1] binomial filter, summing to 1."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    return (k / k.sum()).view(1, 1, 4, 4)


def upsample2x(x: Tensor, kernel: Tensor) -> Tensor:
    """Zero-insertion upsampling filtered by ``kernel`` (x4 to keep the mean): bilinear-like."""
    c = x.shape[1]
    weight = (kernel * 4).to(x.dtype).repeat(c, 1, 1, 1)
    return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=c)


def downsample2x(x: Tensor, kernel: Tensor) -> Tensor:
    """Blur with ``kernel`` and keep every second pixel (anti-aliased halving)."""
    c = x.shape[1]
    return F.conv2d(x, kernel.to(x.dtype).repeat(c, 1, 1, 1), stride=2, padding=1, groups=c)


class EqualConv2d(nn.Module):
    """Same-padded conv with the equalised learning rate. ``down``: blurred and halved as StyleGAN2's
    official layers are (a kxk conv: blur, then the conv with stride 2; 1x1: blur and halve, then it);
    ``activation``: :func:`lrelu` after; ``out_gain``: the output's factor (StyleGAN2's residual halves)."""

    fir: Tensor | None  # the FIR filter where ``down``, else None

    def __init__(self, in_ch: int, out_ch: int, kernel: int, gain: float = 1.0, bias: bool = True,
                 down: bool = False, activation: bool = False, out_gain: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = gain / math.sqrt(in_ch * kernel * kernel)
        self.down, self.activation, self.out_gain = down, activation, out_gain
        self.register_buffer("fir", fir_kernel() if down else None, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        k = self.weight.shape[-1]
        if self.down and k > 1:
            # As StyleGAN2's official conv2d_resample: blur at full size (padded by k // 2 + 1), then
            # the kxk conv with stride 2; a conv after halving would see a coarser grid.
            c = x.shape[1]
            assert self.fir is not None  # registered where down
            x = F.conv2d(x, self.fir.to(x.dtype).repeat(c, 1, 1, 1), padding=k // 2 + 1, groups=c)
            x = F.conv2d(x, self.weight * self.scale, self.bias, stride=2)
        else:
            if self.down:  # a 1x1 conv: blur and halve first (the official fast path), then the conv
                assert self.fir is not None
                x = downsample2x(x, self.fir)
            x = F.conv2d(x, self.weight * self.scale, self.bias, padding=k // 2)
        if self.activation:
            return lrelu(x, self.out_gain)
        return x if self.out_gain == 1.0 else x * self.out_gain


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate. ``lr_mul`` < 1 slows it down (StyleGAN2's mapping
    net): weight and bias are stored divided by it. ``bias_init``: the bias's starting value."""

    def __init__(self, in_features: int, out_features: int, gain: float = 1.0, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.scale = gain * lr_mul / math.sqrt(in_features)
        self.lr_mul, self.activation = lr_mul, activation

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return lrelu(x) if self.activation else x


class MinibatchStdDev(nn.Module):
    """Appends the mean standard deviation of features over groups of samples as one more channel,
    so D can see a lack of variety (mode collapse) in a batch."""

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        # the largest group size dividing the batch, so any (last, or per-rank) batch size works
        g = next(size for size in range(min(self.group_size, n), 0, -1) if n % size == 0)
        y = x.float().reshape(g, n // g, c, h, w)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (n // g,)
        y = y.view(1, -1, 1, 1, 1).expand(g, -1, 1, h, w).reshape(n, 1, h, w)
        return torch.cat([x, y.to(x.dtype)], dim=1)
