"""Learning-rate schedules (translate/training/schedules.py) as a real training run applies them: the lr each
step logs in log.jsonl, epoch by epoch, against the reference's formulas (pytorch-CycleGAN-and-pix2pix,
models/networks.py `get_scheduler`, stepped once at every epoch's end by `update_learning_rate`), written
out here: nothing of the reference's code is used."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import tiny
from typer.testing import CliRunner

from translate.cli.commands import app
from translate.core.recipes import load_recipe
from translate.training.train import Trainer

runner = CliRunner()
LR = 2e-4
# pix2pix made tiny; a batch of the 4 pairs is one step per epoch, each step's lr in the log
TINY_P2P = ["data.load_size=32", "data.crop_size=32", "model.generator=resnet_6blocks", "model.norm=instance",
            "model.dropout=false", "train.batch_size=4", "train.log_every=1", f"train.lr={LR}"]


def reference_lr(policy: str, epoch: int, n_epochs: int, n_epochs_decay: int, lr_decay_iters: int = 50) -> float:
    """The rate of the reference's `get_scheduler` during 0-based ``epoch`` (``--epoch_count 1``, its default)."""
    if policy == "linear":  # lr_l = 1 - max(0, epoch + epoch_count - n_epochs) / (n_epochs_decay + 1)
        return LR * (1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1))
    if policy == "step":  # StepLR(step_size=lr_decay_iters, gamma=0.1)
        return LR * 0.1 ** (epoch // lr_decay_iters)
    if policy == "cosine":  # CosineAnnealingLR(T_max=n_epochs, eta_min=0)
        return LR * (1 + math.cos(math.pi * epoch / n_epochs)) / 2
    raise ValueError(policy)


def lr_by_epoch(run: Path) -> dict[int, float]:
    """The lr logged at every step, per epoch; all steps of an epoch share one."""
    out: dict[int, set[float]] = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "lr" in r:
            out.setdefault(r["epoch"], set()).add(r["lr"])
    assert all(len(v) == 1 for v in out.values()), out
    return {e: v.pop() for e, v in sorted(out.items())}


def fit(data: Path, run: Path, extra: list[str]) -> None:
    recipe = load_recipe("pix2pix", tiny("pix2pix", [f"data.path={data}", *TINY_P2P, *extra]))
    Trainer(recipe, run, quiet=True).fit()


@pytest.mark.parametrize(("policy", "extra"), [
    ("linear", []),
    ("step", ["train.lr_decay_iters=2"]),
    ("cosine", []),
])
def test_the_lr_of_each_epoch_is_the_references(policy, extra, pairs4, tmp_path):
    n, d = 2, 3  # 5 epochs: 2 at the initial rate (linear), then 3 of decay
    fit(pairs4, tmp_path / "run", [f"train.lr_policy={policy}", f"train.epochs={n}", f"train.epochs_decay={d}",
                                   *extra])
    got = lr_by_epoch(tmp_path / "run")
    assert list(got) == list(range(n + d))
    decay_iters = 2 if policy == "step" else 50
    want = {e: reference_lr(policy, e, n, d, decay_iters) for e in range(n + d)}
    if policy == "cosine":  # ours anneals over the whole run, a written difference (docs/fidelity.md):
        # the reference's T_max = n_epochs reaches 0 after train.epochs and climbs back over the decay epochs
        assert reference_lr("cosine", n, n, d) == 0.0
        want = {e: LR * (1 + math.cos(math.pi * e / (n + d))) / 2 for e in range(n + d)}
    for e in got:
        assert got[e] == pytest.approx(want[e], rel=1e-6, abs=1e-12), (e, got, want)
    assert len(set(want.values())) > 2  # the schedule really moves over this run


def test_resume_that_extends_the_run_continues_the_extended_schedule(pairs4, tmp_path):
    """`translate train --resume RUN --set train.epochs=N` (README: "... or extends the run"): the lr of every
    epoch is that of an uninterrupted run of the extended length, which is the reference's linear rule."""
    # stopped after its first epoch (train.max_steps=1, one step an epoch): 1 epoch at the initial rate + 2 of decay
    fit(pairs4, tmp_path / "short", ["train.epochs=1", "train.epochs_decay=2", "train.max_steps=1"])
    assert list(lr_by_epoch(tmp_path / "short")) == [0]
    res = runner.invoke(app, ["train", "--resume", str(tmp_path / "short"), "--set", "train.epochs=2",
                              "--set", "train.max_steps=0", "-q"])
    assert res.exit_code == 0, res.output
    fit(pairs4, tmp_path / "whole", ["train.epochs=2", "train.epochs_decay=2"])
    whole, resumed = lr_by_epoch(tmp_path / "whole"), lr_by_epoch(tmp_path / "short")
    assert whole == pytest.approx({e: reference_lr("linear", e, 2, 2) for e in range(4)}, rel=1e-6)
    assert list(resumed) == [0, 1, 2, 3]
    assert resumed == pytest.approx(whole, rel=1e-6), (resumed, whole)
