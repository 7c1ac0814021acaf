"""Trained the same epochs as the official code, on the same small unpaired set: do our CycleGAN, CUT
and FastCUT translate like theirs?

    .venv/bin/python bench/vs_official_training.py [--methods cyclegan cut fastcut] [--images 16]
                                                  [--epochs 10] [--decay 10] [--size 64] [--ngf 16]

The step parity tests (tests/test_parity.py) prove one step equal; this checks what they cannot: the
whole training around the step (data pipeline, schedules, epochs), by its result. Each method is
trained twice by the official code (../shared/peers; run, never copied: its train.py, unseeded, so
two runs differ as two users' would) and twice by ours (train.seed 0 and 1), with the same options:
``--images`` horses and zebras of horse2zebra, loaded at size + size/8 and cropped to ``--size``,
batch 1, ngf = ndf = ``--ngf``, ``--epochs`` + ``--decay`` epochs. Every G_A (A -> B) then translates
the same 20 test horses through `translate import` + `translate run` (the import gives the official
test.py's images, tests/test_cut.py and test_reference.py), and the table gives the mean absolute
difference (0-255) between the outputs of two runs: official vs official is how far two runs of the
same method land apart; ours vs official should be no further. "moved" is the mean difference
between output and input.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PEERS = SHARED / "peers"
METHODS = {  # ours, the official checkout, its options for the method, its generator A -> B's file
    "cyclegan": ("cyclegan", "cyclegan-ref", ["--model", "cycle_gan"], "latest_net_G_A.pth"),
    "cut": ("cut", "cut-ref", ["--CUT_mode", "CUT", "--gpu_ids", "-1", "--display_id", "0"], "latest_net_G.pth"),
    "fastcut": ("fastcut", "cut-ref", ["--CUT_mode", "FastCUT", "--gpu_ids", "-1", "--display_id", "0"],
                "latest_net_G.pth"),
}


def sh(cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        res = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if res.returncode:
        sys.exit(f"{' '.join(cmd[:4])} ... failed; see {log}:\n{log.read_text()[-2000:]}")
    return time.perf_counter() - start


def data(root: Path, n: int) -> Path:
    """``n`` training horses and zebras, 20 test horses (testB: the CUT code's test.py-free layout)."""
    src = SHARED / "data" / "horse2zebra"
    for split, count in (("trainA", n), ("trainB", n), ("testA", 20), ("testB", 20)):
        (root / split).mkdir(parents=True)
        for f in sorted((src / split).iterdir())[:count]:
            shutil.copy(f, root / split / f.name)
    return root


def official(method: str, work: Path, d: Path, a: argparse.Namespace, run: int) -> tuple[Path, float]:
    _, peer, opts, g_file = METHODS[method]
    name = f"{method}_official{run}"
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads),
           "PYTHONPATH": os.pathsep.join([str(SHARED / "tools" / "peer" / "shims"), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "train.py", "--dataroot", str(d), "--name", name, "--checkpoints_dir", str(work / "ck"),
            *opts, "--ngf", str(a.ngf), "--ndf", str(a.ngf), "--load_size", str(a.size + a.size // 8),
            "--crop_size", str(a.size), "--batch_size", "1", "--n_epochs", str(a.epochs), "--n_epochs_decay",
            str(a.decay), "--num_threads", "0", "--no_html", "--display_freq", "1000000000",
            "--print_freq", "1000000000", "--save_latest_freq", "1000000000",
            "--save_epoch_freq", str(a.epochs + a.decay)]  # (it saves at epochs divisible by this)
    seconds = sh(args, PEERS / peer, work / f"{name}.log", env)
    return work / "ck" / name / g_file, seconds


def ours(method: str, work: Path, d: Path, a: argparse.Namespace, run: int) -> tuple[Path, float]:
    recipe = METHODS[method][0]
    out = work / f"{method}_ours{run}"
    sets = [f"data.load_size={a.size + a.size // 8}", f"data.crop_size={a.size}", f"model.ngf={a.ngf}",
            f"model.ndf={a.ngf}", "train.batch_size=1", f"train.epochs={a.epochs}", f"train.epochs_decay={a.decay}",
            "data.num_workers=0", f"train.seed={run}", "train.sample_every=0", "train.save_every=0",
            "train.device=cpu", "train.precision=fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    seconds = sh([sys.executable, "-m", "translate", "train", "--recipe", recipe, "--data", str(d), "--out", str(out),
                  "--quiet", *[x for s in sets for x in ("--set", s)]], REPO, work / f"{out.name}.log", env)
    return out / "latest.safetensors", seconds


def translate(weights: Path, d: Path, out: Path) -> np.ndarray:
    """The test horses through ``weights`` (a .pth is imported first): (N, H, W, 3) float."""
    if weights.suffix == ".pth":
        sh([sys.executable, "-m", "translate", "import", str(weights), "-o", str(out) + ".safetensors"], REPO,
           out.with_suffix(".import.log"))
        weights = Path(str(out) + ".safetensors")
    sh([sys.executable, "-m", "translate", "run", str(d / "testA"), str(out), "-w", str(weights), "--format", "png",
        "--size", str(64), "-q"], REPO, out.with_suffix(".run.log"))
    return np.stack([np.asarray(Image.open(f).convert("RGB"), np.float64) for f in sorted(out.iterdir())])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--decay", type=int, default=10)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep", help="keep the work folder here")
    a = p.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    d = data(work / "h2z", a.images)
    with Image.open(next((d / "testA").iterdir())) as im:
        inputs_size = im.size
    print(f"{a.images} horses + {a.images} zebras, {a.size}x{a.size} crops, ngf {a.ngf}, {a.epochs} + {a.decay} "
          f"epochs, batch 1, {a.threads} thread(s); 20 test horses {inputs_size[0]}x{inputs_size[1]} translated at 64")
    inputs = np.stack([np.asarray(Image.open(f).convert("RGB").resize((64, 64), Image.BICUBIC), np.float64)
                       for f in sorted((d / "testA").iterdir())])
    print("| method | official vs official | ours vs ours | ours vs official (mean of 4) | moved: official | "
          "moved: ours | train s: official | train s: ours |")
    print("|---|---|---|---|---|---|---|---|")
    for method in a.methods:
        outs, secs = {}, {}
        for side, train in (("official", official), ("ours", ours)):
            for run in (0, 1):
                weights, secs[side, run] = train(method, work, d, a, run)
                outs[side, run] = translate(weights, d, work / f"out_{method}_{side}{run}")
        diff = {}
        for (s1, r1), (s2, r2) in itertools.combinations(outs, 2):
            diff[s1, r1, s2, r2] = np.abs(outs[s1, r1] - outs[s2, r2]).mean()
        cross = np.mean([v for (s1, _, s2, _), v in diff.items() if s1 != s2])
        moved = {s: np.mean([np.abs(outs[s, r] - inputs).mean() for r in (0, 1)]) for s in ("official", "ours")}
        seconds = {s: np.mean([secs[s, r] for r in (0, 1)]) for s in ("official", "ours")}
        print(f"| {method} | {diff['official', 0, 'official', 1]:.2f} | {diff['ours', 0, 'ours', 1]:.2f} | "
              f"{cross:.2f} | {moved['official']:.2f} | {moved['ours']:.2f} | {seconds['official']:.0f} | "
              f"{seconds['ours']:.0f} |", flush=True)
    if not a.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
