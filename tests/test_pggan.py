"""Progressive GAN: networks that grow with fade-in, the phase schedule, export and exact resume
(CPU, tiny widths, a few MNIST digits at 32x32, 3 fade + 3 stable steps per size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import copy_first, shared

from translate.core.checkpoints import load_state, read_weights
from translate.core.devices import Precision
from translate.core.errors import TranslateError
from translate.core.recipes import load_recipe
from translate.core.registry import create_net
from translate.methods import get_method
from translate.methods.pggan import phase_at
from translate.training.train import Trainer, resume

STEPS = 20  # 4x4: steps 0-2; 8x8 fades in 3-5; 16x16 fades in 9-11; 32x32 fades in 15-17
TINY = ["data.load_size=32", "data.crop_size=32", "data.channels=1", "data.flip=false", "data.num_workers=0",
        "model.z_dim=16", "model.fmap_base=128", "model.fmap_max=32", "model.fade_steps=3",
        "model.stable_steps=3", "train.batch_size=16", "train.sample_every=0", "train.log_every=1",
        "train.n_samples=2"]


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def tiny_recipe(data: Path, steps: int):
    return load_recipe("pggan", [f"data.path={data}", f"train.max_steps={steps}", *TINY])


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """32 MNIST digits (16 zeros, 16 ones) under train/<digit>/."""
    root = tmp_path_factory.mktemp("mnist")
    for digit in ("0", "1"):
        copy_first(shared("mnist", "train", digit), root / "train" / digit, 16)
    return root


@pytest.fixture(scope="module")
def full_run(digits, tmp_path_factory) -> dict:
    """One uninterrupted tiny run through every size, with sample grids before and after."""
    run = tmp_path_factory.mktemp("full") / "run"
    trainer = Trainer(tiny_recipe(digits, STEPS), run, quiet=True)
    before = trainer.method.sample({})
    trainer.fit()
    return {"run": run, "trainer": trainer, "before": before, "after": trainer.method.sample({})}


def test_nets_fade_in_starts_from_the_previous_size():
    """At alpha 0 a new level changes nothing: G gives the previous size upsampled, D the previous
    size's score of the average-pooled image."""
    G = create_net("pggan_g", z_dim=8, resolution=16, channels=1, fmap_base=64, fmap_max=16)
    D = create_net("pggan_d", resolution=16, channels=1, fmap_base=64, fmap_max=16)
    z, x = torch.randn(4, 8), torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        G.set_phase(1, 1.0)
        D.set_phase(1, 1.0)
        g_prev, d_prev = G(z, upsample=False), D(F.avg_pool2d(x, 2))
        G.set_phase(2, 0.0)
        D.set_phase(2, 0.0)
        torch.testing.assert_close(G(z, upsample=False), F.interpolate(g_prev, scale_factor=2))
        torch.testing.assert_close(D(x), d_prev)
        G.set_phase(2, 0.5)
        assert not torch.allclose(G(z, upsample=False), F.interpolate(g_prev, scale_factor=2))
    # equalised learning rate: weights are stored N(0, 1) and scaled in the forward pass
    assert 0.8 < G.blocks[1][0].weight.std().item() < 1.2
    G.set_phase(0, 1.0)
    assert G(z).shape == (4, 1, 16, 16)  # always the full resolution, upsampled from 4x4


def test_schedule_grows_through_every_size(full_run):
    log = read_log(full_run["run"])
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    expected = [phase_at(s, 0, 3, 3, 3) for s in range(STEPS)]
    assert [r["resolution"] for r in log] == [4 * 2**level for level, _ in expected]
    assert [r["alpha"] for r in log] == pytest.approx([alpha for _, alpha in expected])
    sizes = [r["resolution"] for r in log]
    assert sizes == sorted(sizes) and {4, 8, 16, 32} <= set(sizes)
    fading = [r for r in log if 0 < r["alpha"] < 1]
    assert fading and all(r["resolution"] > 4 for r in fading)
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in log)
    before, after = full_run["before"], full_run["after"]
    assert before.shape == after.shape == (2, 3, 32, 8 * 32)
    assert (before - after).abs().mean() > 0.05


