"""The training loop with real methods on a few real images (CPU, bounded steps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from translate.core.checkpoints import read_weights
from translate.core.errors import TranslateError
from translate.core.recipes import load_recipe
from translate.core.registry import create_net
from translate.data.sampler import ResumableSampler
from translate.training.train import Trainer

TINY_PIX2PIX = ["data.load_size=128", "data.crop_size=128", "data.flip=false", "data.num_workers=0",
                "model.generator=unet_128", "model.ngf=16", "model.ndf=16", "model.norm=instance",
                "model.dropout=false", "train.batch_size=4", "train.lr=0.001", "train.log_every=1",
                "train.sample_every=0"]
TINY_CYCLEGAN = ["data.load_size=72", "data.crop_size=64", "data.num_workers=0", "model.generator=resnet_6blocks",
                 "model.ngf=8", "model.ndf=8", "train.batch_size=2", "train.log_every=1", "train.sample_every=0"]


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def pix2pix_l1(trainer: Trainer) -> float:
    """L1 between G(A) and B on the whole (4-pair) training set, without augmentation."""
    batch = trainer.batches.fixed()
    G = trainer.method.nets["G"]
    with torch.no_grad():
        G.eval()
        out = F.l1_loss(G(batch["A"]), batch["B"]).item()
        G.train()
    return out


def test_pix2pix_overfits_four_pairs(pairs4, tmp_path):
    recipe = load_recipe("pix2pix", [f"data.path={pairs4}", "train.max_steps=60", *TINY_PIX2PIX])
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    before = pix2pix_l1(trainer)
    result = trainer.fit()
    after = pix2pix_l1(trainer)
    assert result.step == 60
    assert after < before / 2, (before, after)
    # the run folder holds what the docs promise, and the sample grid is input | output | target
    run = tmp_path / "run"
    assert {"recipe.toml", "log.jsonl", "latest.safetensors", "latest.state.pt"} <= {p.name for p in run.iterdir()}
    from PIL import Image

    grid = Image.open(next((run / "samples").glob("step_*.png")))
    assert grid.size == (3 * 128, 4 * 128)
    assert len(read_log(run)) == 60


def test_cyclegan_cycle_loss_falls(h2z4, tmp_path):
    recipe = load_recipe("cyclegan", [f"data.path={h2z4}", "train.max_steps=50", "train.lr=0.001",
                                      *TINY_CYCLEGAN])
    Trainer(recipe, tmp_path / "run", quiet=True).fit()
    log = read_log(tmp_path / "run")
    cycle = [(r["cycle_A"] + r["cycle_B"]) / 2 for r in log]
    first, last = sum(cycle[:5]) / 5, sum(cycle[-5:]) / 5
    assert last < 0.75 * first, (first, last)
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in log)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(h2z4, tmp_path, monkeypatch):
    recipe = load_recipe("cyclegan", [f"data.path={h2z4}", *TINY_CYCLEGAN, "train.max_steps=6"])
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    real_step = trainer.method.train_step

    def step(batch):
        losses = real_step(batch)
        if trainer.step == 2:  # the third step diverges
            losses["G_A"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(trainer.method, "train_step", step)
    with pytest.raises(TranslateError, match=r"loss G_A became nan at step 3.*last good checkpoint"):
        trainer.fit()
    meta = read_weights(tmp_path / "run" / "latest.safetensors").meta
    assert meta["step"] == "2"  # written at the end of epoch 0, before the NaN


def test_nan_guard_read_later_names_the_steps_and_saves_nothing_bad(h2z4, tmp_path):
    """On CUDA the guard reads the device only at log steps and before saves (no wait per step):
    the flags pile up in between. Driven here by hand, as the CPU reads every step."""
    recipe = load_recipe("cyclegan", [f"data.path={h2z4}", *TINY_CYCLEGAN, "train.max_steps=6"])
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    good, bad = torch.tensor([1.0, 2.0]), torch.tensor([1.0, float("inf")])
    for step, values in zip((1, 2, 3), (good, bad, good), strict=True):
        trainer.step = step
        trainer.guard.add(["G_A", "D_A"], values, step, read=False)
    with pytest.raises(TranslateError, match=r"loss .* between steps 1 and 3: training diverged"):
        trainer.save()  # a save reads the flags first and writes nothing
    assert not (tmp_path / "run" / "latest.safetensors").exists()
    trainer.step = 4
    trainer.guard.add(["G_A", "D_A"], good, 4, read=True)  # a new window, all finite


def test_a_nan_gradient_under_finite_losses_stops_and_names_the_parameter(h2z4, tmp_path):
    """A gradient turns NaN at step 3 while every loss is finite (as a bf16 kernel once did): training
    stops there in one line naming the net and the parameter; the checkpoint on disk is step 2's,
    every weight finite."""
    recipe = load_recipe("cyclegan", [f"data.path={h2z4}", *TINY_CYCLEGAN, "train.max_steps=6"])
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    weight = trainer.method.net("G_A").model[1].weight  # the first conv after the reflection pad
    weight.register_hook(lambda g: g * float("nan") if trainer.step == 2 else g)
    with pytest.raises(TranslateError, match=r"^a gradient of G_A \(model\.1\.weight\) became nan at step 3 "
                                             r"\(every loss finite\): training diverged .* last good checkpoint"):
        trainer.fit()
    assert all(math.isfinite(v) for r in read_log(tmp_path / "run") for k, v in r.items() if k != "step")
    saved = read_weights(tmp_path / "run" / "latest.safetensors")
    assert saved.meta["step"] == "2"
    assert all(bool(torch.isfinite(t).all()) for net in saved.tensors.values() for t in net.values())


def test_weights_gone_bad_without_a_bad_gradient_are_never_saved(h2z4, tmp_path, monkeypatch):
    """An inf that reached a weight some other way (a buffer, an EMA copy) after the step's losses and
    gradients: the save refuses in one line naming it, and writes neither the weights nor the state."""
    recipe = load_recipe("cyclegan", [f"data.path={h2z4}", *TINY_CYCLEGAN, "train.max_steps=1"])
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    real_step = trainer.method.train_step

    def step(batch):
        losses = real_step(batch)
        with torch.no_grad():
            trainer.method.net("D_B").model[0].bias[3] = float("inf")
        return losses

    monkeypatch.setattr(trainer.method, "train_step", step)
    with pytest.raises(TranslateError, match=r"^weight model\.0\.bias of D_B became nan or inf by step 1: not saved"):
        trainer.fit()
    assert not any((tmp_path / "run").glob("latest.*"))


def test_cpu_fp32_training_uses_winograd_with_the_same_weight_names(h2z4):
    from translate.nets.winograd import WinogradConv2d, winograd_pays

    # ngf 32: the blocks have 128 channels, the narrowest use_winograd takes
    recipe = load_recipe("cyclegan", [f"data.path={h2z4}", *TINY_CYCLEGAN, "model.ngf=32"])
    trainer = Trainer(recipe, Path("unused"), quiet=True)
    G = trainer.method.net("G_A")
    swapped = sum(isinstance(m, WinogradConv2d) for m in G.modules())
    assert swapped == (12 if winograd_pays() else 0)  # 6 blocks x 2 convs
    fresh = create_net(trainer.method.arch("G_A")["net"], **trainer.method.arch("G_A")["kwargs"])
    assert list(G.state_dict()) == list(fresh.state_dict())


def test_sampler_skips_in_global_order_across_world_sizes():
    one = ResumableSampler(10, seed=3)
    one.set_epoch(1)
    order = list(one)
    assert sorted(order) == list(range(10))
    # two ranks after 4 consumed samples take the rest of the same permutation, interleaved
    parts = []
    for rank in (0, 1):
        s = ResumableSampler(10, rank=rank, world_size=2, seed=3)
        s.set_epoch(1, consumed=4)
        parts.append(list(s))
    assert [x for pair in zip(*parts, strict=True) for x in pair] == order[4:]
    two = ResumableSampler(10, seed=3)
    two.set_epoch(2)
    assert list(two) != order


def test_bad_data_is_one_clear_error(tmp_path):
    with pytest.raises(TranslateError, match="data folder not found"):
        Trainer(load_recipe("cyclegan", [f"data.path={tmp_path / 'nope'}"]), tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TranslateError, match="unpaired training needs trainA/ and trainB/"):
        Trainer(load_recipe("cyclegan", [f"data.path={tmp_path / 'empty'}"]), tmp_path / "run")
    with pytest.raises(TranslateError, match="no images found"):
        Trainer(load_recipe("pix2pix", [f"data.path={tmp_path / 'empty'}"]), tmp_path / "run")
    (tmp_path / "empty" / "trainA").mkdir()
    (tmp_path / "empty" / "trainB").mkdir()
    with pytest.raises(TranslateError, match="no images found"):
        Trainer(load_recipe("cyclegan", [f"data.path={tmp_path / 'empty'}"]), tmp_path / "run")


@pytest.mark.parametrize(("keep_last", "kept"), [(2, [3, 4]), (0, [1, 2, 3, 4])])
def test_keep_last_numbered_checkpoints(h2z4, tmp_path, keep_last, kept):
    # 4 images at batch 2: 2 steps an epoch; a numbered copy at the end of epochs 2, 3 and 4
    recipe = load_recipe("cyclegan", [f"data.path={h2z4}", *TINY_CYCLEGAN, "train.epochs=4", "train.epochs_decay=0",
                                      "train.save_every=1", f"train.keep_last={keep_last}", "data.max_dataset_size=4"])
    result = Trainer(recipe, tmp_path / "run", quiet=True).fit()
    names = sorted(p.stem for p in (tmp_path / "run").glob("epoch_*.safetensors"))
    assert names == [f"epoch_{e:03d}" for e in kept]
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert result.run_bytes == sum(p.stat().st_size for p in files)
