"""Autoencoder, VAE and beta-VAE on real MNIST digits at 32x32 (CPU, bounded steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import copy_first, shared
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from translate.core.checkpoints import read_weights
from translate.core.recipes import RecipeError, load_recipe
from translate.core.registry import NETS, create_net
from translate.training.train import Trainer

TINY = ["data.load_size=32", "data.crop_size=32", "data.channels=1", "data.flip=false", "data.num_workers=0",
        "model.nf=16", "train.batch_size=16", "train.epochs=100", "train.sample_every=0", "train.log_every=1"]
STEPS = 60


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """32 threes and 32 sevens in class folders (the ``images`` kind reads every image below)."""
    root = tmp_path_factory.mktemp("mnist")
    for d in ("3", "7"):
        copy_first(shared("mnist", "train", d), root / "train" / d, 32)
    return root


def train(recipe: str, digits: Path, run: Path, *overrides: str) -> list[dict]:
    """Train a recipe on the digits; returns the log lines."""
    Trainer(load_recipe(recipe, [f"data.path={digits}", *TINY, *overrides]), run, quiet=True).fit()
    return read_log(run)


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def tail(log: list[dict], key: str, n: int = 10) -> float:
    return sum(r[key] for r in log[-n:]) / n


@pytest.fixture(scope="module")
def ae_run(digits, tmp_path_factory) -> tuple[Path, list[dict]]:
    run = tmp_path_factory.mktemp("ae") / "run"
    return run, train("ae", digits, run, f"train.max_steps={STEPS}")


@pytest.fixture(scope="module")
def vae_run(digits, tmp_path_factory) -> tuple[Path, list[dict]]:
    run = tmp_path_factory.mktemp("vae") / "run"
    return run, train("vae", digits, run, f"train.max_steps={STEPS}")


@pytest.fixture(scope="module")
def vae_log(vae_run) -> list[dict]:
    return vae_run[1]


@pytest.mark.parametrize("name", NETS.names(role="autoencoder"))
@pytest.mark.parametrize("resolution", [16, 64])
def test_nets_follow_the_ae_interface(name, resolution):
    net = create_net(name, channels=3, resolution=resolution, z_dim=5, nf=8).eval()
    assert (net.z_dim, net.resolution, net.channels) == (5, resolution, 3)
    x = torch.rand(2, 3, resolution, resolution) * 2 - 1
    z = net.encode(x)
    assert z.shape == (2, 5)
    out = net(x)
    assert out.shape == x.shape and out.abs().max() <= 1
    assert torch.equal(out, net.decode(z))
    if hasattr(net, "encode_dist"):  # the VAEs: the code is the posterior's mean
        mu, logvar = net.encode_dist(x)
        assert torch.equal(mu, z) and logvar.shape == (2, 5)
    with pytest.raises(ValueError, match="power of two"):
        create_net(name, resolution=48)


def test_ae_reconstruction_falls_and_grid_is_input_and_reconstruction(ae_run):
    run, log = ae_run
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert tail(log, "recon") < log[0]["recon"] / 2, (log[0]["recon"], tail(log, "recon"))
    grid = Image.open(next((run / "samples").glob("step_*.png")))
    assert grid.size == (2 * 32, 4 * 32)


def test_exported_ae_rebuilds_from_weights_alone_and_reconstructs(ae_run, digits):
    run, log = ae_run
    weights = read_weights(run / "latest.safetensors")
    assert weights.nets == ["AE"]
    assert weights.arch["AE"] == {"net": "conv_ae", "kwargs": {"channels": 1, "resolution": 32, "z_dim": 16,
                                                                "nf": 16}}
    ae = weights.build("AE")
    x = torch.stack([pil_to_tensor(Image.open(p)) for p in sorted(digits.rglob("*.png"))[::8]]).float() / 127.5 - 1
    x = F.interpolate(x, size=32, mode="bilinear", antialias=True)
    with torch.no_grad():
        out = ae(x)
    err = (out - x).square().flatten(1).sum(1).mean().item()
    assert err < log[0]["recon"] / 2, (err, log[0]["recon"])


def test_vae_reconstruction_falls_and_logs_elbo(vae_run):
    run, vae_log = vae_run
    first, last = vae_log[0], vae_log[-1]
    assert tail(vae_log, "recon") < first["recon"] / 2, (first["recon"], tail(vae_log, "recon"))
    for r in vae_log:
        assert r["elbo"] == pytest.approx(r["recon"] + r["kl"], rel=1e-5)
        assert r["kl"] >= 0 and r["kl_weight"] == 1.0
    assert last["kl"] > 1  # the code is used
    grid = Image.open(next((run / "samples").glob("step_*.png")))
    assert grid.size == (3 * 32, 4 * 32)  # input | reconstruction | prior sample


def test_larger_beta_trades_reconstruction_for_kl(vae_log, digits, tmp_path):
    beta8 = train("vae", digits, tmp_path / "run", f"train.max_steps={STEPS}", "loss.beta=8")
    assert tail(beta8, "kl") < tail(vae_log, "kl")
    assert tail(beta8, "recon") > tail(vae_log, "recon")
    assert load_recipe("beta-vae").loss.beta == 4


def test_kl_warmup_raises_the_logged_weight(digits, tmp_path):
    log = train("beta-vae", digits, tmp_path / "run", "train.max_steps=6", "loss.kl_warmup_steps=4")
    assert [r["kl_weight"] for r in log] == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    assert all(r["loss"] == pytest.approx(r["recon"] + r["kl_weight"] * r["kl"], rel=1e-5) for r in log)


def test_capacity_variant_runs_with_finite_losses(digits, tmp_path):
    log = train("vae", digits, tmp_path / "run", "train.max_steps=5", "loss.capacity_max=8",
                "loss.capacity_steps=4", "loss.capacity_gamma=100")
    assert [r["capacity"] for r in log] == [0.0, 2.0, 4.0, 6.0, 8.0]
    for r in log:
        assert all(torch.isfinite(torch.tensor(v)) for v in r.values())
        assert r["loss"] == pytest.approx(r["recon"] + 100 * abs(r["kl"] - r["capacity"]), rel=1e-5)
    with pytest.raises(RecipeError, match="set one of them to 0"):
        load_recipe("vae", ["loss.capacity_max=8", "loss.kl_warmup_steps=4"])


@pytest.mark.parametrize("name", ["ae", "vae", "beta-vae"])
def test_shipped_recipes_load(name):
    r = load_recipe(name)
    assert (r.data.crop_size, r.data.channels, r.model.z_dim, r.train.lr) == (32, 1, 16, 0.001)
