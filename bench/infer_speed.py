"""End-to-end speed of `translate run` for a resnet_9blocks generator on 256x256 JPEGs.

Prints, for the current device:
1. images/s through ``translate.inference.infer.run`` (decode, batch, translate, encode, write; model
   load excluded) for batch sizes 1..32 (64 on CUDA), in fp32 and bf16, and the fraction of the
   device's measured matmul FLOP/s that the network reaches;
2. whole-command wall time, start-up included, of `translate run` (each engine: torch, and on the
   CPU OpenVINO, engines.py) against a reference-style pipeline (what pytorch-CycleGAN-and-pix2pix's
   test.py does per image: torch.load of a .pth, PIL decode, ToTensor/Normalize, batch 1, eager
   fp32, PIL encode), both as fresh processes on the same images and weights. That pipeline is
   written here from the reference's behaviour; ../shared/tools/vs-reference runs the reference
   itself;
3. start-up: the whole command for one image, by engine: torch, OpenVINO with its model already
   compiled and cached (the second run of a weights file), and OpenVINO compiling it (the first).

    .venv/bin/python bench/infer_speed.py [--n 20] [--device auto] [--batches 1,2,4,8,16,32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from translate.core.checkpoints import save_weights  # noqa: E402
from translate.core.devices import bf16_native, cpu_name, pick_device  # noqa: E402
from translate.core.registry import create_net  # noqa: E402
from translate.inference.engines import openvino_version  # noqa: E402
from translate.inference.infer import RunOptions, run  # noqa: E402
from translate.nets import init_weights  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "horse2zebra" / "testA"

REFERENCE_STYLE = textwrap.dedent('''
    import sys, time
    t0 = time.perf_counter()
    import torch, torchvision.transforms as T
    from pathlib import Path
    from PIL import Image
    sys.path.insert(0, sys.argv[4])
    from translate.nets.resnet import ResnetGenerator
    net = ResnetGenerator(ngf=64, norm="instance", n_blocks=9)
    net.load_state_dict(torch.load(sys.argv[3], map_location="cpu", weights_only=True))
    net.eval()
    tf = T.Compose([T.Resize(256, T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
    for p in sorted(Path(sys.argv[1]).glob("*.jpg")):
        x = tf(Image.open(p).convert("RGB"))[None]
        with torch.no_grad():
            y = net(x)[0]
        arr = ((y.permute(1, 2, 0).numpy() + 1) / 2 * 255).clip(0, 255).astype("uint8")
        Image.fromarray(arr).save(out / (p.stem + ".png"))
''')


def conv_flops(net: nn.Module, size: int = 256) -> float:
    """FLOPs (2 x multiply-adds) of one forward at size x size, counted from conv shapes."""
    total = 0.0

    def hook(mod: nn.Module, args, out) -> None:
        nonlocal total
        if isinstance(mod, nn.ConvTranspose2d):
            k = mod.weight[0].numel()  # (out/groups) * kh * kw per input element
            total += 2.0 * args[0].numel() * k
        else:
            total += 2.0 * out.numel() * mod.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="images (256x256 JPEGs from horse2zebra/testA)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", default="")
    ap.add_argument("--skip-e2e", action="store_true", help="skip the whole-command comparison")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each whole command (best counts)")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"needs {DATA} (../shared/data beside the repository)")
    device = pick_device(args.device)
    native = bf16_native(device)
    name = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"# translate run, resnet_9blocks ngf 64 at 256x256 | device {device} ({name}) | bf16 native: "
          f"{'yes' if native else 'no'} | torch {torch.__version__} | threads {torch.get_num_threads()}")

    tmp = Path(tempfile.mkdtemp(prefix="infer_speed_"))
    try:
        src = tmp / "in"
        src.mkdir()
        files = sorted(DATA.glob("*.jpg"))[: args.n]
        for f in files:
            shutil.copy(f, src / f.name)
        torch.manual_seed(0)
        net = create_net("resnet_9blocks", ngf=64, norm="instance")
        init_weights(net)
        weights = tmp / "w.safetensors"
        save_weights(weights, {"G": net}, {"G": {"net": "resnet_9blocks", "kwargs": {"ngf": 64, "norm": "instance"}}})
        torch.save(net.state_dict(), tmp / "latest_net_G.pth")
        flops = conv_flops(net)
        peaks = {"fp32": matmul_flops(device, torch.float32)}
        precisions = ["fp32"]
        if native:
            peaks["bf16"] = matmul_flops(device, torch.bfloat16)
            precisions.append("bf16")
        print(f"# network: {flops / 1e9:.1f} GFLOP per image | measured matmul: "
              + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in peaks.items()))
        if not native:
            print("# bf16 rows skipped: this device has no native bf16 (it would be emulated, far slower than fp32)")
        batches = [int(b) for b in args.batches.split(",")] if args.batches else (
            [1, 2, 4, 8, 16, 32, 64] if device.type == "cuda" else [1, 2, 4, 8, 16, 32])

        os.environ["TRANSLATE_CACHE"] = str(tmp / "cache")  # (OpenVINO's compiled models)
        engines = ["torch", *(["openvino"] if device.type == "cpu" and openvino_version() else [])]
        print(f"\n{'engine':<10}{'precision':<10}{'batch':>6}{'img/s':>10}{'s/img':>9}{'% of matmul peak':>18}")
        for engine in engines:
            for prec in precisions:
                for b in batches:
                    out = tmp / f"out_{engine}_{prec}_{b}"
                    opts = RunOptions(weights=weights, precision=prec, batch_size=b, device=str(device),
                                      skip_existing=False, engine=engine)
                    run(src, out, opts)  # warm-up (also checks the run works, and compiles)
                    s = run(src, out, opts)
                    frac = s.images_per_s * flops / peaks[prec] * 100
                    print(f"{engine:<10}{prec:<10}{b:>6}{s.images_per_s:>10.2f}{1 / s.images_per_s:>9.3f}"
                          f"{frac:>17.1f}%")

        if args.skip_e2e:
            return
        print(f"\n# whole command, start-up included, {len(files)} images, fresh processes, "
              f"best of {args.repeat} (runs interleaved)")
        translate_bin = Path(sys.executable).parent / "translate"
        commands = {"reference-style test.py pipeline (fp32, batch 1)": [
            sys.executable, "-c", REFERENCE_STYLE, str(src), "{out}", str(tmp / "latest_net_G.pth"), str(ROOT)]}
        for engine in engines:
            for prec in ["auto", "fp32"]:
                commands[f"translate run --engine {engine} --precision {prec}"] = [
                    str(translate_bin), "run", str(src), "{out}", "--weights", str(weights), "--precision", prec,
                    "--engine", engine, "--quiet", "--device", str(device)]
        best = {label: float("inf") for label in commands}
        for r in range(args.repeat):
            for i, (label, cmd) in enumerate(commands.items()):
                out = str(tmp / f"e2e_{r}_{i}")
                t = time.perf_counter()
                subprocess.run([c.replace("{out}", out) for c in cmd], check=True)
                best[label] = min(best[label], time.perf_counter() - t)
        ref = best["reference-style test.py pipeline (fp32, batch 1)"]
        rows = list(best.items())
        print(f"{'pipeline':<60}{'seconds':>9}{'img/s':>9}{'vs reference-style':>20}")
        for label, sec in rows:
            print(f"{label:<60}{sec:>9.2f}{len(files) / sec:>9.2f}{ref / sec:>19.2f}x")

        print(f"\n# start-up: the whole command for one image, best of {args.repeat}")
        one = tmp / "one"
        one.mkdir()
        shutil.copy(files[0], one / files[0].name)
        start_up = {}
        for engine in engines:
            cases = [("", None)] if engine == "torch" else [(", compiled model cached", None), (", compiling", "cold")]
            for note, cold in cases:
                times = []
                for r in range(args.repeat):
                    if cold:
                        shutil.rmtree(tmp / "cache", ignore_errors=True)
                    t = time.perf_counter()
                    subprocess.run([str(translate_bin), "run", str(one), str(tmp / f"one_{engine}{cold}{r}"),
                                    "--weights", str(weights), "--engine", engine, "--quiet", "--device",
                                    str(device)], check=True)
                    times.append(time.perf_counter() - t)
                start_up[f"translate run --engine {engine}{note}"] = min(times)
        for label, sec in start_up.items():
            print(f"{label:<60}{sec:>9.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
