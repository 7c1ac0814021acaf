"""Reference-family networks: shapes, parameter counts, bias rules, initialization, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from translate.errors import TranslateError
from translate.nets import init_weights, norm_layer
from translate.nets.layers import uses_bias
from translate.nets.patchgan import NLayerDiscriminator, PixelDiscriminator
from translate.nets.resnet import ResnetGenerator
from translate.nets.unet import UnetGenerator
from translate.registry import NETS, ROLES, create_net

NORMS = ["instance", "batch", "none"]
TRANSLATORS = NETS.names(role="translator", composite=False)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_every_family_is_registered_with_its_facts() -> None:
    assert {"resnet_6blocks", "resnet_9blocks", "unet_128", "unet_256"} <= set(TRANSLATORS)
    assert NETS.names(role="discriminator", family="image") == ["basic", "n_layers", "pixel"]
    for name in NETS.names():
        info = NETS.info(name)
        assert info.role in ROLES and info.summary, name
        assert callable(info.size_multiple) or info.size_multiple >= 1
        assert not info.reference or info.role == "translator", name  # `translate import` reads generators
        if info.role in ("encoder", "decoder"):  # halves: how a recipe sets them, and the codes they meet at
            assert info.options is not None and bool(info.gives) == (info.role == "encoder"), name
            assert any(name in (f"{e}_encoder", f"{d}_decoder") for e, d in NETS.pairs()), f"{name} fits no partner"
        else:
            assert NETS.partners(name, "discriminator") or info.role in ("discriminator", "autoencoder", "head"), name


@pytest.mark.parametrize("name", TRANSLATORS)
def test_translators_keep_any_size_that_is_a_multiple_of_their_registered_one(name: str) -> None:
    """The registry's size multiple is what inference pads to: it must hold for every translator."""
    m = max(NETS.info(name).size_multiple, 16)
    net = create_net(name, in_ch=3, out_ch=3, ngf=4, norm="instance").eval()
    for h, w in ((m, m), (m, 2 * m)):
        with torch.no_grad():
            assert net(torch.randn(1, 3, h, w)).shape == (1, 3, h, w), (name, h, w)


