"""Winograd F(4x4, 3x3) convolution for the CPU in fp32: ``use_winograd(net)`` swaps eligible 3x3
stride-1 ``nn.Conv2d`` layers for :class:`WinogradConv2d`, same parameters and state-dict keys."""

# Why: a 4x4 output tile costs 36 multiplies per (in, out) channel pair instead of 144, so the 256-ch
# 3x3 convs of the ResNet blocks (18 of them, 88% of resnet_9blocks' FLOPs at 256x256) become one
# batched matmul (36 of 256x256 @ 256x256 per image) plus transforms. PyTorch's oneDNN path runs
# them as direct convolutions, and without native bf16 fp32 is what the CPU has.
# Measured (AMD EPYC, AVX2 only, 2 cores, torch 2.14.1, medians of 11-21 interleaved runs; a busy
# shared machine, so +-10%), one conv (1,256,66,66)->(1,256,64,64) forward: F.conv2d 37-39 ms;
# the prototype (unfold + 36x36 Kronecker matmuls) 24-28 ms; this file 20-23 ms: batched matmul
# 12.5 (~100 GFLOP/s, as fast as MKL's sgemm goes here), NHWC copy 1.9, rows transform (matmul) 1.3,
# columns transform (12 adds over 256-float runs) 2.3, output transform (two matmuls) 2.0, NCHW copy
# 2.6, weight check 0.5. Relative error vs float64 2.3e-6 (F.conv2d 8.6e-7). bench/winograd.py
# has forward+backward and the whole generator (1.3-1.4x faster).
# Variants that lost (same conv, ms): the separable transforms as adds on NCHW views, 6.0 in and
# 6.1 out (stride-4 and 16-float runs vectorize badly, 3x slower per element than contiguous);
# oneDNN conv2d with the 36 transform kernels as the input transform, 4.7 (as two separable convs
# 6.4), conv_transpose2d as the output transform, 23; batched 6x6 matmuls per tile column, 2.5;
# output transform ordered for a cheaper NCHW copy (6.0 vs 3.5: MKL is slow at 4-wide outputs);
# channels_last outputs (conv 18.2 vs 19.6, but the whole generator 607 vs 580 ms: norm, pad and
# the residual add do worse on them); smaller chunks (128 tiles 24.0, 64 tiles 28.4).

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TypeGuard, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from translate.core import devices

__all__ = ["WinogradConv2d", "use_winograd", "winograd_pays"]