def test_exported_generator_rebuilds_at_the_last_phase(full_run):
    weights = read_weights(full_run["run"] / "latest.safetensors")
    assert weights.nets == ["G"]
    G = weights.build("G")
    assert (int(G.level), float(G.alpha)) == (3, 1.0)  # 32x32, faded in
    assert (G.z_dim, G.resolution, G.channels, G.num_classes) == (16, 32, 1, 0)
    z = torch.randn(3, 16)
    with torch.no_grad():
        out = G(z)
        assert out.shape == (3, 1, 32, 32) and out.min() >= -1 and out.max() <= 1
        nets = full_run["trainer"].method.nets
        torch.testing.assert_close(out, nets["G_ema"](z))  # the moving average is what ships
        assert not torch.allclose(out, nets["G"].eval()(z))
        same = G(z, truncation=0.0)
    torch.testing.assert_close(same[0], same[1])
    torch.testing.assert_close(same[0], same[2])


def test_g_ema_is_the_official_moving_average_of_g(digits, tmp_path):
    """After a step, G_ema = beta G_ema + (1 - beta) G, with G's phase; beta is 0.999 by default (the
    official Gs, G_smoothing 0.999), 0.9 here so that one step moves it well above rounding."""
    assert tiny_recipe(digits, 1).loss.ema_beta == 0.999
    recipe = load_recipe("pggan", [f"data.path={digits}", "train.max_steps=1", *TINY, "loss.ema_beta=0.9"])
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    nets = trainer.method.nets
    start = {k: v.clone() for k, v in nets["G_ema"].state_dict().items()}
    assert all(torch.equal(start[k], v) for k, v in nets["G"].state_dict().items())
    trainer.fit()
    G, G_ema = nets["G"].state_dict(), nets["G_ema"].state_dict()
    weights = [k for k in G if k.endswith("weight")]
    assert weights and any(not torch.equal(G[k], start[k]) for k in weights)  # G moved (its 4x4 layers)
    for k in weights:
        torch.testing.assert_close(G_ema[k], 0.9 * start[k] + 0.1 * G[k], rtol=0, atol=1e-6)
    assert (int(G_ema["level"]), float(G_ema["alpha"])) == (int(G["level"]), float(G["alpha"]))


def test_resume_mid_fade_in_equals_uninterrupted_run(full_run, digits, tmp_path):
    split = tmp_path / "split"
    Trainer(tiny_recipe(digits, 5), split, quiet=True).fit()  # the 5th step fades 8x8 in at alpha 1/3
    stopped = read_weights(split / "latest.safetensors").build("G")
    assert (int(stopped.level), float(stopped.alpha)) == pytest.approx((1, 1 / 3))
    assert stopped(torch.randn(2, 16)).shape == (2, 1, 32, 32)
    assert load_state(split / "latest.state.pt")["extra"] == {"step": 5}
    resume(split, [f"train.max_steps={STEPS}"], quiet=True)
    full, resumed = read_log(full_run["run"]), read_log(split)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(full, resumed, strict=True):
        a.pop("images_per_s"), b.pop("images_per_s")
        assert a == b
    wa, wb = (read_weights(run / "latest.safetensors").tensors["G"] for run in (full_run["run"], split))
    for k, v in wa.items():
        assert torch.equal(v, wb[k]), k


def test_crop_size_4_is_one_line_error():
    """4 is a power of two the nets take (their first level), but below the method's smallest, 8; other
    bad sizes, for every recipe: test_contracts.py."""
    size = 4
    recipe = load_recipe("pggan", [f"data.load_size={size}", f"data.crop_size={size}"])
    cpu = torch.device("cpu")
    with pytest.raises(TranslateError, match=rf"data.crop_size {size} must be a power of two >= 8") as err:
        get_method("pggan")(recipe, cpu, Precision("fp32", cpu))
    assert "\n" not in str(err.value)
