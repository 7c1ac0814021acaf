"""The translation network alone on one device, in the ways it can be run: which layout, which
convolution, eager or torch.compile. Prints images/s and peak memory per batch
size, and each variant's PSNR to the fp32 eager output (on uint8 images, as `translate run` writes).

    .venv/bin/python bench/net_variants.py WEIGHTS [--device cuda] [--batches 16,64,128] [--compile]

Used to choose what `translate run` does on a GPU; the table in docs/performance.md comes from it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from translate.core.devices import cpu_name  # noqa: E402
from translate.inference.translator import Translator, load_translator, to_u8  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (to_u8(a).float() - to_u8(b).float()).pow(2).mean().item()
    return 99.0 if mse == 0 else 10 * torch.log10(torch.tensor(255.0**2 / mse)).item()


def timed(fn, x: torch.Tensor, seconds: float, device: torch.device) -> tuple[float, float]:
    """(images/s, peak GiB) of fn(x) repeated for ``seconds`` after a warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn(x)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        fn(x)
        n += 1
    sync()
    rate = n * x.shape[0] / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return rate, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights", type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--batches", default="16,64,128")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--compile", action="store_true", help="also torch.compile (slow to build)")
    ap.add_argument("--variants", default="",
                    help="comma-separated variants to run instead, e.g. channels_last=1,winograd=0")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"# network alone: {gpu} | torch {torch.__version__} | {args.precision} | {args.size}x{args.size}")

    ref, _, _ = load_translator(args.weights, "AtoB", device, "fp32", winograd=False)
    probe = torch.rand(4, 3, args.size, args.size, device=device) * 2 - 1
    want = ref(probe)
    del ref

    def make(name: str) -> Translator:
        """``name``: options to Translator joined by '+', e.g. ``channels_last=1+winograd=0``."""
        opts = {k: v == "1" for k, v in (part.split("=") for part in name.split("+"))} if name != "default" else {}
        compile = opts.pop("compile", False)
        tr, _, _ = load_translator(args.weights, "AtoB", device, args.precision, compile, **opts)
        return tr

    variants = ["default", "channels_last=1", "winograd=0", "winograd=1"]
    if args.compile:
        variants.append("compile=1")
    if args.variants:
        variants = args.variants.split(",")
    print("| variant | batch | img/s | peak GiB | PSNR to fp32 eager |")
    print("|---|---|---|---|---|")
    for name in variants:
        if "winograd" in name and (device.type != "cpu" or args.precision != "fp32"):
            continue
        t0 = time.perf_counter()
        tr = make(name)
        for bs in (int(b) for b in args.batches.split(",")):
            x = torch.rand(bs, 3, args.size, args.size, device=device) * 2 - 1
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
            t1 = time.perf_counter()
            rate, peak = timed(tr, x, args.seconds, device)
            quality = psnr(tr(probe), want)
            print(f"| {name} | {bs} | {rate:.3g} | {peak:.2f} | {quality:.1f} dB | "
                  f"(ready in {t1 - t0:.1f} s)", flush=True)
            t0 = time.perf_counter()
        del tr


if __name__ == "__main__":
    main()
