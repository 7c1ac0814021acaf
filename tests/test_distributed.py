"""DistributedDataParallel on the CPU (gloo): 2 processes train as 1 with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from translate.recipes import load_recipe
from translate.train import Trainer, resume

# No randomness that depends on the rank: no flip, crop = image size, no dropout. Norm "none",
# because InstanceNorm makes the preceding conv biases' true gradient zero, and Adam turns the
# rounding noise there into +-lr steps whose sign depends on summation order.
EXACT = ["data.load_size=128", "data.crop_size=128", "data.flip=false", "data.num_workers=0",
         "model.generator=unet_128", "model.ngf=8", "model.ndf=8", "model.norm=none", "model.dropout=false",
         "train.batch_size=2", "train.log_every=1", "train.sample_every=0", "train.device=cpu"]


def launch(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "translate", "train", f"--devices={nproc}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def state_nets(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return torch.load(run / "latest.state.pt", weights_only=True)["nets"]


def assert_close_nets(a: Path, b: Path, atol: float = 1e-5) -> None:
    na, nb = state_nets(a), state_nets(b)
    for net in na:
        for k, v in na[net].items():
            assert torch.allclose(v.float(), nb[net][k].float(), atol=atol), (net, k)


def test_two_processes_match_one(pairs4, tmp_path):
    sets = [f"--set={s}" for s in [*EXACT, "train.max_steps=3"]]
    res = launch(["--recipe=pix2pix", f"--data={pairs4}", f"--out={tmp_path / 'two'}", *sets], nproc=2)
    assert "world size 2" in res.stderr
    assert res.stderr.count("done: step 3") == 1  # rank 0 alone reports
    Trainer(load_recipe("pix2pix", [f"data.path={pairs4}", *EXACT, "train.max_steps=3"]), tmp_path / "one",
            quiet=True).fit()
    assert_close_nets(tmp_path / "one", tmp_path / "two")
    # logged losses are the global batch's: the same as one process's
    one = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        assert abs(a["G_L1"] - b["G_L1"]) < 1e-5
    assert not list((tmp_path / "two").glob("*.tmp"))


def test_resume_with_another_world_size(pairs4, tmp_path):
    base = [f"data.path={pairs4}", *EXACT]
    launch(["--recipe=pix2pix", f"--data={pairs4}", f"--out={tmp_path / 'split'}",
            *[f"--set={s}" for s in [*EXACT, "train.max_steps=3"]]], nproc=2)
    resume(tmp_path / "split", ["train.max_steps=5"], quiet=True)  # one process from here on
    Trainer(load_recipe("pix2pix", [*base, "train.max_steps=5"]), tmp_path / "one", quiet=True).fit()
    assert_close_nets(tmp_path / "one", tmp_path / "split")
