"""Reference-family networks: shapes, parameter counts, bias rules, initialization, errors."""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from translate.core.checkpoints import read_weights, save_weights
from translate.core.errors import TranslateError
from translate.core.registry import NETS, ROLES, create_net
from translate.nets import init_weights, norm_layer
from translate.nets.backbones import compose
from translate.nets.layers import uses_bias
from translate.nets.patchgan import NLayerDiscriminator, PixelDiscriminator
from translate.nets.resnet import ResnetGenerator
from translate.nets.unet import UnetGenerator

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


# Small sizes for any registered net: a builder's keyword is set when it has one of these names (a new
# net with the usual names is small with no edit here); a builder's required keyword needs a value.
SMALL = {"ngf": 4, "ndf": 4, "nf": 4, "nc": 8, "z_dim": 8, "w_dim": 8, "mapping_layers": 1, "fmap_base": 32,
         "fmap_max": 8, "channel_base": 64, "channel_max": 8, "resolution": 16, "num_ws": 4}
REQUIRED = {"channels": [4, 8]}  # a head's: the channels of the feature maps it embeds
HALF_SIZE = 32  # composed translators and their halves: an image side every pair takes


def small_kwargs(name: str) -> dict:
    kwargs = {}
    for p in inspect.signature(NETS.get(name)).parameters.values():
        if p.default is inspect.Parameter.empty:
            kwargs[p.name] = REQUIRED[p.name]
        elif p.name in SMALL:
            kwargs[p.name] = SMALL[p.name]
    return kwargs


def composition(encoder: str, decoder: str) -> dict:
    """The composed translator's spec for an (encoder, decoder) pair, as a recipe would make it."""
    model = SimpleNamespace(encoder=encoder, decoder=decoder, ngf=4, norm="instance", dropout=False, z_dim=8,
                            freeze_encoder=False, freeze_decoder=False, init_encoder="", init_decoder="")
    return compose(model, 3, 3, HALF_SIZE).spec


def net_cases() -> list:
    """Every registered net once; a composed one (it is built of parts) once per pair that fits; an
    encoder or decoder as its first pair has it."""
    cases = []
    for name in NETS.names():
        info = NETS.info(name)
        if info.parts:
            cases += [pytest.param(name, pair, id=f"{name}-{pair[0]}+{pair[1]}") for pair in NETS.pairs()]
        elif info.role in ("encoder", "decoder"):
            short, side = name.removesuffix(f"_{info.role}"), ("encoder", "decoder").index(info.role)
            cases.append(pytest.param(name, next(p for p in NETS.pairs() if p[side] == short), id=name))
        else:
            cases.append(pytest.param(name, None, id=name))
    return cases


def spec_and_input(name: str, pair: tuple[str, str] | None) -> tuple[dict, tuple]:
    """The net's spec and an input for it, from its registry facts: an image of the size it needs, a
    z for a generator, an encoder's code for a decoder, feature maps for a head."""
    g = torch.Generator().manual_seed(1)
    info = NETS.info(name)
    if pair is not None:
        whole = composition(*pair)
        spec = whole if info.parts else whole["kwargs"][info.role]
        assert spec["net"] == name
        image = torch.rand(2, 3, HALF_SIZE, HALF_SIZE, generator=g) * 2 - 1
        if info.role == "decoder":
            encoder = whole["kwargs"]["encoder"]
            with torch.no_grad():
                return spec, (create_net(encoder["net"], **encoder["kwargs"]).eval()(image),)
        return spec, (image,)
    kwargs = small_kwargs(name)
    spec = {"net": name, "kwargs": kwargs}
    if info.role == "generator":
        return spec, (torch.randn(2, kwargs["z_dim"], generator=g),)
    if info.role == "head":
        return spec, ([torch.randn(2, c, 4, 4, generator=g) for c in kwargs["channels"]], 8)
    multiple, fixed = NETS.input_size(spec)
    side = fixed or kwargs.get("resolution") or math.lcm(multiple, 32)
    channels = kwargs.get("in_ch", kwargs.get("channels", 3))
    return spec, (torch.rand(2, channels, side, side, generator=g) * 2 - 1,)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize(("name", "pair"), net_cases())