# F(4, 3) on the points 0, +-1, +-2, inf (Lavin & Gray 2016): y = A^T [(G g G^T) * (B^T d B)] A.
_BT64 = torch.tensor(
    [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    dtype=torch.float64,
)
_G64 = torch.tensor(
    [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    dtype=torch.float64,
)
_AT64 = torch.tensor(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    dtype=torch.float64,
)
_BT = _BT64.float()
_AT = _AT64.float().contiguous()
_A = _AT64.t().float().contiguous()  # (6, 4): the transpose of the output transform (backward)
_KG = torch.kron(_G64, _G64).float()  # (36, 9): 3x3 kernel -> 6x6 transformed kernel, as one matmul
_KG_FLIP = _KG.flip(1).contiguous()  # the same for the kernel rotated by 180 degrees (input gradient)
_CHUNK_TILES = 256  # tiles per chunk: a 64x64 map in one, fewer tiles make the matmuls slower
_BIAS_AT = 7  # M[1, 1]: A^T e_1 e_1^T A is all ones, so a bias added there reaches all 16 outputs


def winograd_pays(device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32) -> bool:
    """Whether :func:`use_winograd` is worth it for nets run on ``device`` in ``dtype``: fp32 on a CPU
    without native bf16 (AVX2), where the 256-ch convs run 1.6-1.8x faster. Elsewhere it would fall
    back to F.conv2d anyway (other devices, dtypes), or is unmeasured (AVX512/AMX CPUs)."""
    return device.type == "cpu" and dtype == torch.float32 and not devices.cpu_bf16_native()


class _Scratch(threading.local):
    """Per-thread buffers for the intermediates, reused from call to call. A fresh 10-40 MB tensor
    per conv is page-faulted in each time (glibc returns big blocks to the OS): a 128x128 conv took
    118-137 ms so, 85-95 ms with these buffers. They hold ~40 MB at 256 channels (chunks of
    _CHUNK_TILES tiles bound them), kept for the thread's life."""

    def __init__(self) -> None:
        self.bufs: dict[str, Tensor] = {}

    def get(self, name: str, *shape: int) -> Tensor:
        n = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < n:
            with torch.inference_mode(False):  # usable in and out of inference mode
                buf = self.bufs[name] = torch.empty(n)
        return buf[:n].view(shape)


_scratch = _Scratch()


def _transform_weight(w: Tensor, scratch: bool = False) -> Tensor:
    """(K, C, 3, 3) -> U (36, K, C): U[i] = (G w G^T)[i] for each channel pair (scratch if asked)."""
    K, C = w.shape[:2]
    U = _scratch.get("U", 36, K * C) if scratch else w.new_empty(36, K * C)
    return torch.mm(_KG, w.reshape(K * C, 9).t(), out=U).view(36, K, C)


def _transform_weight_rot(w: Tensor) -> Tensor:
    """U of the kernel the input gradient is convolved with: channels swapped, rotated 180 degrees,
    as (36, C, K) (scratch)."""
    K, C = w.shape[:2]
    U = _scratch.get("U", 36, K * C)
    return torch.mm(_KG_FLIP, w.reshape(K * C, 9).t(), out=U).view(36, K, C).transpose(1, 2)  # bmm takes it so


def _bt_columns(d: list[Tensor], out: Tensor, a: Tensor, b: Tensor) -> None:
    """out[i] = sum_j BT[i, j] d[j], as 12 adds (BT has 2-4 nonzeros a row); a, b: scratch."""
    d0, d1, d2, d3, d4, d5 = d
    torch.add(d4, d0, alpha=4, out=out[0])
    out[0].add_(d2, alpha=-5)
    torch.add(d5, d1, alpha=4, out=out[5])
    out[5].add_(d3, alpha=-5)
    torch.add(d4, d2, alpha=-4, out=a)
    torch.add(d3, d1, alpha=-4, out=b)
    torch.add(a, b, out=out[1])
    torch.sub(a, b, out=out[2])
    torch.sub(d4, d2, out=a)
    torch.sub(d3, d1, out=b)
    torch.add(a, b, alpha=2, out=out[3])
    torch.add(a, b, alpha=-2, out=out[4])


def _chunks(N: int, th: int, tw: int) -> list[tuple[int, int, int, int]]:
    """(n0, n1, s0, s1): samples n0:n1, tile rows s0:s1, about _CHUNK_TILES tiles each."""
    if th * tw >= _CHUNK_TILES:
        c = min(th, max(1, round(th * tw / _CHUNK_TILES)))  # chunks per sample
        r = -(-th // c)  # rows per chunk
        return [(n, n + 1, s, min(s + r, th)) for n in range(N) for s in range(0, th, r)]
    k = max(1, _CHUNK_TILES // (th * tw))
    return [(n, min(n + k, N), 0, th) for n in range(0, N, k)]


def _input_transform(x: Tensor, pad: int, tw: int, n0: int, n1: int, s0: int, s1: int) -> Tensor:
    """x (N, C, H0, W0), zero-padded by ``pad`` (and on the bottom/right up to the tile grid) ->
    V (36, (n1-n0)*(s1-s0)*tw, C): the 6x6 input tiles (stride 4) of samples n0:n1, tile rows
    s0:s1, transformed (B^T d B). V is scratch: used up before the next call.

    Channels go last first, so that the per-tile sums run over 256-float rows instead of 6-float
    windows of an NCHW row (3x slower as torch ops). Rows: one matmul over the windows of 6 rows
    (overlapping views); columns: adds over stride-4 views."""
    N, C, H0, W0 = x.shape
    nn_, r = n1 - n0, s1 - s0
    wq, r0, r1 = 4 * tw + 2, 4 * s0, 4 * s1 + 2  # padded columns, padded rows r0:r1
    xc = x.permute(0, 2, 3, 1)
    if pad == 0 and wq == W0 and r1 <= H0 and xc.is_contiguous():  # already NHWC (channels_last)
        xq = xc[n0:n1, r0:r1]
    else:
        xq = _scratch.get("xq", nn_, r1 - r0, wq, C)
        a, b = max(r0, pad), min(r1, pad + H0)  # padded rows that hold data
        inner = xq[:, a - r0 : b - r0]
        for part in (xq[:, : a - r0], xq[:, b - r0 :], inner[:, :, :pad], inner[:, :, pad + W0 :]):
            if part.numel():
                part.zero_()
        inner[:, :, pad : pad + W0].copy_(xc[n0:n1, a - pad : b - pad])
    rows = _scratch.get("rows", nn_, r, 6, wq, C)
    for i in range(nn_):
        win = xq[i].as_strided((r, 6, wq * C), (4 * wq * C, wq * C, 1))
        torch.matmul(_BT, win, out=rows[i].view(r, 6, wq * C))
    V = _scratch.get("V", 6, 6, nn_, r, tw, C)
    src = rows.permute(2, 0, 1, 3, 4)  # (6, n, r, wq, C)
    tmp_a, tmp_b = _scratch.get("a", 6, nn_, r, tw, C), _scratch.get("b", 6, nn_, r, tw, C)
    _bt_columns([src[:, :, :, j : j + 4 * tw : 4] for j in range(6)], V.transpose(0, 1), tmp_a, tmp_b)
    return V.view(36, nn_ * r * tw, C)


def _winograd(x: Tensor, U: Tensor, bias: Tensor | None, pad: int) -> Tensor:
    """conv2d(x, w, bias, padding=pad) for a 3x3 kernel given as U (36, K, C); no autograd.

    In chunks of about _CHUNK_TILES tiles, which bounds the scratch memory (and keeps it in cache)."""
    N, C, H0, W0 = x.shape
    K = U.shape[1]
    H, W = H0 + 2 * pad - 2, W0 + 2 * pad - 2
    th, tw = -(-H // 4), -(-W // 4)
    # Output in the input's memory format, as F.conv2d does.
    cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    Yt = x.new_empty(N, th, 4, tw, 4, K) if cl else x.new_empty(N, K, th, 4, tw, 4)
    for n0, n1, s0, s1 in _chunks(N, th, tw):
        V = _input_transform(x, pad, tw, n0, n1, s0, s1)  # (36, P, C)
        P = V.shape[1]
        M = _scratch.get("M", 36, P, K) if cl else _scratch.get("M", 36, K, P)
        if cl:
            torch.bmm(V, U.transpose(1, 2), out=M)
            if bias is not None:
                M[_BIAS_AT].add_(bias)
        else:
            torch.bmm(U, V.transpose(1, 2), out=M)
            if bias is not None:
                M[_BIAS_AT].add_(bias.view(K, 1))
        T = _scratch.get("V", 6, 4, K * P)  # V is used up
        torch.matmul(_AT, M.view(6, 6, K * P), out=T)  # along w
        O = _scratch.get("M", 4, 4 * K * P)  # M is used up
        torch.mm(_AT, T.view(6, 4 * K * P), out=O)  # along h
        if cl:
            Yt[n0:n1, s0:s1].copy_(O.view(4, 4, n1 - n0, s1 - s0, tw, K).permute(2, 3, 0, 4, 1, 5))
        else:
            Yt[n0:n1, :, s0:s1].copy_(O.view(4, 4, K, n1 - n0, s1 - s0, tw).permute(3, 2, 4, 0, 5, 1))
    Y = Yt.view(N, 4 * th, 4 * tw, K).permute(0, 3, 1, 2) if cl else Yt.view(N, K, 4 * th, 4 * tw)
    if (4 * th, 4 * tw) != (H, W):
        fmt = torch.channels_last if cl else torch.contiguous_format
        Y = Y[:, :, :H, :W].contiguous(memory_format=fmt)
    return Y


def _output_transform_t(dYt: Tensor, n0: int, n1: int, s0: int, s1: int) -> Tensor:
    """The transpose of the output transform: dYt (N, K, th, 4, tw, 4), tile rows s0:s1 of samples
    n0:n1 -> dM (36, K, P), A dY A^T per 4x4 tile (scratch)."""
    _, K, _, _, tw, _ = dYt.shape
    nn_, r = n1 - n0, s1 - s0
    P = nn_ * r * tw
    q = _scratch.get("dY", 4, 4, K, nn_, r, tw)
    q.permute(3, 2, 4, 0, 5, 1).copy_(dYt[n0:n1, :, s0:s1])
    T = _scratch.get("dT", 6, 4 * K * P)
    torch.mm(_A, q.view(4, 4 * K * P), out=T)  # along h
    dM = _scratch.get("dM", 6, 6, K * P)
    torch.matmul(_A, T.view(6, 4, K * P), out=dM)  # along w
    return dM.view(36, K, P)


class _WinogradFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, U: Tensor, pad: int) -> Tensor:
        ctx.pad = pad
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return _winograd(x, U, bias, pad)

    @staticmethod
    @once_differentiable
    def backward(ctx, dY: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        pad = ctx.pad
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            # The input gradient is the full convolution of dY with the rotated kernel: a Winograd
            # conv of dY padded by 2, cropped back by the forward's padding.
            dx = _winograd(dY, _transform_weight_rot(weight), None, 2)
            if pad:
                dx = dx[:, :, pad:-pad, pad:-pad].contiguous()
        if ctx.needs_input_grad[1]:
            # dU = dM V^T in the transformed domain (batched matmuls, as the forward's), then
            # dw = G^T dU G; V is recomputed from x rather than kept, so memory is as F.conv2d's.
            N, K, H, W = dY.shape
            th, tw = -(-H // 4), -(-W // 4)
            dYq = dY if (4 * th, 4 * tw) == (H, W) else F.pad(dY, (0, 4 * tw - W, 0, 4 * th - H))
            dYt = dYq.unflatten(2, (th, 4)).unflatten(4, (tw, 4))
            dU = _scratch.get("dU", 36, K, x.shape[1])
            for i, (n0, n1, s0, s1) in enumerate(_chunks(N, th, tw)):
                dM = _output_transform_t(dYt, n0, n1, s0, s1)
                dU.baddbmm_(dM, _input_transform(x, pad, tw, n0, n1, s0, s1), beta=int(i > 0))
            dw = torch.mm(_KG.t(), dU.view(36, -1)).t().reshape(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dY.sum((0, 2, 3))
        return dx, dw, db, None, None


def _eligible(conv: nn.Module) -> TypeGuard[nn.Conv2d]:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding in ((0, 0), (1, 1))
        and conv.padding_mode in ("zeros", "reflect")
    )


class WinogradConv2d(nn.Module):
    """A 3x3, stride-1 ``nn.Conv2d`` computed by Winograd F(4x4, 3x3) on the CPU in fp32 (output
    within ~2e-6 relative of F.conv2d; gradients supported). Other devices and dtypes run F.conv2d.

    Shares ``weight`` and ``bias`` with the conv it is built from (same state-dict keys). Where no
    weight gradient is recorded (no_grad / inference_mode, or a frozen weight) the transformed weight
    (36*K*C floats, 4x the weight) is cached with a copy of the weight it came from, and recomputed
    when the weight's version, storage or values differ.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        if not _eligible(conv):
            raise ValueError(f"not a 3x3 stride-1 dilation-1 ungrouped conv with padding 0/1: {conv}")
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.padding: int = cast(tuple[int, int], conv.padding)[0]  # (0, 0) or (1, 1): _eligible
        self.padding_mode = conv.padding_mode
        self.weight = conv.weight
        if conv.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = conv.bias
        self._cache: tuple[tuple, Tensor, Tensor] | None = None  # (key, weight copy, U)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> WinogradConv2d:
        return cls(conv)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), padding={self.padding}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s + ("" if self.bias is not None else ", bias=False")

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> WinogradConv2d:
        self._cache = None  # .to(), .cuda(), .double(), ...: the cached weight would be stale
        return super()._apply(fn, recurse)

    def _transformed(self) -> Tensor:
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return _transform_weight(w.detach(), scratch=True)  # training: the weight changes every step
        # In-place writes through ``weight.data`` leave ``_version`` as it was, so the cached copy of
        # the weight is compared too (0.4 ms for 256x256x3x3, against ~20 ms for the conv).
        key = (w._version, w.data_ptr(), torch.is_inference_mode_enabled())
        c = self._cache
        if c is None or c[0] != key or not torch.equal(c[1], w):
            c = self._cache = (key, w.detach().clone(), _transform_weight(w.detach()))
        return c[2]

    def forward(self, x: Tensor) -> Tensor:
        w, pad = self.weight, self.padding
        if self.padding_mode == "reflect" and pad:  # as nn.Conv2d: reflect-padded, then a conv without padding
            x, pad = F.pad(x, (pad, pad, pad, pad), mode="reflect"), 0
        if (
            torch.compiler.is_compiling()  # a traced graph runs the compiler's own conv
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or w.device.type != "cpu"
            or w.dtype != torch.float32
            or x.dim() not in (3, 4)
            or x.numel() == 0
            or x.shape[-1] + 2 * pad < 3
            or x.shape[-2] + 2 * pad < 3
        ):
            return F.conv2d(x, w, self.bias, padding=pad)  # nn.Conv2d's own
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        U = self._transformed()
        if torch.is_grad_enabled() and (
            x.requires_grad or w.requires_grad or (self.bias is not None and self.bias.requires_grad)
        ):
            y = _WinogradFn.apply(x, w, self.bias, U, pad)
        else:
            y = _winograd(x, U, None if self.bias is None else self.bias.detach(), pad)
        return y.squeeze(0) if unbatched else y


def winograd_convs(net: nn.Module, min_channels: int = 128) -> int:
    """How many convs below ``net`` :func:`use_winograd` would replace."""
    return sum(_eligible(m) and min(m.in_channels, m.out_channels) >= min_channels for m in net.modules())


def use_winograd(net: nn.Module, min_channels: int = 128) -> int:
    """Replace, in place, every eligible ``nn.Conv2d`` below ``net`` whose in and out channels are
    both >= ``min_channels`` by a :class:`WinogradConv2d` (same parameters); return how many.

    The transforms grow with the channels, the matmul with their square, so narrow convs lose: at
    128x128 (same machine as above) 64 ch ran 10.4 ms direct vs 15.7 Winograd, 96 ch 31.0 vs 29.3,
    128 ch 37.2 vs 33.5 (1.1x), 256 ch 1.7x. Only the ResNet generators have eligible convs (256 ch
    at ngf 64)."""
    n = 0
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if _eligible(child) and min(child.in_channels, child.out_channels) >= min_channels:
                setattr(module, name, WinogradConv2d.from_conv(child))
                n += 1
    return n
