"""The papers' official code, built inside a test to be compared with ours step for step.

../shared/peers holds the checkouts (cyclegan-ref, cut-ref, bicyclegan-ref; see its README.md and
PARITY.md): they are imported and run here, never copied. All three name their top-level packages
``models``, ``data``, ``util`` and ``options``, so :func:`official` puts one peer first on sys.path
and removes every such module before and after: a second peer never gets the first one's modules.

A parity test then builds the official model from its own option parser (``options_for``), copies
the same initial weights into ours, feeds both the same batch and the same random draws, runs steps
and compares every loss, weight, buffer and Adam moment (``Report``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, missing, shared
from PIL import Image
from torch import Tensor, nn

from translate.core.devices import Precision
from translate.core.recipes import load_recipe
from translate.methods import get_method

PEERS = SHARED.parent / "peers"
PACKAGES = ("models", "data", "util", "options")
CPU = torch.device("cpu")


def _purge() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in PACKAGES:
            del sys.modules[name]


@contextlib.contextmanager
def official(peer: str) -> Iterator[Path]:
    """``import models...`` inside the block reads ../shared/peers/``peer``; the modules are gone after."""
    root = PEERS / peer
    if not (root / "models").is_dir():
        missing(f"needs the official code at {root} (../shared/peers beside the repository)")
    _purge()
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        _purge()


def run_official(peer: str, script: str, args: list[str], timeout: float = 600) -> str:
    """``python SCRIPT ARGS`` in ../shared/peers/``peer``, as its README runs it on a CPU (the empty
    wandb module of ../shared/tools/peer/shims; dominate, which its HTML pages need, is a test
    dependency); its output, or the test fails with it."""
    root = PEERS / peer
    if not (root / script).is_file():
        missing(f"needs the official code at {root} (../shared/peers beside the repository)")
    shims = SHARED.parent / "tools" / "peer" / "shims"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shims), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, script, *args], cwd=root, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"{peer}/{script} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def options_for(model_cls: type, args: list[str], tmp: Path) -> argparse.Namespace:
    """The official training options for ``args``, as its train.py parses them, without reading
    sys.argv or writing option files (PARITY.md, "Building the official models in a test")."""
    from options.train_options import TrainOptions

    parser = TrainOptions().initialize(argparse.ArgumentParser())
    parser = model_cls.modify_commandline_options(parser, True)
    opt = parser.parse_args(["--dataroot", str(tmp), "--checkpoints_dir", str(tmp), *args])
    opt.isTrain, opt.gpu_ids, opt.device = True, [], torch.device("cpu")
    return opt


@pytest.fixture
def exact_cpu() -> Iterator[None]:
    """One thread (the same summation order on both sides, run to run), and no Winograd convs (they
    are another summation of the same product; the official nets are plain convs). A parity test
    module imports it and sets ``pytestmark = pytest.mark.usefixtures("exact_cpu")``."""
    from translate.nets import winograd

    before, pays = torch.get_num_threads(), winograd.winograd_pays
    torch.set_num_threads(1)
    winograd.winograd_pays = lambda *a, **k: False
    try:
        yield
    finally:
        torch.set_num_threads(before)
        winograd.winograd_pays = pays


def ours(recipe: str, overrides: list[str]):
    """Our method for ``recipe`` with ``overrides``, built as the Trainer builds it, in fp32, its Adams
    on torch's default CPU kernel (a loop over the tensors), as the official code's.

    We train with the fused kernel (methods/base.py: 9x faster on the CPU). It computes the same
    update, rounded differently (at most 4 ulp of the weight in a check of 10^6 values over 3 steps);
    with it, pix2pix's weights here differ from the official ones by 5e-5 of a tensor's scale after
    one step and up to 0.1 after three: batch norm over 2 images at 1x1 (the U-Net's innermost
    level) amplifies any rounding, as it does in the official code itself (its D moved by one ulp:
    1.5e-4 after one step, 1e-3 after three). With the loop kernel the steps are bit for bit equal."""
    r = load_recipe(recipe, ["train.device=cpu", "train.precision=fp32", *overrides])
    method = get_method(r.method)(r, CPU, Precision("fp32", CPU))
    for opt in method.optimizers.values():
        for group in opt.param_groups:
            group["fused"], group["foreach"] = None, False
    return method


def pairs(n: int, size: int) -> tuple[Tensor, Tensor]:
    """``n`` people2outline pairs as A (photo) and B (outline) batches in [-1, 1], ``size`` square."""
    a, b = [], []
    for f in sorted(shared("people2outline", "train").iterdir())[:n]:
        img = Image.open(f).convert("RGB")
        w, h = img.size
        a.append(_tensor(img.crop((0, 0, w // 2, h)), size))
        b.append(_tensor(img.crop((w // 2, 0, w, h)), size))
    return torch.stack(a), torch.stack(b)


def unpaired(n: int, size: int) -> tuple[Tensor, Tensor]:
    """``n`` horses (A) and ``n`` zebras (B) in [-1, 1], ``size`` square."""
    a, b = (torch.stack([_tensor(Image.open(f).convert("RGB"), size)
                         for f in sorted(shared("horse2zebra", d).iterdir())[:n]]) for d in ("trainA", "trainB"))
    return a, b


def _tensor(img: Image.Image, size: int) -> Tensor:
    arr = np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def seed_flipping(flipped: bool) -> int:
    """A seed after which FastCUT's draw in our step (torch.rand() < 0.5) flips as asked."""
    return next(s for s in range(100) if (torch.manual_seed(s), bool(torch.rand(()) < 0.5) == flipped)[1])


