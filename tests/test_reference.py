"""Importing the reference's generator checkpoints.

The state dicts here are written out from the reference's layout rules (key names and shapes),
never from our network classes, and the expected outputs come from a purely functional forward
pass, so a layout mistake in our networks cannot hide behind itself.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from translate.core.errors import TranslateError
from translate.inference.reference import detect_arch, import_reference, load_reference_state_dict

StateDict = dict[str, Tensor]


# ------------------------------------------------------------------ reference-shaped state dicts


class RefBuilder:
    """Adds tensors named and shaped as the reference's modules would hold them."""

    def __init__(self, norm: str, seed: int = 0, old_instance_stats: bool = False) -> None:
        self.sd: StateDict = {}
        self.norm = norm
        self.bias = norm == "instance"  # the reference's use_bias rule
        self.old_instance_stats = old_instance_stats
        self.gen = torch.Generator().manual_seed(seed)

    def _randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.gen)

    def conv(self, name: str, cout: int, cin: int, k: int, bias: bool | None = None) -> None:
        self.sd[f"{name}.weight"] = self._randn(cout, cin, k, k) / math.sqrt(cin * k * k)
        if self.bias if bias is None else bias:
            self.sd[f"{name}.bias"] = 0.1 * self._randn(cout)

    def convt(self, name: str, cin: int, cout: int, k: int, bias: bool | None = None) -> None:
        # ConvTranspose2d stores (in, out, kh, kw); with stride 2 each output sees ~1/4 of the taps.
        self.sd[f"{name}.weight"] = self._randn(cin, cout, k, k) / math.sqrt(cin * k * k / 4)
        if self.bias if bias is None else bias:
            self.sd[f"{name}.bias"] = 0.1 * self._randn(cout)

    def norm_layer(self, name: str, ch: int) -> None:
        if self.norm == "batch":
            self.sd[f"{name}.weight"] = 1 + 0.1 * self._randn(ch)
            self.sd[f"{name}.bias"] = 0.1 * self._randn(ch)
            self.sd[f"{name}.running_mean"] = 0.1 * self._randn(ch)
            self.sd[f"{name}.running_var"] = 0.5 + torch.rand(ch, generator=self.gen)
            self.sd[f"{name}.num_batches_tracked"] = torch.tensor(1234)
        elif self.norm == "instance" and self.old_instance_stats:
            # Written by reference versions whose InstanceNorm2d tracked running statistics.
            self.sd[f"{name}.running_mean"] = torch.zeros(ch)
            self.sd[f"{name}.running_var"] = torch.ones(ch)
            self.sd[f"{name}.num_batches_tracked"] = torch.tensor(0)


def ref_resnet_sd(
    n_blocks: int,
    ngf: int,
    norm: str = "instance",
    in_ch: int = 3,
    out_ch: int = 3,
    dropout: bool = False,
    old_instance_stats: bool = False,
) -> StateDict:
    """Layout: 0 pad, 1 conv7, 2 norm, 3 relu, (4,5,6) and (7,8,9) down, 10.. blocks,
    then 2 x (convT, norm, relu), pad, conv7 (biased), tanh."""
    b = RefBuilder(norm, seed=n_blocks * 1000 + ngf, old_instance_stats=old_instance_stats)
    b.conv("model.1", ngf, in_ch, 7)
    b.norm_layer("model.2", ngf)
    b.conv("model.4", ngf * 2, ngf, 3)
    b.norm_layer("model.5", ngf * 2)
    b.conv("model.7", ngf * 4, ngf * 2, 3)
    b.norm_layer("model.8", ngf * 4)
    second = 6 if dropout else 5  # block: pad, conv, norm, relu, [dropout], pad, conv, norm
    for i in range(10, 10 + n_blocks):
        b.conv(f"model.{i}.conv_block.1", ngf * 4, ngf * 4, 3)
        b.norm_layer(f"model.{i}.conv_block.2", ngf * 4)
        b.conv(f"model.{i}.conv_block.{second}", ngf * 4, ngf * 4, 3)
        b.norm_layer(f"model.{i}.conv_block.{second + 1}", ngf * 4)
    up = 10 + n_blocks
    b.convt(f"model.{up}", ngf * 4, ngf * 2, 3)
    b.norm_layer(f"model.{up + 1}", ngf * 2)
    b.convt(f"model.{up + 3}", ngf * 2, ngf, 3)
    b.norm_layer(f"model.{up + 4}", ngf)
    b.conv(f"model.{up + 7}", out_ch, ngf, 7, bias=True)
    return b.sd


