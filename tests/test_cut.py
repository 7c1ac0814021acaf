"""CUT and FastCUT (PatchNCE) on real horse2zebra images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared, train_two_processes
from peers import seed_flipping
from PIL import Image
from typer.testing import CliRunner

from translate.cli.commands import app
from translate.core.checkpoints import read_weights
from translate.core.devices import Precision
from translate.core.losses import patch_nce
from translate.core.recipes import load_recipe
from translate.methods import get_method
from translate.training.train import Trainer

CPU = torch.device("cpu")
SMALL = ["data.load_size=64", "data.crop_size=64", "model.ngf=8", "model.ndf=8", "model.num_patches=64",
         "model.netF_nc=32", "train.batch_size=1", "data.num_workers=0", "train.sample_every=0", "train.log_every=1",
         "train.save_every=0", "train.device=cpu", "data.flip=false"]


def test_patch_nce_is_about_log_p_for_random_embeddings():
    """Unrelated embeddings: every key as likely, log P, plus half the logits' variance (lognormal sum);
    identical ones: the positive wins."""
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 256, 256, generator=g), dim=-1)
    k = F.normalize(torch.randn(4, 256, 256, generator=g), dim=-1)
    sigma2 = 1 / (256 * 0.07**2)  # the variance of q.k / t for random unit vectors in 256 dimensions
    assert abs(float(patch_nce(q, k).mean()) - (math.log(256) + sigma2 / 2)) < 0.15
    assert float(patch_nce(k, k).mean()) < 0.1 * math.log(256)


def test_identity_has_lower_nce_than_a_random_mapping(h2z4):
    """With the same untrained weights, an output equal to its input matches patch for patch; another
    image does not."""
    recipe = load_recipe("cut", [f"data.path={h2z4}", *SMALL])
    method = get_method("cut")(recipe, CPU, Precision("fp32", CPU))
    from translate.data import open_dataset

    ds = open_dataset(recipe.data, "unpaired")
    x = torch.stack([ds[0]["A"], ds[1]["A"]]).float()[..., :64, :64] / 127.5 - 1
    other = torch.stack([ds[2]["A"], ds[3]["A"]]).float()[..., :64, :64] / 127.5 - 1
    torch.manual_seed(0)
    with torch.no_grad():
        same, random_ = float(method.nce(x, x, False)), float(method.nce(x, other, False))
    assert same < random_ and random_ > 0.5 * math.log(64)


def test_nce_falls_and_the_weights_file_rebuilds_g(h2z4, tmp_path):
    """(Exact resume, projection heads included: test_contracts.py.)"""
    over = [f"data.path={h2z4}", *SMALL, "data.load_size=32", "data.crop_size=32", "train.epochs=100"]
    Trainer(load_recipe("cut", [*over, "train.max_steps=16"]), tmp_path / "whole", quiet=True).fit()
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    first, last = sum(r["NCE"] for r in log[:4]) / 4, sum(r["NCE"] for r in log[-4:]) / 4
    assert last < first, (first, last)
    assert "NCE_Y" in log[0]  # CUT's identity term
    G = read_weights(tmp_path / "whole" / "latest.safetensors").build("G")  # the weights file alone
    assert G(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_fastcut_trains_with_two_processes(h2z4, tmp_path):
    log = train_two_processes("fastcut", h2z4, tmp_path / "run",
                              [*SMALL, "data.load_size=32", "data.crop_size=32", "train.max_steps=2"], steps=2)
    assert "NCE_Y" not in log[-1] and math.isfinite(log[-1]["NCE"])


@pytest.mark.parametrize("antialias,antialias_up", [(True, True), (True, False), (False, False)])
def test_import_takes_the_cut_codes_generators(antialias, antialias_up, tmp_path):
    """Generators the CUT code built (its default anti-aliased layout, --no_antialias_up, and both off:
    the reference's layout), saved as it saves them on a GPU and on a CPU (``module.`` keys):
    `translate import` reads them, and our net computes what theirs does."""
    from peers import official

    with official("cut-ref"):
        from models import networks

        torch.manual_seed(0)
        theirs = networks.define_G(3, 3, 8, "resnet_6blocks", "instance", False, "xavier", 0.02,
                                   no_antialias=not antialias, no_antialias_up=not antialias_up).eval()
    plain, wrapped = tmp_path / "latest_net_G.pth", tmp_path / "cpu_net_G.pth"
    torch.save(theirs.state_dict(), plain)
    torch.save({f"module.{k}": v for k, v in theirs.state_dict().items()}, wrapped)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        want = theirs(x)
    for ckpt in (plain, wrapped):
        out = tmp_path / f"{ckpt.stem}.safetensors"
        res = CliRunner().invoke(app, ["import", str(ckpt), "-o", str(out)])
        assert res.exit_code == 0, res.output
        assert ("anti-aliased" in res.output) == antialias, res.output
        with torch.no_grad():
            torch.testing.assert_close(read_weights(out).build("G")(x), want, rtol=0, atol=1e-6)


def test_imported_cut_generator_runs_as_the_cut_codes_test_py(tmp_path):
    """The CUT code's default generator saved by the CUT code, its own test.py on 3 horse photos, and
    `translate import` + `translate run` on the same photos: the same images (>= 40 dB; the CUT code
    truncates to 8 bits where we round)."""
    from peers import official, run_official

    data = tmp_path / "h2z"
    for split in ("testA", "testB", "trainA", "trainB"):  # its test.py opens the training set too
        (data / split).mkdir(parents=True)
        for f in sorted(shared("horse2zebra", "testA").iterdir())[:3]:
            Image.open(f).convert("RGB").resize((64, 64), Image.BICUBIC).save(data / split / f"{f.stem}.png")
    with official("cut-ref"):
        from models import networks

        torch.manual_seed(0)
        theirs = networks.define_G(3, 3, 16, "resnet_9blocks", "instance", False, "xavier", 0.02)
    (tmp_path / "ck" / "h2z").mkdir(parents=True)
    torch.save(theirs.state_dict(), tmp_path / "ck" / "h2z" / "latest_net_G.pth")
    ck, results = tmp_path / "ck", tmp_path / "res"
    run_official("cut-ref", "test.py", ["--dataroot", str(data), "--name", "h2z", "--CUT_mode", "CUT", "--ngf", "16",
                                        "--checkpoints_dir", str(ck), "--results_dir", str(results), "--gpu_ids", "-1",
                                        "--load_size", "64", "--crop_size", "64", "--num_test", "3"])
    res = CliRunner().invoke(app, ["import", str(tmp_path / "ck" / "h2z" / "latest_net_G.pth"), "-o",
                                   str(tmp_path / "g.safetensors")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["run", str(data / "testA"), str(tmp_path / "ours"), "-w",
                                   str(tmp_path / "g.safetensors"), "--format", "png", "-q"])
    assert res.exit_code == 0, res.output
    official_out = results / "h2z" / "test_latest" / "images" / "fake_B"
    for f in sorted((data / "testA").iterdir()):
        a = np.asarray(Image.open(official_out / f.name), dtype=np.float64)
        b = np.asarray(Image.open(tmp_path / "ours" / f.name), dtype=np.float64)
        assert a.shape == b.shape == (64, 64, 3)
        psnr = 10 * np.log10(255**2 / max(np.mean((a - b) ** 2), 1e-12))
        print(f"{f.name}: {psnr:.1f} dB")
        assert psnr >= 40, (f.name, psnr)


def test_cut_loads_whole_images_in_the_decay_epochs(h2z4):
    """As the CUT code's fine-tuning phase: resize-and-crop while the learning rate is constant, then
    whole images resized to crop_size (data.whole_in_decay, on in the cut and fastcut recipes)."""
    from pathlib import Path

    recipe = load_recipe("cut", [f"data.path={h2z4}", *SMALL, "data.load_size=72", "train.epochs=1",
                                 "train.epochs_decay=1"])
    assert recipe.data.whole_in_decay
    trainer = Trainer(recipe, Path("unused"), quiet=True)
    sizes = []
    for epoch in (0, 1):
        trainer.epoch = epoch
        batch = next(trainer._epoch_batches())
        sizes.append((trainer.dataset[0]["A"].shape[-1], batch["A"].shape[-1]))
    assert sizes == [(72, 64), (64, 64)]


def test_fastcut_flipped_step_has_the_nce_of_an_unflipped_one_for_a_copying_generator(h2z4, monkeypatch):
    """FastCUT flips only G's input and compares G's output, flipped back, with the unflipped input:
    for a generator that copies its input (and features that commute with a mirror: the padded
    input and a stride-1 conv of mirror-symmetric weights), a flipped step's NCE is an unflipped
    step's. (Flipping the input itself, as this code once did, paired each patch with its mirror.)"""
    torch.manual_seed(0)
    recipe = load_recipe("fastcut", [f"data.path={h2z4}", *SMALL, "model.nce_layers=[0, 4]", "train.lr=0"])
    method = get_method("cut")(recipe, CPU, Precision("fp32", CPU))
    G, F_ = method.nets["G"], method.nets["F"]
    with torch.no_grad():
        for i in (1, 4):
            G.model[i].weight.copy_((G.model[i].weight + G.model[i].weight.flip(-1)) / 2)
    net_forward, heads_forward, ids = G.forward, F_.forward, []
    monkeypatch.setattr(G, "forward", lambda x, layers=None: x if layers is None else net_forward(x, layers))
    monkeypatch.setattr(F_, "forward", lambda feats, n, given=None: heads_forward(feats, n, given or ids or None))
    from translate.data import open_dataset

    ds = open_dataset(recipe.data, "unpaired")
    batch = {k: torch.stack([ds[0][k]]).float()[..., :64, :64] / 127.5 - 1 for k in ("A", "B")}
    ids[:] = F_(G(batch["A"], layers=[0, 4]), 64, None)[1]  # the same positions in every call
    nce = {}
    for flipped in (False, True):
        torch.manual_seed(seed_flipping(flipped))
        nce[flipped] = float(method.train_step(batch)["NCE"])
    assert nce[True] == pytest.approx(nce[False], rel=1e-6), nce
    a, mirrored = batch["A"], batch["A"].flip(3)
    with torch.no_grad():  # the old pairing: keys from the flipped input
        assert float(method.nce(mirrored, mirrored, True)) > 1.2 * float(method.nce(a, mirrored, True))
