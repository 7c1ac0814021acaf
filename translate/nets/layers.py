"""Normalization, weight initialization and size checks shared by the network families.

The norm choice and the initialization follow the reference (junyanz/pytorch-CycleGAN-and-pix2pix),
so that a network built here has the reference's parameters, buffers and starting statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translate.core.errors import TranslateError
from translate.core.registry import unknown_name_message

NORMS = ("instance", "batch", "none")
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")


def _check_norm(kind: str) -> None:
    if kind not in NORMS:
        raise TranslateError(unknown_name_message("norm", kind, NORMS))


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """Return a ``channels -> module`` factory for ``instance``, ``batch`` or ``none``.

    ``none`` yields :class:`nn.Identity` rather than nothing, so every family keeps the same
    layer indices (and thus the same state-dict keys) whatever the norm.
    """
    _check_norm(kind)
    if kind == "instance":
        # No learnable affine and no running statistics: normalization is always per image.
        return lambda ch: nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)
    if kind == "batch":
        return lambda ch: nn.BatchNorm2d(ch, affine=True, track_running_stats=True)
    return lambda ch: nn.Identity()


def _pad_as_is(pad: nn.ReflectionPad2d | nn.ReplicationPad2d, x: Tensor) -> Tensor | None:
    """Padding under CPU autocast, in the input's own dtype. CPU autocast casts a reflection or
    replication pad's input to fp32, and the conv after it casts back to bf16: two copies of every
    padded map, for nothing (a pad moves values, it computes none). CycleGAN's bf16 step on a
    2-core Zen5 spent 0.49 s of 5.35 in such copies. None where autocast is off (the usual path)."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None
    with torch.autocast("cpu", enabled=False):
        return F.pad(x, pad.padding, mode="reflect" if isinstance(pad, nn.ReflectionPad2d) else "replicate")


class _PadAnywhere:
    """What both pads below add to torch's: the input's dtype under CPU autocast (:func:`_pad_as_is`),
    and, where CUDA's deterministic mode has no deterministic backward for the pad (it raises), the
    same padding as two index_selects, whose backward has one. Same values and gradients; elsewhere
    torch's own kernel runs. ``_index(n, before, after, device)``: each padded position's source."""

    def forward(self, x: Tensor) -> Tensor:
        # A mixin: only ever the first base of the two torch pads below (declaring their
        # ``padding`` here would clash with the type each of torch's classes gives it).
        pad = cast("nn.ReflectionPad2d | nn.ReplicationPad2d", self)
        if (y := _pad_as_is(pad, x)) is not None:
            return y
        if not (x.is_cuda and x.requires_grad and torch.are_deterministic_algorithms_enabled()):
            return super().forward(x)  # type: ignore[misc]  # the torch pad after this mixin in the MRO
        left, right, top, bottom = pad.padding
        rows = self._index(x.shape[-2], top, bottom, x.device)
        cols = self._index(x.shape[-1], left, right, x.device)
        return x.index_select(-2, rows).index_select(-1, cols)

    @staticmethod
    def _index(n: int, before: int, after: int, device: torch.device) -> Tensor:
        raise NotImplementedError


class ReflectionPad2d(_PadAnywhere, nn.ReflectionPad2d):
    """``nn.ReflectionPad2d`` usable under ``torch.use_deterministic_algorithms`` on CUDA, and in
    the input's dtype under CPU autocast (:class:`_PadAnywhere`)."""

    @staticmethod
    def _index(n: int, before: int, after: int, device: torch.device) -> Tensor:
        return _reflect_index(n, before, after, device)


class ReplicationPad2d(_PadAnywhere, nn.ReplicationPad2d):
    """``nn.ReplicationPad2d``, as :class:`ReflectionPad2d`."""

    @staticmethod
    def _index(n: int, before: int, after: int, device: torch.device) -> Tensor:
        return torch.arange(-before, n + after, device=device).clamp(0, n - 1)


def _reflect_index(n: int, before: int, after: int, device: torch.device) -> Tensor:
    """Source index of each padded position: ``[before..1] + [0..n-1] + [n-2..n-1-after]``."""
    i = torch.arange(-before, n + after, device=device).abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def _binomial(taps: list[float], channels: int) -> Tensor:
    """The separable filter ``taps`` x ``taps``, summing to 1, once per channel: (C, 1, k, k)."""
    a = torch.tensor(taps)
    filt = a[:, None] * a[None, :]
    return (filt / filt.sum()).expand(channels, 1, -1, -1).clone()


class BlurDown(nn.Module):
    """Anti-aliased 2x downsampling (Zhang 2019, "Making Convolutional Networks Shift-Invariant
    Again"), as the CUT code's ``Downsample``: reflect-pad 1, blur each channel with [1, 2, 1] x
    [1, 2, 1] / 16, keep every second pixel. A stride-1 conv in front of it replaces a strided one.
    The filter is a buffer named ``filt``, as there, so the CUT code's checkpoints load as they are."""

    filt: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pad = ReflectionPad2d(1)
        self.register_buffer("filt", _binomial([1.0, 2.0, 1.0], channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(self.pad(x), self.filt, stride=2, groups=x.shape[1])


class BlurUp(nn.Module):
    """Anti-aliased 2x upsampling, as the CUT code's ``Upsample``: replicate-pad 1, a transposed
    conv of stride 2 with [1, 3, 3, 1] x [1, 3, 3, 1] / 64 x 4 per channel (each output pixel a
    weighted mean of its neighbours), the padding's rows and columns cropped. A stride-1 conv after
    it replaces a transposed one. Its buffer is ``filt`` too."""

    filt: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pad = ReplicationPad2d(1)
        self.register_buffer("filt", _binomial([1.0, 3.0, 3.0, 1.0], channels) * 4)

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv_transpose2d(self.pad(x), self.filt, stride=2, padding=2, groups=x.shape[1])
        return y[:, :, 1:-1, 1:-1]  # 2H + 2 -> 2H


def group_norm(channels: int) -> nn.GroupNorm:
    """Group norm with up to 8 groups: per image, so an output never depends on the rest of the batch."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def uses_bias(kind: str) -> bool:
    """Whether convolutions followed by this norm carry a bias.

    The reference only adds biases in front of instance norm: batch norm's own shift makes a bias
    redundant, and with ``none`` the reference also leaves them out (its test is "is it instance").
    """
    _check_norm(kind)
    return kind == "instance"


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialize ``net`` in place as the reference's ``init_weights`` does; returns ``net``.

    Conv/ConvTranspose/Linear weights follow ``init_type`` (``kaiming`` ignores ``gain``, as in
    the reference) and their biases become 0; BatchNorm2d weights are drawn from N(1, gain) and
    their biases become 0. Instance norm has nothing to initialize.
    """
    if init_type not in INIT_TYPES:
        raise TranslateError(unknown_name_message("init type", init_type, INIT_TYPES))

    def init_module(m: nn.Module) -> None:
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and m.weight is not None:
            if init_type == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)

    net.apply(init_module)
    return net


def power_of_two(n: int, minimum: int = 1) -> bool:
    """True if ``n`` is a power of two no smaller than ``minimum`` (resolutions halved down to 4x4)."""
    return n >= minimum and n & (n - 1) == 0
