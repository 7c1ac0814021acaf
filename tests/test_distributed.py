"""DistributedDataParallel on the CPU (gloo): 2 processes of batch 1 train as 1 process of batch 2.

What README promises: the same images in every global step, gradients averaged over the global
batch, losses logged for the global batch; weights equal up to float summation order. Not promised:
the same random crops, flips and dropout (each process draws its own), so these tests switch them off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from translate.core.recipes import load_recipe
from translate.training.train import Trainer, resume

# No randomness that depends on the rank: no flip, crop = image size, no dropout. Norm "none",
# because InstanceNorm makes the preceding conv biases' true gradient zero, and Adam turns the
# rounding noise there into +-lr steps whose sign depends on summation order. fp32: in bf16 (what
# auto picks on a CPU with native bf16) two half batches round otherwise than one whole batch.
EXACT = ["data.load_size=128", "data.crop_size=128", "data.flip=false", "data.num_workers=0",
         "model.generator=unet_128", "model.ngf=8", "model.ndf=8", "model.norm=none", "model.dropout=false",
         "train.log_every=1", "train.sample_every=0", "train.device=cpu", "train.precision=fp32"]
PER_PROCESS = "train.batch_size=1"  # 2 processes x 1 = the global batch of one process with:
ONE_PROCESS = "train.batch_size=2"


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
    sets = [f"--set={s}" for s in [*EXACT, PER_PROCESS, "train.max_steps=3"]]
    res = launch(["--recipe=pix2pix", f"--data={pairs4}", f"--out={tmp_path / 'two'}", *sets], nproc=2)
    assert "2 process(es) x batch 1 = global batch 2" in res.stderr
    assert "lr 0.0002 (train.lr 0.0002, lr_scale none" in res.stderr
    assert res.stderr.count("done: step 3") == 1  # rank 0 alone reports
    Trainer(load_recipe("pix2pix", [f"data.path={pairs4}", *EXACT, ONE_PROCESS, "train.max_steps=3"]),
            tmp_path / "one", quiet=True).fit()
    assert_close_nets(tmp_path / "one", tmp_path / "two")
    # logged losses are the global batch's: the same as one process's
    one = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        assert abs(a["G_L1"] - b["G_L1"]) < 1e-5
    assert not list((tmp_path / "two").glob("*.tmp"))


def test_resume_with_another_world_size(pairs4, tmp_path):
    base = [f"data.path={pairs4}", *EXACT, ONE_PROCESS]
    launch(["--recipe=pix2pix", f"--data={pairs4}", f"--out={tmp_path / 'split'}",
            *[f"--set={s}" for s in [*EXACT, PER_PROCESS, "train.max_steps=3"]]], nproc=2)
    # one process from here on, with the same global batch
    resume(tmp_path / "split", ["train.max_steps=5", ONE_PROCESS], quiet=True)
    Trainer(load_recipe("pix2pix", [*base, "train.max_steps=5"]), tmp_path / "one", quiet=True).fit()
    assert_close_nets(tmp_path / "one", tmp_path / "split")


def test_lr_scale_follows_the_number_of_processes(pairs4, tmp_path):
    """lr_scale=linear: 2 processes step with 2 x train.lr; resumed on one process, with train.lr again."""
    sets = [*EXACT, PER_PROCESS, "train.lr_scale=linear", "train.max_steps=1"]
    res = launch(["--recipe=pix2pix", f"--data={pairs4}", f"--out={tmp_path / 'run'}",
                  *[f"--set={s}" for s in sets]], nproc=2)
    assert "lr 0.0004 (train.lr 0.0002, lr_scale linear: x processes)" in res.stderr
    resume(tmp_path / "run", ["train.max_steps=2"], quiet=True)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr"]) for r in log] == [(1, 0.0004), (2, 0.0002)]


def test_devices_launcher_returns_the_failure(tmp_path):
    """Both processes fail on a missing data folder: the launcher exits with their status, no traceback."""
    cmd = [sys.executable, "-m", "translate", "train", "--devices=2", "--recipe=pix2pix",
           f"--data={tmp_path / 'nope'}", f"--out={tmp_path / 'run'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 1, res.stderr[-2000:]
    assert "data folder not found" in res.stderr and "Traceback" not in res.stderr