def test_every_net_rebuilds_from_its_weights_file(name, pair, tmp_path) -> None:
    """save_weights, then read_weights and build from the file alone: the same tensors (parameters
    and buffers, moved off their initial values) and the same output, bit for bit."""
    spec, args = spec_and_input(name, pair)
    torch.manual_seed(0)
    net = create_net(spec["net"], **spec["kwargs"]).eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand(t.shape, generator=torch.Generator().manual_seed(t.numel())).mul_(0.1))
    path = save_weights(tmp_path / "w.safetensors", {"N": net}, {"N": spec})
    rebuilt = read_weights(path).build("N")
    assert not rebuilt.training
    before, after = net.state_dict(), rebuilt.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items()), name
    outputs = []
    for module in (net, rebuilt):
        torch.manual_seed(0)  # random noise or patch positions: the same draws for both
        with torch.no_grad():
            outputs.append(tree_flatten(module(*args))[0])
    assert len(outputs[0]) == len(outputs[1]) and outputs[0]
    assert all(torch.equal(a, b) for a, b in zip(*outputs, strict=True)), name


@pytest.mark.parametrize("name", TRANSLATORS)
def test_translators_keep_any_size_that_is_a_multiple_of_their_registered_one(name: str) -> None:
    """The registry's size multiple is what inference pads to: it must hold for every translator."""
    m = max(NETS.info(name).size_multiple, 16)
    net = create_net(name, in_ch=3, out_ch=3, ngf=4, norm="instance").eval()
    for h, w in ((m, m), (m, 2 * m)):
        with torch.no_grad():
            assert net(torch.randn(1, 3, h, w)).shape == (1, 3, h, w), (name, h, w)


def test_a_new_backbone_is_one_registration(monkeypatch, tmp_path, pairs4, single_thread) -> None:
    """A translator registered at run time (as a new file in nets/ would) is accepted by recipes,
    sets the training size check and the padding of `translate run`, is listed by the zoo, trains
    (one pix2pix step on real pairs changes its weights) and translates (`translate run` pads a
    62x45 photo to its multiple of 8 and crops the output back)."""
    from typer.testing import CliRunner

    from translate.cli.commands import app
    from translate.core.recipes import RecipeError, load_recipe
    from translate.inference.translator import input_size

    monkeypatch.setattr(NETS, "_items", dict(NETS._items))  # the registration ends with the test
    monkeypatch.setattr(NETS, "_info", dict(NETS._info))

    @NETS.register("toy_translator", role="translator", family="image", size_multiple=8)
    def toy(in_ch: int = 3, out_ch: int = 3, ngf: int = 64, norm: str = "instance", dropout: bool = False):
        """A 1x1 convolution: the smallest translator."""
        return nn.Conv2d(in_ch, out_ch, 1)

    recipe = load_recipe("pix2pix", ["model.generator=toy_translator", "data.crop_size=64"])
    assert recipe.model.generator == "toy_translator"
    assert input_size({"net": "toy_translator"}) == (8, None)
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

    from PIL import Image

    from translate.training.train import Trainer

    over = [f"data.path={pairs4}", "model.generator=toy_translator", "data.load_size=64", "data.crop_size=64",
            "model.ndf=4", "train.max_steps=1", "train.batch_size=2", "data.num_workers=0", "train.sample_every=0",
            "train.log_every=1", "train.save_every=0", "train.device=cpu"]
    trainer = Trainer(load_recipe("pix2pix", over), tmp_path / "run", quiet=True)
    G = trainer.method.nets["G"]
    assert type(G) is nn.Conv2d  # the toy itself, not a stand-in
    before = {k: v.detach().clone() for k, v in G.state_dict().items()}
    result = trainer.fit()
    assert result.step == 1
    wf = read_weights(result.weights)
    assert wf.arch["G"]["net"] == "toy_translator"
    after = wf.tensors["G"]
    assert after.keys() == before.keys() == {"weight", "bias"}
    for k, v in before.items():
        assert after[k].shape == v.shape and not torch.equal(after[k], v), k  # one Adam step moved each
    assert type(wf.build("G")) is nn.Conv2d  # the weights file alone rebuilds it

    src = tmp_path / "in"
    src.mkdir()
    photo = sorted((pairs4 / "train").iterdir())[0]
    Image.open(photo).resize((62, 45)).save(src / "x.png")
    res = CliRunner().invoke(app, ["run", str(src), str(tmp_path / "out"), "-w", str(result.weights), "-q"])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "out" / "x.png") as y:
        assert (y.size, y.mode) == ((62, 45), "RGB")
        assert not np.array_equal(np.asarray(y), np.asarray(Image.open(src / "x.png")))  # translated, not copied


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize(
    ("name", "size"),  # 128 and 256 where the registered multiple allows (unet_256: 256 only)
    [(name, size) for name in TRANSLATORS for size in sorted({max(NETS.info(name).size_multiple, 128), 256})],
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