def unet_prefix(level: int) -> str:
    """Outermost block at ``model.model.``; its child at index 1, every deeper child at index 3."""
    if level == 0:
        return "model.model."
    return "model.model.1.model." + "3.model." * (level - 1)


def unet_widths(level: int, ngf: int, in_ch: int, out_ch: int) -> tuple[int, int, int]:
    """(input, inner, outer) channels of a level: ngf, 2ngf, 4ngf, then 8ngf to the bottom."""
    inner = ngf * min(2**level, 8)
    outer = out_ch if level == 0 else ngf * min(2 ** (level - 1), 8)
    return (in_ch if level == 0 else outer), inner, outer


def ref_unet_sd(
    depth: int,
    ngf: int,
    norm: str = "batch",
    in_ch: int = 3,
    out_ch: int = 3,
    old_instance_stats: bool = False,
) -> StateDict:
    """outermost [down, child, relu, up(biased), tanh]; middle [leaky, down, norm, child, relu, up,
    norm, (dropout)]; innermost [leaky, down, relu, up, norm]."""
    b = RefBuilder(norm, seed=depth * 1000 + ngf, old_instance_stats=old_instance_stats)
    for level in range(depth):
        p = unet_prefix(level)
        cin, inner, outer = unet_widths(level, ngf, in_ch, out_ch)
        if level == 0:
            b.conv(f"{p}0", inner, cin, 4)
            b.convt(f"{p}3", inner * 2, outer, 4, bias=True)
        elif level == depth - 1:
            b.conv(f"{p}1", inner, cin, 4)
            b.convt(f"{p}3", inner, outer, 4)
            b.norm_layer(f"{p}4", outer)
        else:
            b.conv(f"{p}1", inner, cin, 4)
            b.norm_layer(f"{p}2", inner)
            b.convt(f"{p}5", inner * 2, outer, 4)
            b.norm_layer(f"{p}6", outer)
    return b.sd


# ------------------------------------------------------------------ functional reference forwards


