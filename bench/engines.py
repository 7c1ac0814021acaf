"""The network alone on the CPU, by engine: what ``--engine auto`` picks is decided by this table.

    .venv/bin/python bench/engines.py [--nets resnet_9blocks unet_256] [--size 256] [--batch 1] [--n 8]

Per network (random weights, the reference's init; the time does not depend on the values): median
milliseconds of ``--n`` calls after 2 warm-up calls, batch ``--batch``, ``--size`` square, in one
process, of torch fp32 (eager), torch fp32 with our Winograd 3x3 convolutions (nets/winograd.py),
torch bf16 weights (as `translate run` runs bf16), OpenVINO f32 and OpenVINO bf16 (its
INFERENCE_PRECISION_HINT, the whole model converted once). bf16 rows run only where the CPU computes
bf16 natively (elsewhere it is emulated, several times slower). PSNR of each output against torch
fp32's (random input in [-1, 1]).

An AVX2-only CPU can be measured on an AVX-512 one: torch, oneDNN and OpenVINO's CPU plugin all
follow ``ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from translate.core.devices import cpu_bf16_native, cpu_name  # noqa: E402
from translate.core.registry import create_net  # noqa: E402
from translate.inference.engines import OpenVinoNet, openvino_version  # noqa: E402
from translate.nets import init_weights  # noqa: E402
from translate.nets.winograd import use_winograd  # noqa: E402


def timings_ms(f, n: int) -> tuple[float, float]:
    """(median, fastest) of ``n`` calls after 2 warm-up ones: on a shared VM the fastest is the steadier."""
    f()
    f()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, min(times) * 1000


def psnr(y: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float(((y.float() - ref) ** 2).mean())
    return 99.0 if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", nargs="+", default=["resnet_9blocks", "unet_256"])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--n", type=int, default=8)
    a = p.parse_args()
    native = cpu_bf16_native()
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}), native bf16: {native}, OpenVINO {openvino_version()}")
    print(f"batch {a.batch}, {a.size}x{a.size}, median of {a.n}")
    print("| net | engine | ms, median | ms, fastest | PSNR to torch fp32 |")
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    x = torch.rand(a.batch, 3, a.size, a.size) * 2 - 1
    for name in a.nets:
        net = init_weights(create_net(name, ngf=64)).eval().requires_grad_(False)
        with torch.inference_mode():
            ref = net(x)
        rows = {"torch fp32": (lambda net=net: net(x))}
        wino = copy.deepcopy(net)
        if use_winograd(wino):
            rows["torch fp32 + Winograd"] = lambda wino=wino: wino(x)
        if native:
            low = copy.deepcopy(net).to(torch.bfloat16)
            rows["torch bf16"] = lambda low=low: low(x.to(torch.bfloat16))
        with torch.inference_mode():
            _print(name, rows, ref, a.n)
        if openvino_version():
            with tempfile.TemporaryDirectory() as cache:
                for precision in ("fp32", "bf16") if native else ("fp32",):
                    engine = OpenVinoNet(copy.deepcopy(net), f"bench-{name}", precision, size=a.size, root=Path(cache))
                    _print(name, {f"OpenVINO {precision}": lambda engine=engine: engine(x)}, ref, a.n)


def _print(name: str, rows: dict, ref: torch.Tensor, n: int) -> None:
    for engine, f in rows.items():
        median, fastest = timings_ms(f, n)
        print(f"| {name} | {engine} | {median:.1f} | {fastest:.1f} | {psnr(f(), ref):.1f} |", flush=True)


if __name__ == "__main__":
    main()
