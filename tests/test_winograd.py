"""Winograd F(4x4, 3x3) convs: outputs and gradients against F.conv2d (in float64 as the reference),
the transformed-weight cache, fallbacks, and use_winograd on the ResNet generator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from translate.core.registry import create_net
from translate.nets import winograd
from translate.nets.winograd import WinogradConv2d, use_winograd, winograd_pays

TOL = 1e-5  # relative (norm of the difference over the norm of the float64 result)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).norm() / ref.norm()).item()


def make_conv(c_in: int, c_out: int, padding: int, mode: str, bias: bool) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=padding, padding_mode=mode, bias=bias)
    with torch.no_grad():  # a bias as large as the products, so an error in it would show
        if bias:
            conv.bias.normal_()
    return conv


SHAPES = [  # (batch, in ch, out ch, output H, W)
    (1, 3, 8, 5, 7),
    (3, 3, 8, 1, 1),
    (1, 64, 64, 8, 8),
    (3, 64, 64, 8, 12),
    (3, 64, 64, 5, 7),
]
PADDINGS = [(0, "zeros"), (1, "zeros"), (1, "reflect")]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("padding", "mode"), PADDINGS)
@pytest.mark.parametrize(("n", "c_in", "c_out", "h", "w"), SHAPES)
def test_matches_conv2d_with_gradients(n, c_in, c_out, h, w, padding, mode, bias) -> None:
    if mode == "reflect" and min(h, w) < 2:
        pytest.skip("reflect padding needs an input side >= 2")
    torch.manual_seed(0)
    conv = make_conv(c_in, c_out, padding, mode, bias)
    x = torch.rand(n, c_in, h + 2 - 2 * padding, w + 2 - 2 * padding) * 2 - 1
    g = torch.randn(n, c_out, h, w)

    ref_conv = make_conv(c_in, c_out, padding, mode, bias).double()
    ref_conv.load_state_dict(conv.state_dict())
    x64 = x.double().requires_grad_()
    y64 = ref_conv(x64)
    y64.backward(g.double())

    wconv = WinogradConv2d.from_conv(conv)
    x32 = x.clone().requires_grad_()
    y = wconv(x32)
    y.backward(g)
    assert y.shape == y64.shape and y.is_contiguous()
    assert rel(y.detach(), y64.detach()) < TOL
    assert rel(x32.grad, x64.grad) < TOL
    assert rel(conv.weight.grad, ref_conv.weight.grad) < TOL
    if bias:
        assert rel(conv.bias.grad, ref_conv.bias.grad) < TOL
    with torch.no_grad():  # the no-autograd path (cached weights)
        assert rel(wconv(x), y64.detach()) < TOL
    y32 = nn.Conv2d.forward(conv, x)  # and float32 F.conv2d agrees as closely
    assert rel(y.detach(), y32.detach().double()) < TOL


@pytest.mark.parametrize("chunk_tiles", [1, 5, 12])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_chunked(monkeypatch, chunk_tiles, layout) -> None:
    """Large inputs go in chunks of tile rows, small ones several samples a chunk: small chunks here."""
    monkeypatch.setattr(winograd, "_CHUNK_TILES", chunk_tiles)
    torch.manual_seed(0)
    conv = make_conv(8, 16, 1, "zeros", True)
    x = (torch.rand(3, 8, 13, 10) * 2 - 1).contiguous(memory_format=layout)
    ref_conv = make_conv(8, 16, 1, "zeros", True).double()
    ref_conv.load_state_dict(conv.state_dict())
    x64 = x.double().requires_grad_()
    y64 = ref_conv(x64)
    g = torch.randn_like(y64)
    y64.backward(g)
    x32 = x.clone().requires_grad_()
    y = WinogradConv2d.from_conv(conv)(x32)
    y.backward(g.float())
    assert y.is_contiguous(memory_format=layout)
    assert rel(y.detach(), y64.detach()) < TOL
    assert rel(x32.grad, x64.grad) < TOL
    assert rel(conv.weight.grad, ref_conv.weight.grad) < TOL


def test_input_gradient_with_a_frozen_weight() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1).requires_grad_(False)
    wconv = WinogradConv2d.from_conv(conv)
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    wconv(x).square().sum().backward()
    x64 = x.detach().double().requires_grad_()
    F.conv2d(x64, conv.weight.double(), conv.bias.double(), padding=1).square().sum().backward()
    assert rel(x.grad, x64.grad) < TOL
    assert wconv._cache is not None  # no weight gradient: the transformed weight was cached


def test_shares_parameters_and_state_dict() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1)
    wconv = WinogradConv2d.from_conv(conv)
    assert wconv.weight is conv.weight and wconv.bias is conv.bias
    assert list(wconv.state_dict()) == list(conv.state_dict()) == ["weight", "bias"]
    no_bias = WinogradConv2d.from_conv(nn.Conv2d(8, 8, 3, bias=False))
    assert list(no_bias.state_dict()) == ["weight"] and no_bias.bias is None


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(8, 8, 5),
        nn.Conv2d(8, 8, 3, stride=2),
        nn.Conv2d(8, 8, 3, dilation=2),
        nn.Conv2d(8, 8, 3, groups=2),
        nn.Conv2d(8, 8, 3, padding=2),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"),
        nn.ConvTranspose2d(8, 8, 3),
    ],
)
def test_ineligible_convs_are_refused(conv) -> None:
    with pytest.raises(ValueError):
        WinogradConv2d.from_conv(conv)
    assert use_winograd(nn.Sequential(conv), min_channels=1) == 0


def test_cache_follows_in_place_changes_of_the_weight() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    wconv = WinogradConv2d.from_conv(conv)
    x = torch.randn(2, 16, 8, 8)

    def check() -> None:
        with torch.no_grad():
            assert rel(wconv(x), F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)) < TOL

    check()
    cached = wconv._cache[2]
    check()
    assert wconv._cache[2] is cached  # reused while the weight is unchanged
    conv.weight.data.add_(1)  # through .data: the version counter does not move
    check()
    with torch.no_grad():
        conv.weight.mul_(0.5)
    check()
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    wconv(x).square().mean().backward()
    opt.step()
    check()
    conv.load_state_dict({"weight": torch.randn(16, 16, 3, 3), "bias": torch.randn(16)})
    check()
    with torch.inference_mode():
        assert rel(wconv(x), F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)) < TOL


def test_training_steps_match_conv2d() -> None:
    """Three SGD steps through a Winograd conv follow the same weights as through nn.Conv2d."""
    torch.manual_seed(0)
    a = nn.Conv2d(8, 8, 3, padding=1)
    b = nn.Conv2d(8, 8, 3, padding=1)
    b.load_state_dict(a.state_dict())
    wb = WinogradConv2d.from_conv(b)
    oa, ob = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    x, t = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    for _ in range(3):
        for net, opt in ((a, oa), (wb, ob)):
            opt.zero_grad()
            F.mse_loss(net(x), t).backward()
            opt.step()
    assert rel(b.weight.detach(), a.weight.detach().double()) < TOL


def test_channels_last_and_unbatched_inputs() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3)
    wconv = WinogradConv2d.from_conv(conv)
    x = torch.randn(2, 8, 10, 10)
    ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double())
    with torch.no_grad():
        y = wconv(x.contiguous(memory_format=torch.channels_last))
        assert y.is_contiguous(memory_format=torch.channels_last)  # as F.conv2d's output
        assert rel(y, ref) < TOL
        assert rel(wconv(x[0]), ref[0]) < TOL


def test_falls_back_for_other_dtypes() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
    wconv = WinogradConv2d.from_conv(conv)
    x = torch.randn(1, 8, 6, 6)
    for dtype in (torch.float64, torch.bfloat16):
        conv.to(dtype)
        with torch.no_grad():
            assert torch.equal(wconv(x.to(dtype)), nn.Conv2d.forward(conv, x.to(dtype)))
    wconv.float()  # back to fp32: Winograd again, with the cache rebuilt
    assert wconv._cache is None
    with torch.no_grad():
        ref = F.conv2d(F.pad(x.double(), (1, 1, 1, 1), mode="reflect"), conv.weight.double(), conv.bias.double())
        assert rel(wconv(x), ref) < TOL
    with pytest.raises(RuntimeError):  # too small for a 3x3 kernel: F.conv2d's own error
        WinogradConv2d.from_conv(nn.Conv2d(8, 8, 3))(torch.randn(1, 8, 2, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_falls_back_on_cuda() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1).cuda()
    wconv = WinogradConv2d.from_conv(conv)
    x = torch.randn(1, 8, 6, 6, device="cuda")
    assert torch.equal(wconv(x), conv(x))


def test_use_winograd_on_resnet_generator() -> None:
    torch.manual_seed(0)
    net = create_net("resnet_9blocks", ngf=64).eval()
    keys = list(net.state_dict())
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        before = net(x)
    assert use_winograd(net) == 18  # the two 256-ch convs of each of the 9 blocks
    assert sum(isinstance(m, WinogradConv2d) for m in net.modules()) == 18
    assert list(net.state_dict()) == keys
    with torch.no_grad():
        after = net(x)
    assert (after - before).abs().max().item() < 1e-4
    assert use_winograd(net) == 0  # nothing left to replace


def test_use_winograd_min_channels() -> None:
    net = nn.Sequential(nn.Conv2d(3, 128, 3), nn.Sequential(nn.Conv2d(128, 128, 3), nn.Conv2d(128, 64, 3)))
    assert use_winograd(net) == 1  # in and out >= 128 by default
    assert isinstance(net[1][0], WinogradConv2d) and type(net[1][1]) is nn.Conv2d
    assert use_winograd(net, min_channels=3) == 2


@pytest.mark.parametrize("native_bf16", [False, True])
def test_winograd_pays_for_fp32_on_cpus_without_native_bf16_only(monkeypatch, native_bf16: bool) -> None:
    """The documented rule: fp32 on a CPU without native bf16 (AVX2); never another dtype or device,
    nor a CPU with AVX512-BF16/AMX. The CPU's answer is faked both ways, so both CPUs are checked here."""
    from translate.core import devices

    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: native_bf16)
    cpu = torch.device("cpu")
    assert winograd_pays(cpu, torch.float32) is (not native_bf16)
    assert winograd_pays() is (not native_bf16)  # the defaults: the CPU, fp32
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        assert winograd_pays(cpu, dtype) is False, dtype
    for device in (torch.device("cuda"), torch.device("cuda", 1), torch.device("meta")):
        for dtype in (torch.float32, torch.bfloat16):
            assert winograd_pays(device, dtype) is False, (device, dtype)


def test_winograd_pays_on_this_cpu_follows_its_bf16() -> None:
    from translate.core.devices import cpu_bf16_native

    assert winograd_pays(torch.device("cpu"), torch.float32) is (not cpu_bf16_native())