def _conv(sd: StateDict, name: str, x: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    return F.conv2d(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"), stride=stride, padding=padding)


def _convt(sd: StateDict, name: str, x: Tensor, output_padding: int = 0) -> Tensor:
    return F.conv_transpose2d(
        x, sd[f"{name}.weight"], sd.get(f"{name}.bias"), stride=2, padding=1, output_padding=output_padding
    )


def _reflect(x: Tensor, p: int) -> Tensor:
    return F.pad(x, (p, p, p, p), mode="reflect")


def functional_resnet_instance(sd: StateDict, x: Tensor, n_blocks: int) -> Tensor:
    inorm = F.instance_norm  # no affine, per-image statistics
    x = F.relu(inorm(_conv(sd, "model.1", _reflect(x, 3))))
    x = F.relu(inorm(_conv(sd, "model.4", x, stride=2, padding=1)))
    x = F.relu(inorm(_conv(sd, "model.7", x, stride=2, padding=1)))
    for i in range(10, 10 + n_blocks):
        y = F.relu(inorm(_conv(sd, f"model.{i}.conv_block.1", _reflect(x, 1))))
        y = inorm(_conv(sd, f"model.{i}.conv_block.5", _reflect(y, 1)))
        x = x + y
    up = 10 + n_blocks
    x = F.relu(inorm(_convt(sd, f"model.{up}", x, output_padding=1)))
    x = F.relu(inorm(_convt(sd, f"model.{up + 3}", x, output_padding=1)))
    return torch.tanh(_conv(sd, f"model.{up + 7}", _reflect(x, 3)))


def functional_unet_batch_eval(sd: StateDict, x: Tensor, depth: int) -> Tensor:
    def bn(name: str, t: Tensor) -> Tensor:
        return F.batch_norm(
            t,
            sd[f"{name}.running_mean"],
            sd[f"{name}.running_var"],
            sd[f"{name}.weight"],
            sd[f"{name}.bias"],
            training=False,
            eps=1e-5,
        )

    def level(t: Tensor, k: int) -> Tensor:
        p = unet_prefix(k)
        # The reference's first op is an in-place LeakyReLU on the block input, so the skip
        # half of its concatenation holds leaky_relu(t), not t.
        h = F.leaky_relu(t, 0.2)
        d = _conv(sd, f"{p}1", h, stride=2, padding=1)
        if k == depth - 1:
            u = bn(f"{p}4", _convt(sd, f"{p}3", F.relu(d)))
        else:
            inner = level(bn(f"{p}2", d), k + 1)
            u = bn(f"{p}6", _convt(sd, f"{p}5", F.relu(inner)))
        return torch.cat([h, u], 1)

    d = _conv(sd, "model.model.0", x, stride=2, padding=1)
    return torch.tanh(_convt(sd, "model.model.3", F.relu(level(d, 1))))


# ------------------------------------------------------------------ helpers


def save(sd: object, path: Path) -> Path:
    torch.save(sd, path)
    return path


def assert_all_keys_loaded(net: torch.nn.Module, sd: StateDict) -> None:
    ours = net.state_dict()
    assert set(ours) == set(sd)
    for key, value in sd.items():
        assert torch.equal(ours[key], value), key


def assert_lively(y: Tensor) -> None:
    """The comparison means something only if tanh is not saturated everywhere."""
    assert y.std() > 0.05
    assert (y.abs() < 0.99).float().mean() > 0.5


# ------------------------------------------------------------------ numerics


@pytest.mark.parametrize("ngf", [32, 64])
def test_resnet_9blocks_instance_matches_functional_forward(tmp_path: Path, ngf: int) -> None:
    sd = ref_resnet_sd(9, ngf, norm="instance")
    net, spec = import_reference(save(sd, tmp_path / "latest_net_G_A.pth"))
    assert spec == {
        "net": "resnet_9blocks",
        "kwargs": {"in_ch": 3, "out_ch": 3, "ngf": ngf, "norm": "instance", "dropout": False},
    }
    assert not net.training
    assert_all_keys_loaded(net, sd)

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x)
        expected = functional_resnet_instance(sd, x, 9)
    assert_lively(expected)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_unet_256_batch_eval_matches_functional_forward(tmp_path: Path) -> None:
    sd = ref_unet_sd(8, 16, norm="batch")
    net, spec = import_reference(save(sd, tmp_path / "latest_net_G.pth"))
    assert spec == {
        "net": "unet_256",
        "kwargs": {"in_ch": 3, "out_ch": 3, "ngf": 16, "norm": "batch", "dropout": False},
    }
    assert_all_keys_loaded(net, sd)

    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = net(x)
        expected = functional_unet_batch_eval(sd, x, 8)
    assert_lively(expected)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ layouts and detection


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
@pytest.mark.parametrize("n_blocks", [6, 9])
def test_resnet_layouts_import(tmp_path: Path, n_blocks: int, norm: str) -> None:
    sd = ref_resnet_sd(n_blocks, 16, norm=norm, in_ch=1, out_ch=2)
    net, spec = import_reference(save(sd, tmp_path / "g.pth"))
    assert spec["net"] == f"resnet_{n_blocks}blocks"
    assert spec["kwargs"] == {"in_ch": 1, "out_ch": 2, "ngf": 16, "norm": norm, "dropout": False}
    assert_all_keys_loaded(net, sd)


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
@pytest.mark.parametrize(("depth", "name"), [(7, "unet_128"), (8, "unet_256")])
def test_unet_layouts_import(tmp_path: Path, depth: int, name: str, norm: str) -> None:
    sd = ref_unet_sd(depth, 8, norm=norm, in_ch=1, out_ch=3)
    net, spec = import_reference(save(sd, tmp_path / "g.pth"))
    assert spec["net"] == name
    assert spec["kwargs"] == {"in_ch": 1, "out_ch": 3, "ngf": 8, "norm": norm, "dropout": False}
    assert_all_keys_loaded(net, sd)


def test_resnet_dropout_is_detected(tmp_path: Path) -> None:
    sd = ref_resnet_sd(6, 8, dropout=True)
    net, spec = import_reference(save(sd, tmp_path / "g.pth"))
    assert spec["kwargs"]["dropout"] is True
    assert_all_keys_loaded(net, sd)


def test_dataparallel_prefix_and_wrapped_state_dict(tmp_path: Path) -> None:
    sd = ref_resnet_sd(6, 8)
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    net, _ = import_reference(save(prefixed, tmp_path / "dp.pth"))
    assert_all_keys_loaded(net, sd)
    net, _ = import_reference(save({"state_dict": prefixed, "epoch": 200}, tmp_path / "wrapped.pth"))
    assert_all_keys_loaded(net, sd)


@pytest.mark.parametrize("family", ["resnet", "unet"])
def test_old_instance_norm_running_stats_are_dropped(tmp_path: Path, family: str) -> None:
    if family == "resnet":
        sd = ref_resnet_sd(9, 8, norm="instance", old_instance_stats=True)
    else:
        sd = ref_unet_sd(7, 8, norm="instance", old_instance_stats=True)
    assert any(k.endswith("running_mean") for k in sd)
    net, spec = import_reference(save(sd, tmp_path / "old.pth"))
    assert spec["kwargs"]["norm"] == "instance"
    stats = ("running_mean", "running_var", "num_batches_tracked")
    kept = {k: v for k, v in sd.items() if not k.endswith(stats)}
    assert_all_keys_loaded(net, kept)


def test_batch_norm_checkpoint_without_num_batches_tracked(tmp_path: Path) -> None:
    """PyTorch < 0.4.1 did not save the counter; it only counts steps, so it may be absent."""
    sd = ref_unet_sd(7, 8, norm="batch")
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    net, _ = import_reference(save(old, tmp_path / "old_bn.pth"))
    for key, value in old.items():
        assert torch.equal(net.state_dict()[key], value)


def test_detect_arch_agrees_with_user_choices() -> None:
    sd = ref_resnet_sd(9, 8, norm="instance")
    assert detect_arch(sd, arch="resnet_9blocks", norm="instance")["net"] == "resnet_9blocks"


@pytest.mark.parametrize(
    ("arch", "norm", "message"),
    [
        ("unet_256", None, "holds a resnet_9blocks"),
        ("resnet_6blocks", None, "holds a resnet_9blocks"),
        (None, "batch", "norm 'instance'"),
        (None, "none", "norm 'instance'"),
        ("resnet_12blocks", None, "not a reference generator"),
    ],
)
def test_contradicting_arch_or_norm(tmp_path: Path, arch: str | None, norm: str | None, message: str) -> None:
    path = save(ref_resnet_sd(9, 8, norm="instance"), tmp_path / "g.pth")
    with pytest.raises(TranslateError, match=message):
        import_reference(path, arch=arch, norm=norm)


def test_unet_contradicting_arch(tmp_path: Path) -> None:
    path = save(ref_unet_sd(8, 8, norm="batch"), tmp_path / "g.pth")
    with pytest.raises(TranslateError, match="holds a unet_256"):
        import_reference(path, arch="unet_128")


# ------------------------------------------------------------------ bad files


def test_shape_mismatch_and_unknown_keys_are_listed(tmp_path: Path) -> None:
    sd = ref_resnet_sd(6, 8)
    sd["model.4.weight"] = torch.zeros(16, 9, 3, 3)  # wrong input channels
    sd["model.99.weight"] = torch.zeros(1)
    with pytest.raises(TranslateError) as info:
        import_reference(save(sd, tmp_path / "bad.pth"))
    text = str(info.value)
    assert "model.4.weight (16, 9, 3, 3) vs (16, 8, 3, 3)" in text
    assert "unmapped: model.99.weight" in text
    assert "\n" not in text


def test_missing_key_is_listed(tmp_path: Path) -> None:
    sd = ref_resnet_sd(6, 8)
    del sd["model.11.conv_block.5.weight"]
    with pytest.raises(TranslateError, match=r"missing: model\.11\.conv_block\.5\.weight"):
        import_reference(save(sd, tmp_path / "bad.pth"))


def test_discriminator_checkpoint_is_not_a_generator(tmp_path: Path) -> None:
    sd = {"model.0.weight": torch.zeros(64, 3, 4, 4), "model.0.bias": torch.zeros(64)}
    with pytest.raises(TranslateError, match="does not look like a reference generator"):
        import_reference(save(sd, tmp_path / "latest_net_D.pth"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TranslateError, match="nope.pth"):
        load_reference_state_dict(tmp_path / "nope.pth")


@pytest.mark.parametrize("content", [b"this is not a checkpoint\n", b""])
def test_non_checkpoint_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(TranslateError, match="notes.pth") as info:
        load_reference_state_dict(path)
    assert "\n" not in str(info.value)


def test_non_tensor_dict_is_refused(tmp_path: Path) -> None:
    path = save({"epoch": 3, "lr": 0.0002}, tmp_path / "opts.pth")
    with pytest.raises(TranslateError, match="opts.pth"):
        load_reference_state_dict(path)


class Payload:
    """Unpickling this calls os.mkdir(marker): a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_refused_without_running_them(tmp_path: Path) -> None:
    # Control: the payload really runs under an unrestricted unpickler.
    control = tmp_path / "control_ran"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.is_dir()

    marker = tmp_path / "payload_ran"
    via_torch = save({"model.1.weight": torch.zeros(1), "x": Payload(marker)}, tmp_path / "evil.pth")
    via_pickle = tmp_path / "evil.pkl"
    via_pickle.write_bytes(pickle.dumps(Payload(marker)))
    for path in (via_torch, via_pickle):
        with pytest.raises(TranslateError, match=path.name) as info:
            import_reference(path)
        assert "\n" not in str(info.value)
    assert not marker.exists()
