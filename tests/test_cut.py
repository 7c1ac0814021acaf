"""CUT and FastCUT (PatchNCE) on real horse2zebra images."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from translate.checkpoints import read_weights
from translate.devices import Precision
from translate.losses import patch_nce
from translate.methods import get_method
from translate.recipes import load_recipe
from translate.train import Trainer

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
    assert abs(float(patch_nce(q, k)) - (math.log(256) + sigma2 / 2)) < 0.15
    assert float(patch_nce(k, k)) < 0.1 * math.log(256)


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
    sets = [f"--set={s}" for s in [*SMALL, "data.load_size=32", "data.crop_size=32", "train.max_steps=2"]]
    cmd = [sys.executable, "-m", "translate", "train", "--devices=2", "--recipe=fastcut", f"--data={h2z4}",
           f"--out={tmp_path / 'run'}", *sets]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0 and "done: step 2" in res.stderr, res.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "NCE_Y" not in log[-1] and math.isfinite(log[-1]["NCE"])


def test_import_takes_cut_generators_of_the_reference_layout(tmp_path):
    """The CUT code saves its generator's state dict with the reference's keys (trained with
    --no_antialias --no_antialias_up): it imports with the same outputs; its anti-aliased default is a
    one-line error."""
    from typer.testing import CliRunner

    from translate.cli import app
    from translate.nets import init_weights
    from translate.registry import create_net

    torch.manual_seed(0)
    net = init_weights(create_net("resnet_9blocks", ngf=8)).eval()
    torch.save(net.state_dict(), tmp_path / "latest_net_G.pth")
    runner = CliRunner()
    res = runner.invoke(app, ["import", str(tmp_path / "latest_net_G.pth"), "-o", str(tmp_path / "g.safetensors")])
    assert res.exit_code == 0, res.output
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(read_weights(tmp_path / "g.safetensors").build("G")(x), net(x), rtol=0, atol=1e-6)
    torch.save({**net.state_dict(), "model.7.filt": torch.ones(128, 1, 3, 3)}, tmp_path / "aa.pth")
    res = runner.invoke(app, ["import", str(tmp_path / "aa.pth"), "-o", str(tmp_path / "aa.safetensors")])
    assert res.exit_code == 1 and "anti-aliased" in res.output and "--no_antialias" in res.output