def copy_weights(src: nn.Module, dst: nn.Module, rename: dict[str, str] | None = None) -> None:
    """``dst`` takes every parameter and buffer of ``src`` (keys as ``rename`` maps them), strictly."""
    state = {(rename or {}).get(k, k): v for k, v in src.state_dict().items()}
    dst.load_state_dict(state, strict=True)


def max_rel(ours: Tensor, theirs: Tensor) -> float:
    """The largest difference, relative to the larger tensor's largest magnitude (0 for two zeros)."""
    ours, theirs = ours.detach().double(), theirs.detach().double()
    scale = max(ours.abs().max().item(), theirs.abs().max().item()) if ours.numel() else 0.0
    return (ours - theirs).abs().max().item() / scale if scale else 0.0


class Report:
    """Differences by group (a loss, a net's weights, an optimiser's moments), the largest of each:
    asserted against a tolerance and printed as a table (``pytest -s``) for the closing note."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.rows: dict[str, float] = {}

    def add(self, group: str, ours: Tensor, theirs: Tensor) -> None:
        assert ours.shape == theirs.shape, (group, tuple(ours.shape), tuple(theirs.shape))
        self.rows[group] = max(self.rows.get(group, 0.0), max_rel(ours, theirs))

    def losses(self, step: int, ours: dict[str, Tensor | float], theirs: dict[str, float]) -> None:
        assert sorted(ours) == sorted(theirs), (sorted(ours), sorted(theirs))
        for name, value in theirs.items():
            self.add(f"loss {name}", torch.as_tensor(float(ours[name])), torch.as_tensor(float(value)))

    def nets(self, pairs: Iterable[tuple[str, nn.Module, nn.Module]], rename: dict[str, str] | None = None) -> None:
        """Every parameter and floating buffer of our net against the official net's, by key."""
        for name, ours, theirs in pairs:
            mine = ours.state_dict()
            for key, value in theirs.state_dict().items():
                if value.is_floating_point():
                    self.add(f"{name} weights", mine[(rename or {}).get(key, key)], value)

    def adam(self, name: str, ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer) -> None:
        """Adam's moments, parameter by parameter in the optimisers' own order."""
        mine = [p for g in ours.param_groups for p in g["params"]]
        other = [p for g in theirs.param_groups for p in g["params"]]
        assert [tuple(p.shape) for p in mine] == [tuple(p.shape) for p in other], name
        for p, q in zip(mine, other, strict=True):
            for moment in ("exp_avg", "exp_avg_sq"):
                self.add(f"{name} Adam {moment}", ours.state[p][moment], theirs.state[q][moment])

    def check(self, tolerance: float = 1e-5, looser: dict[str, float] | None = None) -> None:
        """Print the table; every group within ``tolerance`` (or its own in ``looser``, whose reasons
        the calling test gives)."""
        print(f"\n{self.method}: largest difference, relative to the largest value, per group")
        for group, diff in self.rows.items():
            print(f"  {group:40s} {diff:.2e}")
        bad = {g: d for g, d in self.rows.items() if d > (looser or {}).get(g, tolerance)}
        assert not bad, f"{self.method} differs from the official code: {bad}"
