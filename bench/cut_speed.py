"""CUT and FastCUT training speed against the official CUT code, same machine, data and sizes, one run.

    .venv/bin/python bench/cut_speed.py [--modes CUT FastCUT] [--n 8] [--images 12] [--size 256]
                                        [--precisions fp32 bf16] [--repeat 2]

As ../shared/tools/vs-reference does for pix2pix and CycleGAN: each side trains twice from a fresh
process, for 2 iterations and for ``--n``, on ``--images`` horses and zebras of horse2zebra (load
size + size/8, crop ``--size``, batch 1, the recipes' networks: anti-aliased ResNet-9 and PatchGAN),
and the marginal seconds per iteration are (t_n - t_2) / (n - 2): start-up and the first iteration
cancel out. Each pair of runs is made ``--repeat`` times, alternating sides, and the smallest
marginal counts: on a shared 2-core VM one slow iteration moves a marginal by a second. The
official code (../shared/peers/cut-ref) is run, never copied: its train.py on the CPU
(``--gpu_ids -1``). Ours: `translate train --recipe cut|fastcut` in each ``--precisions`` (bf16
only where the CPU computes it natively). The table gives the ratio official / ours (> 1: faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from vs_official_training import sh as timed  # noqa: E402  (bench/ is on the path: run as a script)

from translate.core.devices import cpu_bf16_native, cpu_name  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", default=["CUT", "FastCUT"], choices=["CUT", "FastCUT"])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--repeat", type=int, default=2)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp())
    data = work / "h2z"
    for split in ("trainA", "trainB"):
        (data / split).mkdir(parents=True)
        for f in sorted((SHARED / "data" / "horse2zebra" / split).iterdir())[: a.images]:
            shutil.copy(f, data / split / f.name)
    precisions = [x for x in a.precisions if x == "fp32" or cpu_bf16_native()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SHARED / "tools" / "peer" / "shims"),
                                                        os.environ.get("PYTHONPATH", "")])}
    load = a.size + a.size // 8
    print(f"{cpu_name()}, {os.cpu_count()} cores, native bf16: {cpu_bf16_native()}; {a.images}+{a.images} images, "
          f"load {load}, crop {a.size}, batch 1; marginal s/iteration over {a.n - 2} iterations")
    print("| mode | official CUT code | ours | s/it official | s/it ours | official / ours |")
    print("|---|---|---|---|---|---|")
    def official(mode: str, k: int) -> float:
        return timed([sys.executable, "train.py", "--dataroot", str(data), "--name", f"{mode}{k}", "--CUT_mode", mode,
                      "--checkpoints_dir", str(work / "ck"), "--gpu_ids", "-1", "--display_id", "0", "--no_html",
                      "--num_threads", "0", "--batch_size", "1", "--load_size", str(load), "--crop_size", str(a.size),
                      "--max_dataset_size", str(k), "--n_epochs", "1", "--n_epochs_decay", "0",
                      "--print_freq", "1000000000", "--display_freq", "1000000000", "--save_latest_freq",
                      "1000000000", "--save_epoch_freq", "1000000000"],
                     SHARED / "peers" / "cut-ref", work / f"official_{mode}{k}.log", env)

    def ours(mode: str, precision: str, k: int) -> float:
        sets = [f"data.load_size={load}", f"data.crop_size={a.size}", f"train.max_steps={k}",
                f"train.precision={precision}", "train.sample_every=0", "train.save_every=0", "data.num_workers=0",
                "train.device=cpu"]
        out = work / f"ours_{mode}{precision}{k}"
        shutil.rmtree(out, ignore_errors=True)
        return timed([sys.executable, "-m", "translate", "train", "--recipe", mode.lower(), "--data", str(data),
                      "--out", str(out), "--quiet", *[x for s in sets for x in ("--set", s)]], REPO,
                     work / f"ours_{mode}{k}.log", env)

    for mode in a.modes:
        marginals: dict[str, list[float]] = {"official": [], **{p: [] for p in precisions}}
        for _ in range(a.repeat):
            marginals["official"].append((official(mode, a.n) - official(mode, 2)) / (a.n - 2))
            for precision in precisions:
                marginals[precision].append((ours(mode, precision, a.n) - ours(mode, precision, 2)) / (a.n - 2))
        off = min(marginals["official"])
        for precision in precisions:
            mine = min(marginals[precision])
            print(f"| {mode} | train.py fp32 | translate {precision} | {off:.2f} | {mine:.2f} | {off / mine:.2f}x |",
                  flush=True)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
