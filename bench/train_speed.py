"""Training speed: seconds per iteration, images/s and peak GPU memory for CycleGAN, CUT and pix2pix at
256x256, batch 1.

    .venv/bin/python bench/train_speed.py [--steps N] [--warmup W] [--device auto|cpu|cuda]
                                          [--data-root ../shared/data] [--channels-last]

The method is built by ``translate.training.train.Trainer`` from the shipped recipes (load_size 286, crop_size
256, batch 1, as the reference's defaults), with data.path pointing at ``horse2zebra`` (CycleGAN) or
``people2outline`` (pix2pix). Batches are pulled from the Trainer's own pipeline (loader + on-device
augmentation) *before* timing starts, so only ``method.train_step(batch)`` is timed: data loading is
not counted. Each step is timed with ``time.perf_counter`` (CUDA synchronised) after ``--warmup``
untimed steps; the table gives the median. On a shared 2-core machine a busy neighbour makes a step
several times slower, so on the CPU a step during which other processes used more than 0.15 cores
(from /proc/stat) is redone, up to 2x ``--steps`` in all; the table says how many were kept.

bf16 (autocast) rows are run only where the device computes bf16 natively (``devices.bf16_native``);
on a CPU without AVX512-BF16 / AMX bf16 is emulated, much slower than fp32, and skipped.

``--channels-last`` converts the nets and batches to channels_last memory format (on CUDA the library
already does so; on the CPU it is an experiment).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import cpu_busy_s, own_cpu_s  # noqa: E402

from translate.core import devices  # noqa: E402
from translate.core.recipes import load_recipe  # noqa: E402
from translate.training.train import Trainer  # noqa: E402

DATASETS = {"cyclegan": "horse2zebra", "cut": "horse2zebra", "pix2pix": "people2outline"}
GENERATORS = {"cyclegan": "resnet_9blocks", "cut": "resnet_9blocks", "pix2pix": "unet_256"}

# From the project's issue: the reference implementation's own per-iteration timer (t_comp), fp32,
# same settings (256x256 crops of 286 loads, batch 1), in s/it.
REFERENCE = {
    "zen5": {"cyclegan": 4.9, "pix2pix": 0.50},
    "zen3": {"cyclegan": 17.1, "pix2pix": 1.02},
}
OTHER_MAX = 0.15  # cores other processes may use during a kept step
RETRIES = 2
REFERENCE_LINE = ("reference (pytorch-CycleGAN-and-pix2pix) fp32: CycleGAN 4.9 s/it, pix2pix 0.50 s/it on a "
                  "2-core AMD Zen5 (AVX512-BF16); 17.1 and 1.02 s/it on an AVX2-only AMD Zen3")


def cpu_family() -> str | None:
    """'zen3' / 'zen4' / 'zen5' for AMD CPUs (from /proc/cpuinfo's family and model), else None.

    Family 0x19 covers Zen3 (models 0x00-0x0f, 0x20-0x2f, 0x40-0x5f) and Zen4 (0x10-0x1f, 0x60-0x7f,
    0xa0-0xaf); family 0x1a is Zen5. A hypervisor may hide the model name, but not these numbers.
    """
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        return None
    if info.get("vendor_id") != "AuthenticAMD":
        return None
    try:
        family, model = int(info["cpu family"]), int(info["model"])
    except (KeyError, ValueError):
        return None
    if family == 0x1A:
        return "zen5"
    if family == 0x19:
        zen4 = 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF
        return "zen4" if zen4 else "zen3"
    return None


def to_channels_last(trainer: Trainer) -> None:
    for net in trainer.method.nets.values():
        net.to(memory_format=torch.channels_last)  # in place: the optimizers keep the same parameters


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Row:
    seconds: float  # median s/it over the kept steps
    batch: int
    kept: int  # timed steps kept
    tried: int  # timed steps run
    other: float | None  # cores other processes kept busy during the kept steps (mean), None if unknown
    peak: int | None = None  # bytes of GPU memory the timed steps held at most (CUDA only)


def step_other_load(trainer: Trainer, batch: dict[str, torch.Tensor]) -> tuple[float, float | None]:
    """Time one train_step; also return the cores other processes used meanwhile (None if unknown)."""
    sync(trainer.device)
    busy0, own0, t0 = cpu_busy_s(), own_cpu_s(), time.perf_counter()
    trainer.method.train_step(batch)
    sync(trainer.device)
    t1, busy1, own1 = time.perf_counter(), cpu_busy_s(), own_cpu_s()
    if busy0 is None or busy1 is None:
        return t1 - t0, None
    return t1 - t0, max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)


def bench_one(method: str, precision: str, data_root: Path, device: str, steps: int, warmup: int,
              channels_last: bool) -> Row:
    """Time ``steps`` train_steps after ``warmup`` untimed ones.

    On the CPU a step during which other processes kept more than OTHER_MAX cores busy is not kept
    and another is run instead (at most ``RETRIES * steps`` timed steps in all): with one thread per
    core, a busy neighbour stalls every parallel region, and such a step can take several times longer.
    """
    recipe = load_recipe(method, [
        f"data.path={data_root / DATASETS[method]}", f"model.generator={GENERATORS[method]}",
        f"train.precision={precision}", f"train.device={device}", "train.batch_size=1",
        "data.num_workers=0",  # batches are fetched before timing; no loader processes competing for cores
    ])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(recipe, tmp, quiet=True)
        if channels_last:
            to_channels_last(trainer)
        batches = []
        while len(batches) < warmup + steps:  # a small dataset may need more than one epoch
            for batch in trainer._epoch_batches():
                if channels_last:
                    batch = {k: v.contiguous(memory_format=torch.channels_last) for k, v in batch.items()}
                batches.append(batch)
                if len(batches) == warmup + steps:
                    break
            else:
                trainer.epoch += 1
        for batch in batches[:warmup]:
            trainer.method.train_step(batch)
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        timed = batches[warmup:]
        runs: list[tuple[float, float | None]] = []
        retry = trainer.device.type == "cpu"

        def quiet(other: float | None) -> bool:
            return not retry or other is None or other <= OTHER_MAX

        for i in range(RETRIES * steps if retry else steps):
            runs.append(step_other_load(trainer, timed[i % steps]))
            if sum(quiet(o) for _, o in runs) >= steps:
                break
        peak = torch.cuda.max_memory_allocated(trainer.device) if trainer.device.type == "cuda" else None
    clean = [(t, o) for t, o in runs if quiet(o)]
    kept = clean or runs  # nothing clean: report all, flagged by kept == 0
    loads = [o for _, o in kept if o is not None]
    return Row(statistics.median(t for t, _ in kept), recipe.train.batch_size, len(clean), len(runs),
               sum(loads) / len(loads) if loads else None, peak)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per row (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data",
                    help="folder holding horse2zebra/ and people2outline/ (default ../shared/data)")
    ap.add_argument("--channels-last", action="store_true", help="nets and batches in channels_last format")
    ap.add_argument("--methods", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")

    missing = [d for m, d in DATASETS.items() if m in args.methods and not (args.data_root / d).is_dir()]
    if missing:
        print(f"error: data not found: {', '.join(str(args.data_root / d) for d in missing)} "
              f"(pass --data-root pointing at the shared data folder)", file=sys.stderr)
        return 2

    device = devices.pick_device(args.device)
    family = cpu_family()
    print(f"CPU: {devices.cpu_name()}" + (f" ({family.title()})" if family else "")
          + f" | native bf16 (oneDNN): {devices.cpu_bf16_native()}")
    layout = "channels_last" if args.channels_last or device.type == "cuda" else "contiguous"
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f" | memory format {layout}")
    print(f"256x256 crops (load 286), batch 1; median of {args.steps} steps after {args.warmup} warm-up; "
          "only train_step is timed (data loading and augmentation excluded)")
    print()
    print(f"{'method':<10} {'generator':<16} {'precision':<14} {'s/it':>8} {'images/s':>9} {'kept':>6} "
          f"{'other load':>11} {'peak GPU':>9}")

    results: dict[tuple[str, str], float] = {}
    contended = False
    for method in args.methods:
        for precision in args.precisions:
            label = "bf16 autocast" if precision == "bf16" else precision
            row = f"{method:<10} {GENERATORS[method]:<16} {label:<14}"
            if precision == "bf16" and not devices.bf16_native(device):
                where = "this CPU" if device.type == "cpu" else f"{device}"
                print(f"{row} skipped: bf16 is emulated on {where}")
                continue
            r = bench_one(method, precision, args.data_root, args.device, args.steps, args.warmup,
                          args.channels_last)
            results[method, precision] = r.seconds
            contended |= r.kept < args.steps
            load = f"{r.other:.2f} cores" if r.other is not None else "n/a"
            peak = f"{r.peak / 2**30:.2f} GiB" if r.peak is not None else "n/a"
            print(f"{row} {r.seconds:>8.3f} {r.batch / r.seconds:>9.2f} {f'{r.kept}/{r.tried}':>6} {load:>11} "
                  f"{peak:>9}", flush=True)
    print(f"kept: timed steps kept / run; on the CPU a step is redone (up to {RETRIES}x --steps in all) when "
          f"other processes kept more than {OTHER_MAX} cores busy during it")
    print("other load: mean cores used by other processes (and hypervisor steal) during the kept steps")
    if contended:
        print("warning: the machine was busy with other work; rows with fewer kept steps than --steps are "
              "pessimistic (0 kept: the median of all steps), rerun on an idle machine")
    print()
    print(REFERENCE_LINE)
    ref = REFERENCE.get(family or "") if device.type == "cpu" else None
    if ref is None:
        print("no ratio: this machine is not one of the reference's CPU families"
              + (f" (it is {family.title()})" if family else ""))
    else:
        for method in args.methods:
            if (method, "fp32") in results and method in ref:
                ours = results[method, "fp32"]
                print(f"same CPU family ({family.title()}), fp32 {method}: ours {ours:.3f} s/it vs reference "
                      f"{ref[method]:.2f} s/it -> {ref[method] / ours:.2f}x the reference's speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
