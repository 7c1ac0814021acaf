"""StyleGAN2: its layers, its generator's controls, and training on a few MNIST digits (CPU, tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import copy_first, shared

from translate.core.checkpoints import read_weights
from translate.core.recipes import load_recipe
from translate.core.registry import create_net
from translate.inference.generate import sample
from translate.nets.stylegan2 import MinibatchStdDev, ModulatedConv2d
from translate.training.train import Trainer

TINY_NETS = {"z_dim": 32, "w_dim": 32, "resolution": 32, "channels": 1, "channel_base": 256, "channel_max": 32,
             "mapping_layers": 2}
# 32 images, batch 8: 4 steps an epoch. Intervals of 2 put R1 and path length on steps 0, 2, 4, ...
TINY = ["data.load_size=32", "data.crop_size=32", "data.channels=1", "data.flip=false", "data.num_workers=0",
        "model.z_dim=32", "model.w_dim=32", "model.mapping_layers=2", "model.channel_base=256",
        "model.channel_max=32", "train.batch_size=8", "train.sample_every=0", "train.log_every=1",
        "train.n_samples=2", "loss.r1_interval=2", "loss.pl_interval=2", "loss.mixing_prob=0.5"]
STEPS = 5


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def tiny_generator(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    G = create_net("stylegan2_g", **TINY_NETS).eval()
    with torch.no_grad():  # as if trained: a tracked w_avg, some noise
        G.mapping.w_avg.normal_()
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
    return G


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> Path:
    """16 images each of the digits 0 and 1, in one folder tree."""
    root = tmp_path_factory.mktemp("data") / "mnist"
    for digit in ("0", "1"):
        copy_first(shared("mnist", "train", digit), root / "train" / digit, 16)
    return root


@pytest.fixture(scope="module")
def trained(mnist, tmp_path_factory) -> tuple[Trainer, torch.Tensor, Path]:
    """A 5-step run (3 R1 and 3 path-length steps), with G_ema's sample grid from before it."""
    run = tmp_path_factory.mktemp("full") / "run"
    trainer = Trainer(load_recipe("stylegan2", [f"data.path={mnist}", *TINY, f"train.max_steps={STEPS}"]), run,
                      quiet=True)
    before = trainer.method.sample({})
    trainer.fit()
    return trainer, before, run


def test_training_is_finite_regularised_and_moves_g_ema(trained):
    trainer, before, run = trained
    log = read_log(run)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in log)
    assert ["R1" in r for r in log] == ["PL" in r for r in log] == [True, False, True, False, True]
    assert log[-1]["pl_mean"] > 0
    after = trainer.method.sample({})
    assert after.shape == (2, 3, 32, 8 * 32)
    assert (after - before).abs().mean() > 1e-3
    # G_ema is saved for resume but never optimised; Adam is corrected for the lazy steps (k / (k + 1))
    m = trainer.method
    assert set(m.optimizers) == {"G", "D"} and "G_ema" in m.nets
    assert all(not p.requires_grad and p.grad is None for p in m.nets["G_ema"].parameters())
    assert m.optimizers["G"].param_groups[0]["lr"] == pytest.approx(0.002 * 2 / 3)
    assert m.optimizers["D"].param_groups[0]["betas"][1] == pytest.approx(0.99 ** (2 / 3))


def test_weights_file_rebuilds_g_ema_with_w_avg(trained):
    trainer, _, run = trained
    weights = read_weights(run / "latest.safetensors")
    assert weights.nets == ["G"] and weights.arch["G"]["net"] == "stylegan2_g"
    G = weights.build("G")
    G_ema, G_train = trainer.method.nets["G_ema"], trainer.method.nets["G"]
    assert (G.z_dim, G.resolution, G.channels, G.num_classes) == (32, 32, 1, 0)
    assert torch.equal(G.mapping.w_avg, G_ema.mapping.w_avg) and G.mapping.w_avg.abs().sum() > 0
    z = torch.randn(3, 32)
    with torch.no_grad():
        out = G(z)
        assert torch.equal(out, G_ema(z))
        assert out.shape == (3, 1, 32, 32) and out.abs().max() <= 1
        assert not torch.equal(out, G_train.eval()(z))  # the average, not the trained net
    G_train.train()
    # `translate sample` uses it through the contract: truncation 0 is one image for every z
    images = sample(run / "latest.safetensors", n=4, truncation=0.0)
    assert images.shape == (4, 1, 32, 32) and torch.equal(images, images[:1].expand_as(images))