def test_a_new_backbone_is_one_registration(monkeypatch, tmp_path) -> None:
    """A translator registered at run time (as a new file in nets/ would) is accepted by recipes,
    sets the training size check and the padding of `translate run`, and is listed by the zoo."""
    from typer.testing import CliRunner

    from translate.cli import app
    from translate.infer import size_multiple
    from translate.recipes import RecipeError, load_recipe

    monkeypatch.setattr(NETS, "_items", dict(NETS._items))  # the registration ends with the test
    monkeypatch.setattr(NETS, "_info", dict(NETS._info))

    @NETS.register("toy_translator", role="translator", family="image", size_multiple=8)
    def toy(in_ch: int = 3, out_ch: int = 3, ngf: int = 64, norm: str = "instance", dropout: bool = False):
        """A 1x1 convolution: the smallest translator."""
        return nn.Conv2d(in_ch, out_ch, 1)

    recipe = load_recipe("pix2pix", ["model.generator=toy_translator", "data.crop_size=64"])
    assert recipe.model.generator == "toy_translator"
    assert size_multiple({"net": "toy_translator"}) == 8
    from translate.methods.base import Method

    with pytest.raises(TranslateError, match="needs a multiple of 8"):
        method = Method.__new__(Method)  # the size check alone, no networks built
        method.recipe = recipe
        method.check_size(60)
    with pytest.raises(RecipeError, match="toy_translator"):  # a wrong name lists it among the valid ones
        load_recipe("pix2pix", ["model.generator=toy"])
    with pytest.raises(RecipeError, match="basic, n_layers, pixel"):  # a partner of another family
        load_recipe("pix2pix", ["model.discriminator=stylegan2_d"])
    res = CliRunner().invoke(app, ["zoo"])
    assert res.exit_code == 0 and "toy_translator" in res.output and "smallest translator" in res.output


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("resnet_6blocks", 128),
        ("resnet_6blocks", 256),
        ("resnet_9blocks", 128),
        ("resnet_9blocks", 256),
        ("unet_128", 128),
        ("unet_128", 256),
        ("unet_256", 256),  # 8 halvings: 128 would shrink below 1x1
    ],
)
def test_generator_output_shape(name: str, size: int, norm: str) -> None:
    net = create_net(name, in_ch=1, out_ch=3, ngf=8, norm=norm)
    with torch.no_grad():
        y = net(torch.randn(2, 1, size, size))
    assert y.shape == (2, 3, size, size)
    assert y.abs().max() <= 1.0  # tanh output


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize(
    ("name", "n_layers", "side"),
    [
        # 3 stride-2 convs then two k4 s1 p1 convs (each -1): 256 -> 32 -> 30; 128 -> 16 -> 14.
        ("basic", 5, lambda s: s // 8 - 2),  # n_layers is ignored by "basic"
        ("n_layers", 3, lambda s: s // 8 - 2),
        ("n_layers", 4, lambda s: s // 16 - 2),
        ("n_layers", 2, lambda s: s // 4 - 2),
        ("pixel", 3, lambda s: s),
    ],
)
def test_discriminator_output_shape(name: str, n_layers: int, side, size: int, norm: str) -> None:
    net = create_net(name, in_ch=6, ndf=8, n_layers=n_layers, norm=norm)
    with torch.no_grad():
        y = net(torch.randn(2, 6, size, size))
    assert y.shape == (2, 1, side(size), side(size))


def test_parameter_counts_match_the_reference() -> None:
    # Counts the reference prints for its default models ("Total number of parameters").
    assert n_params(create_net("resnet_9blocks", ngf=64, norm="instance")) == 11_378_179  # 11.378 M
    assert n_params(create_net("basic", in_ch=3, ndf=64, norm="instance")) == 2_764_737  # 2.765 M
    assert n_params(create_net("basic", in_ch=6, ndf=64, norm="batch")) == 2_768_705  # pix2pix D
    # unet_256 / batch, per level (4x4 kernels, no conv biases except the outermost up-conv):
    #   outermost 3->64 down + 128->3 up (+3 bias)                        =      9,219
    #   64/128, 128/256, 256/512 levels: down + BN + up + BN              =  8,260,224
    #   three 512/512 middle levels: 3 x (4,194,304 + 1,024 + 8,388,608 + 1,024) = 37,754,880
    #   innermost 512/512: down + up + BN(512), no BN after its down-conv =  8,389,632
    # = 54,413,955 (the reference logs "54.414 M").
    assert n_params(create_net("unet_256", ngf=64, norm="batch")) == 54_413_955


def test_norm_kinds_build_the_reference_layers() -> None:
    inst = norm_layer("instance")(8)
    assert isinstance(inst, nn.InstanceNorm2d)
    assert not inst.affine and not inst.track_running_stats
    bn = norm_layer("batch")(8)
    assert isinstance(bn, nn.BatchNorm2d) and bn.affine and bn.track_running_stats
    assert isinstance(norm_layer("none")(8), nn.Identity)
    assert [uses_bias(k) for k in NORMS] == [True, False, False]


def _biased_convs(net: nn.Module) -> list[str]:
    return [
        name
        for name, m in net.named_modules()
        if isinstance(m, nn.modules.conv._ConvNd) and m.bias is not None
    ]


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_no_conv_bias_without_instance_norm(norm: str) -> None:
    # Only convs with no norm after them keep a bias (as in the reference).
    assert _biased_convs(ResnetGenerator(ngf=8, norm=norm, n_blocks=2)) == ["model.19"]
    assert _biased_convs(UnetGenerator(num_downs=5, ngf=8, norm=norm)) == ["model.model.3"]
    assert _biased_convs(NLayerDiscriminator(ndf=8, norm=norm)) == ["model.0", "model.11"]
    assert _biased_convs(PixelDiscriminator(ndf=8, norm=norm)) == ["net.0"]


def test_instance_norm_convs_all_have_bias() -> None:
    net = ResnetGenerator(ngf=8, norm="instance", n_blocks=2)
    convs = [m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    assert all(m.bias is not None for m in convs)


def test_conv_keys_do_not_depend_on_the_norm() -> None:
    """Identity keeps the norm's slot, so conv indices (and key names) never move."""
    conv_keys = []
    for norm in NORMS:
        sd = create_net("resnet_6blocks", ngf=8, norm=norm).state_dict()
        conv_keys.append(sorted(k for k, v in sd.items() if v.dim() == 4))
    assert conv_keys[0] == conv_keys[1] == conv_keys[2]


def test_dropout_placement() -> None:
    resnet = ResnetGenerator(ngf=8, dropout=True, n_blocks=2)
    assert isinstance(resnet.model[10].conv_block[4], nn.Dropout)
    assert "model.10.conv_block.6.weight" in resnet.state_dict()
    for num_downs in (7, 8):
        unet = UnetGenerator(num_downs=num_downs, ngf=8, dropout=True)
        n_dropout = sum(isinstance(m, nn.Dropout) for m in unet.modules())
        assert n_dropout == num_downs - 5  # only the extra 8*ngf levels


def test_unet_skip_carries_leaky_relu_of_the_input() -> None:
    """The reference's in-place LeakyReLU rewrites x before the concat; we match it without
    mutating the caller's tensor."""
    unet = UnetGenerator(num_downs=5, ngf=4, norm="none").eval()
    inner = unet.model.model[1]
    x = torch.randn(1, 4, 16, 16)
    x_before = x.clone()
    with torch.no_grad():
        y = inner(x)
    assert torch.equal(x, x_before)
    torch.testing.assert_close(y[:, :4], nn.functional.leaky_relu(x, 0.2))


def _conv_weights(net: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)]


def test_init_normal_statistics() -> None:
    torch.manual_seed(0)
    net = init_weights(create_net("unet_128", ngf=16, norm="batch"), "normal", gain=0.02)
    w = torch.cat([t.flatten() for t in _conv_weights(net)])
    assert abs(w.mean().item()) < 1e-3
    assert w.std().item() == pytest.approx(0.02, rel=0.02)
    bn = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_w = torch.cat([m.weight.detach() for m in bn])
    assert bn_w.mean().item() == pytest.approx(1.0, abs=0.01)
    assert bn_w.std().item() == pytest.approx(0.02, rel=0.15)
    assert all(torch.all(m.bias == 0) for m in bn)
    biases = [m.bias for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd) and m.bias is not None]
    assert biases and all(torch.all(b == 0) for b in biases)


def test_init_xavier_kaiming_orthogonal_statistics() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(256, 256, 3)  # fan_in = fan_out = 2304
    fan = 256 * 9

    init_weights(conv, "xavier", gain=0.5)
    assert conv.weight.std().item() == pytest.approx(0.5 * math.sqrt(2.0 / (2 * fan)), rel=0.02)
    assert torch.all(conv.bias == 0)

    init_weights(conv, "kaiming", gain=0.5)  # kaiming ignores gain, as in the reference
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan), rel=0.02)

    init_weights(conv, "orthogonal", gain=0.5)
    flat = conv.weight.detach().reshape(256, -1)
    torch.testing.assert_close(flat @ flat.T, 0.25 * torch.eye(256), atol=1e-4, rtol=0)


def test_bad_names_give_clear_errors() -> None:
    with pytest.raises(TranslateError, match="'bach'.*did you mean 'batch'"):
        norm_layer("bach")
    with pytest.raises(TranslateError, match="'group'"):
        create_net("resnet_9blocks", norm="group")
    with pytest.raises(TranslateError, match="'uniform'.*normal"):
        init_weights(nn.Conv2d(1, 1, 1), "uniform")


@pytest.mark.parametrize("pad", [1, 3, (1, 2, 3, 0)])
def test_reflection_pad_by_index_equals_the_kernel(pad):
    """The index path ReflectionPad2d takes under deterministic CUDA gives the kernel's values and
    gradients (checked on the CPU, where both exist)."""
    from translate.nets.layers import ReflectionPad2d, _reflect_index

    x = torch.randn(2, 3, 7, 9, requires_grad=True)
    left, right, top, bottom = ReflectionPad2d(pad).padding
    by_index = x.index_select(-2, _reflect_index(7, top, bottom, x.device)).index_select(
        -1, _reflect_index(9, left, right, x.device))
    kernel = ReflectionPad2d(pad)(x)
    assert torch.equal(by_index, kernel)
    g = torch.randn_like(kernel)
    (ga,), (gb,) = torch.autograd.grad(by_index, x, g), torch.autograd.grad(kernel, x, g)
    assert torch.allclose(ga, gb, atol=1e-6)
