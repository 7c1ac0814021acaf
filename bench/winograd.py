"""Winograd F(4x4, 3x3) against oneDNN's direct convolution on the CPU, fp32.

Prints a markdown table: per conv (the 256-channel 3x3 convs of resnet_9blocks' blocks, batch 1, at
256x256 and 512x512 images) forward ms and forward+backward ms, direct (F.conv2d) vs
``WinogradConv2d``; and the whole resnet_9blocks generator's forward s/image at 256x256 before and
after ``use_winograd``, with the largest absolute difference of the outputs.

Direct and Winograd runs alternate, and the table gives medians. On a shared 2-core machine a busy
neighbour makes a run several times slower, so a run during which other processes used more than
0.15 cores (from /proc/stat) is redone, up to 3x ``--reps`` runs in all.

    .venv/bin/python bench/winograd.py [--reps 15] [--net-reps 7] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import cpu_busy_s, own_cpu_s  # noqa: E402

from translate.core.devices import cpu_name  # noqa: E402
from translate.core.registry import create_net  # noqa: E402
from translate.nets.winograd import WinogradConv2d, use_winograd  # noqa: E402

BUSY_LIMIT = 0.15  # cores other processes may use during a kept run


def timed(fn: Callable[[], object]) -> tuple[float, bool]:
    """Seconds one call takes, and whether other processes stayed under BUSY_LIMIT cores meanwhile."""
    b0, o0, t0 = cpu_busy_s(), own_cpu_s(), time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    b1, o1 = cpu_busy_s(), own_cpu_s()
    # /proc/stat counts in clock ticks (10 ms): short runs are judged with one tick of slack.
    quiet = b0 is None or (b1 - b0) - (o1 - o0) <= BUSY_LIMIT * t + 0.011
    return t, quiet


def medians(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function over ``reps`` quiet runs, the functions taking turns."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(3 * reps):
        if min(len(v) for v in times.values()) >= reps:
            break
        for k, fn in fns.items():
            if len(times[k]) < reps:
                t, quiet = timed(fn)
                if quiet:
                    times[k].append(t)
    for k, v in times.items():
        if not v:  # never quiet: keep a (noisy) run rather than nothing
            v.append(timed(fns[k])[0])
    return {k: statistics.median(v) for k, v in times.items()}


def conv_rows(size: int, reps: int) -> list[str]:
    """Forward and forward+backward ms of one (1, 256, size+2, size+2) -> (1, 256, size, size) conv."""
    torch.manual_seed(0)
    conv = nn.Conv2d(256, 256, 3, bias=True)
    wconv = WinogradConv2d.from_conv(conv)
    x = torch.randn(1, 256, size + 2, size + 2)
    xg = x.clone().requires_grad_()
    g = torch.randn(1, 256, size, size)

    def fwd(m: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return m(x)

        return run

    def fwd_bwd(m: nn.Module) -> Callable[[], object]:
        def run() -> None:
            conv.zero_grad(set_to_none=True)
            xg.grad = None
            m(xg).backward(g)

        return run

    with torch.no_grad():
        ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double())
        err = {
            "direct": ((conv(x).double() - ref).norm() / ref.norm()).item(),
            "winograd": ((wconv(x).double() - ref).norm() / ref.norm()).item(),
        }
    t = medians({"d": fwd(conv), "w": fwd(wconv), "db": fwd_bwd(conv), "wb": fwd_bwd(wconv)}, reps)
    shape = f"256ch {size}x{size} ({size * 4}x{size * 4} image)"
    return [
        f"| {shape} forward | {t['d'] * 1e3:.1f} | {t['w'] * 1e3:.1f} | {t['d'] / t['w']:.2f}x "
        f"| rel. err vs fp64: direct {err['direct']:.1e}, Winograd {err['winograd']:.1e} |",
        f"| {shape} forward+backward | {t['db'] * 1e3:.1f} | {t['wb'] * 1e3:.1f} | {t['db'] / t['wb']:.2f}x "
        "| grads to input, weight, bias |",
    ]


def net_row(reps: int) -> str:
    torch.manual_seed(0)
    net = create_net("resnet_9blocks", ngf=64).eval()
    fast = copy.deepcopy(net)
    n = use_winograd(fast)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.inference_mode():
        diff = (net(x) - fast(x)).abs().max().item()

        def run(m: nn.Module) -> Callable[[], object]:
            return lambda: m(x)

        t = medians({"d": run(net), "w": run(fast)}, reps, warmup=1)
    return (
        f"| resnet_9blocks 256x256, whole net forward (s/image) | {t['d']:.3f} | {t['w']:.3f} "
        f"| {t['d'] / t['w']:.2f}x | {n} convs replaced; max abs diff of outputs {diff:.1e} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15, help="timed runs per conv variant")
    ap.add_argument("--net-reps", type=int, default=7, help="timed runs per whole-net variant")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1\n")
    print("| case | direct F.conv2d (ms) | Winograd (ms) | speed-up | notes |")
    print("|---|---|---|---|---|")
    for size in (64, 128):
        for row in conv_rows(size, args.reps):
            print(row, flush=True)
    print(net_row(args.net_reps), flush=True)  # in seconds, as its first column says


if __name__ == "__main__":
    main()