def test_style_mixing_differs_from_both_parents():
    G = tiny_generator()
    z1, z2 = torch.randn(2, 32), torch.randn(2, 32)
    with torch.no_grad():
        a, b = G(z1), G(z2)
        mixed = G(z1, z2=z2, mix_layer=G.num_ws // 2)
        assert (mixed - a).abs().mean() > 1e-3 and (mixed - b).abs().mean() > 1e-3
        assert torch.equal(G(z1, z2=z2, mix_layer=0), b)  # every layer takes z2's w
        assert torch.equal(G(z1, z2=z2, mix_layer=G.num_ws), a)  # none does


def test_truncation_zero_gives_one_image_for_every_seed():
    G = tiny_generator()
    with torch.no_grad():
        images = torch.cat([G(torch.randn(4, 32, generator=torch.Generator().manual_seed(s)), truncation=0.0)
                            for s in range(3)])
        assert torch.allclose(images, images[:1].expand_as(images))
        assert not torch.allclose(G(torch.randn(4, 32)), images[:4])  # without truncation they differ
        # "const" noise is what makes it one image; random noise varies the details
        assert not torch.equal(G(torch.zeros(1, 32), truncation=0.0, noise_mode="random"), images[:1])


def test_demodulation_gives_unit_variance_whatever_the_style():
    torch.manual_seed(0)
    conv = ModulatedConv2d(64, 64, w_dim=16, kernel=3)
    x, w = torch.randn(8, 64, 32, 32), torch.randn(8, 16)
    with torch.no_grad():
        out = conv(x, w)
        assert out[..., 1:-1, 1:-1].std().item() == pytest.approx(1.0, abs=0.05)  # borders see zero padding
        conv.affine.weight.mul_(5.0)
        conv.affine.bias.mul_(5.0)
        assert torch.allclose(conv(x, w), out, atol=1e-4)  # styles x 5: the same output
        up = ModulatedConv2d(64, 8, w_dim=16, kernel=3, up=True)
        assert up(x, w).shape == (8, 8, 64, 64)


@pytest.mark.parametrize("channels", [1, 3])
def test_nets_shapes_and_odd_batches(channels):
    torch.manual_seed(0)
    kw = {**TINY_NETS, "resolution": 8, "channels": channels}
    G = create_net("stylegan2_g", **kw)
    D = create_net("stylegan2_d", resolution=8, channels=channels, channel_base=256, channel_max=32)
    img = G(torch.randn(6, 32), noise_mode="random")  # 6 is not a multiple of the stddev group (4)
    assert img.shape == (6, channels, 8, 8)
    assert D(img).shape == (6, 1)
    assert MinibatchStdDev(4)(torch.randn(6, 2, 4, 4)).shape == (6, 3, 4, 4)


def test_rgb_training_step(mnist, tmp_path):
    over = [f"data.path={mnist}", *TINY, "data.load_size=8", "data.crop_size=8", "data.channels=3",
            "train.max_steps=1"]
    Trainer(load_recipe("stylegan2", over), tmp_path / "run", quiet=True).fit()
    G = read_weights(tmp_path / "run" / "latest.safetensors").build("G")
    assert G(torch.randn(2, 32)).shape == (2, 3, 8, 8)


def test_shipped_recipe_loads():
    recipe = load_recipe("stylegan2")
    assert recipe.method == "stylegan2" and recipe.data.crop_size == 32 and recipe.description
    assert (recipe.train.lr, recipe.train.beta1, recipe.train.beta2) == (0.002, 0.0, 0.99)


def test_discriminator_down_conv_blurs_then_strides_as_the_official_layer():
    """stylegan2-ada's conv2d_resample for a 3x3 conv with down=2: upfirdn2d pads by k // 2 + the
    filter's (1 + 1 = 2 each side) and blurs at full size, then the conv runs with stride 2; a 1x1
    conv: blur with pad 1 and keep every second pixel, then the conv. Written out here with pad and
    unfold, so a conv moved after the halving (ours once) fails."""
    from translate.nets.blocks import EqualConv2d

    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(f, f) / 64

    def blur(t, pad):  # upfirdn2d(up=1, down=1): zero padding, then the (symmetric) FIR, per channel
        t = torch.nn.functional.pad(t, (pad,) * 4)
        patches = t.unfold(2, 4, 1).unfold(3, 4, 1)  # (N, C, H', W', 4, 4)
        return (patches * f).sum((-1, -2))

    conv3 = EqualConv2d(3, 5, 3, down=True)
    conv3.bias.data.normal_()
    w3 = conv3.weight * conv3.scale
    want3 = torch.nn.functional.conv2d(blur(x, 2), w3, conv3.bias, stride=2)
    torch.testing.assert_close(conv3(x), want3, rtol=1e-5, atol=1e-5)

    conv1 = EqualConv2d(3, 5, 1, bias=False, down=True)
    want1 = torch.nn.functional.conv2d(blur(x, 1)[..., ::2, ::2], conv1.weight * conv1.scale)
    torch.testing.assert_close(conv1(x), want1, rtol=1e-5, atol=1e-5)
