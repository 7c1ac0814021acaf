"""DCGAN and the class-conditional GAN: nets, training on a few MNIST digits (32x32, CPU), weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import copy_first, shared

from translate.core.checkpoints import read_weights
from translate.core.errors import TranslateError
from translate.core.recipes import load_recipe
from translate.core.registry import create_net
from translate.training.train import Trainer

TINY = ["data.load_size=32", "data.crop_size=32", "data.channels=1", "data.flip=false", "data.num_workers=0",
        "model.z_dim=32", "model.ngf=16", "model.ndf=16", "train.batch_size=16", "train.sample_every=0",
        "train.log_every=1", "train.epochs=100"]
DIGITS = ("0", "1")


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    """32 zeros and 32 ones, one subfolder per class under train/."""
    root = tmp_path / "mnist2"
    for d in DIGITS:
        copy_first(shared("mnist", "train", d), root / "train" / d, 32)
    return root


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def labels(n: int, k: int) -> torch.Tensor:
    return torch.full((n,), k, dtype=torch.long)


@pytest.mark.parametrize("resolution", [16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_nets_shapes_and_projection(resolution, channels):
    G = create_net("dcgan_g", z_dim=8, resolution=resolution, channels=channels, ngf=4, num_classes=3).eval()
    D = create_net("dcgan_d", resolution=resolution, channels=channels, ndf=4, norm="none", num_classes=3)
    z = torch.randn(5, 8)
    x = G(z, torch.arange(5) % 3)
    assert x.shape == (5, channels, resolution, resolution)
    assert x.abs().max() <= 1
    assert (G.z_dim, G.resolution, G.channels, G.num_classes) == (8, resolution, channels, 3)
    score = D(x, labels(5, 0))
    assert score.shape == (5,)
    # the projection term: the label moves the score by exactly <embed(y), phi(x)>
    phi = D.main(x).flatten(1)
    assert torch.allclose(D(x, labels(5, 1)) - score, phi @ (D.embed.weight[1] - D.embed.weight[0]), atol=1e-5)


def test_net_rejects_bad_resolution():
    with pytest.raises(ValueError, match="power of two"):
        create_net("dcgan_g", resolution=24)
    with pytest.raises(ValueError, match="power of two"):
        create_net("dcgan_d", resolution=8)


def test_truncation_zero_is_one_image_for_every_seed():
    G = create_net("dcgan_g", z_dim=16, resolution=16, channels=1, ngf=8).eval()
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = G(z, truncation=0.0)
        assert torch.equal(out, out[:1].expand_as(out))
        assert not torch.allclose(G(z), G(z, truncation=0.5))


def test_dcgan_trains_and_samples_change(digits, tmp_path):
    steps = 100
    recipe = load_recipe("dcgan", [f"data.path={digits}", f"train.max_steps={steps}", *TINY])
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    before = trainer.method.sample({})
    trainer.fit()
    after = trainer.method.sample({})
    # 4 rows (train.n_samples) of 8 images from the fixed z, as RGB for the grid
    assert before.shape == after.shape == (4, 3, 32, 8 * 32)
    assert (after - before).abs().mean() > 0.1
    log = read_log(tmp_path / "run")
    assert len(log) == steps
    assert all(math.isfinite(r[k]) for r in log for k in ("G", "D_real", "D_fake"))

    wf = read_weights(tmp_path / "run" / "latest.safetensors")
    assert wf.nets == ["G"]
    G = wf.build("G")
    assert (G.z_dim, G.resolution, G.channels, G.num_classes) == (32, 32, 1, 0)
    with torch.no_grad():
        out = G(torch.randn(3, 32), truncation=0.0)
    assert torch.equal(out, out[:1].expand_as(out))


def test_cgan_depends_on_label_and_rebuilds_from_weights(digits, tmp_path):
    steps = 120
    # lr 5e-4: at 2e-4 these tiny nets need ~200 steps before G's output depends clearly on the label
    recipe = load_recipe("cgan", [f"data.path={digits}", f"train.max_steps={steps}", *TINY, "train.lr=0.0005"])
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    before = trainer.method.sample({})
    trainer.fit()
    after = trainer.method.sample({})
    assert after.shape == (2, 3, 32, 8 * 32)  # one row per class
    assert (after - before).abs().mean() > 0.1
    log = read_log(tmp_path / "run")
    assert len(log) == steps
    assert all(math.isfinite(r[k]) for r in log for k in ("G", "D_real", "D_fake"))

    wf = read_weights(tmp_path / "run" / "latest.safetensors")
    assert json.loads(wf.meta["info"])["classes"] == list(DIGITS)
    G = wf.build("G")  # from the file alone
    assert (G.z_dim, G.resolution, G.channels, G.num_classes) == (32, 32, 1, 2)
    z = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        zeros, ones = G(z, labels(8, 0)), G(z, labels(8, 1))
        assert (zeros - ones).abs().mean() > 0.1
        # truncation 0: every seed gives its class's one image
        a = G(z, labels(8, 1), truncation=0.0)
        assert torch.equal(a, a[:1].expand_as(a))


def test_cgan_needs_class_subfolders(digits, tmp_path):
    flat = tmp_path / "flat"
    copy_first(digits / "train" / "0", flat / "train", 4)
    with pytest.raises(TranslateError, match="one subfolder per class") as e:
        Trainer(load_recipe("cgan", [f"data.path={flat}", *TINY]), tmp_path / "run", quiet=True)
    assert "\n" not in str(e.value)
    one = tmp_path / "one"
    copy_first(digits / "train" / "0", one / "train" / "0", 4)
    with pytest.raises(TranslateError, match="at least 2 classes") as e:
        Trainer(load_recipe("cgan", [f"data.path={one}", *TINY]), tmp_path / "run", quiet=True)
    assert "\n" not in str(e.value)
