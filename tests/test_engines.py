"""Inference engines (translate/inference/engines.py): OpenVINO's outputs against torch fp32's on real photos,
its cache on disk (hit, corrupted, stale), and what `--engine` says where it cannot run."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photos_of
from PIL import Image
from typer.testing import CliRunner

from translate.cli.commands import app
from translate.core.checkpoints import save_weights
from translate.core.devices import cpu_bf16_native
from translate.core.registry import create_net
from translate.nets import init_weights

pytest.importorskip("openvino", reason="the openvino package is a dependency; this install lacks it")
runner = CliRunner()
PRECISION = "bf16" if cpu_bf16_native() else "fp32"  # what auto gives OpenVINO here


@dataclass
class Cache:
    root: Path
    conversions: int = 0  # each a cache miss


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Cache:
    """An empty engine cache of this test's own, counting the models converted into it."""
    import openvino.tools.ovc as ovc  # where engines.py takes convert_model from, on a cache miss

    found = Cache(tmp_path / "cache")
    monkeypatch.setenv("TRANSLATE_CACHE", str(found.root))
    convert = ovc.convert_model

    @functools.wraps(convert)  # (ovc reads its own convert_model's docstring while it converts)
    def counted(*args, **kwargs):
        found.conversions += 1
        return convert(*args, **kwargs)

    monkeypatch.setattr(ovc, "convert_model", counted)
    return found


@pytest.fixture(scope="module")
def cut_weights(tmp_path_factory) -> Path:
    """An anti-aliased resnet_6blocks (the CUT code's layout), trained a little so it is not flat: random
    but fixed weights, init as the reference's."""
    torch.manual_seed(0)
    spec = {"net": "resnet_6blocks", "kwargs": {"ngf": 16, "norm": "instance", "antialias": True, "antialias_up": True}}
    path = tmp_path_factory.mktemp("w") / "g.safetensors"
    save_weights(path, {"G": init_weights(create_net(spec["net"], **spec["kwargs"]), "normal", 0.2)}, {"G": spec})
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """Real photos of several sizes, two of one size (a batch of 2), one large enough to be tiled."""
    root = tmp_path / "in"
    photos_of(root, [(160, 120), (192, 128), (224, 136)])
    with Image.open(root / "a0.png") as im:
        im.transpose(Image.FLIP_LEFT_RIGHT).save(root / "a0_mirror.png")  # the same size as a0: one batch
        im.resize((640, 480)).save(root / "large.png")  # over --max-pixels below: tiles
    return root


def psnr(a: Path, b: Path) -> float:
    x, y = (np.asarray(Image.open(p).convert("RGB"), np.float64) for p in (a, b))
    assert x.shape == y.shape
    return 10 * np.log10(255**2 / max(np.mean((x - y) ** 2), 1e-12))


def run(args: list[str]) -> str:
    res = runner.invoke(app, ["run", *args, "-q"])
    assert res.exit_code == 0, res.output
    return res.output


def test_openvino_gives_torch_fp32s_images_of_every_size_batch_and_tile(photos, cache, tmp_path):
    """The shipped model (trained) by --engine openvino in the precision auto picks here, against
    --engine torch --precision fp32: real photos of 4 sizes, a batch of 2 (-b 2), and an image over
    --max-pixels (its tiles run in torch, in the same precision): every output >= 40 dB. One
    conversion serves every size."""
    common = ["--format", "png", "-b", "2", "--max-pixels", str(400 * 400), "--tile", "256"]
    run([str(photos), str(tmp_path / "torch"), *common, "--engine", "torch", "--precision", "fp32"])
    run([str(photos), str(tmp_path / "ov"), *common, "--engine", "openvino", "--precision", PRECISION])
    names = sorted(p.name for p in photos.iterdir())
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == names
    for name in names:
        assert psnr(tmp_path / "torch" / name, tmp_path / "ov" / name) >= 40, name
    assert cache.conversions == 1


def test_openvino_converts_the_anti_aliased_layout_exactly(cut_weights, photos, cache, tmp_path):
    """The CUT code's anti-aliased generator (blur-pool, blur-upsample) in fp32: OpenVINO's images are
    torch's to within rounding (>= 60 dB)."""
    common = ["-w", str(cut_weights), "--format", "png", "--precision", "fp32"]
    run([str(photos), str(tmp_path / "torch"), *common, "--engine", "torch"])
    run([str(photos), str(tmp_path / "ov"), *common, "--engine", "openvino"])
    for name in (p.name for p in photos.iterdir()):
        assert psnr(tmp_path / "torch" / name, tmp_path / "ov" / name) >= 60, name


def test_the_second_run_reads_the_cache_and_a_broken_entry_is_rebuilt(cut_weights, photos, cache, tmp_path):
    """First run: one conversion; second: none (the cache is hit); a flipped byte in the stored model, or
    an entry written for another key (a stale one), is rebuilt rather than used; outputs stay the same."""
    args = [str(photos), "-w", str(cut_weights), "--format", "png", "--engine", "openvino", "--precision", PRECISION]
    run([args[0], str(tmp_path / "first"), *args[1:]])
    run([args[0], str(tmp_path / "second"), *args[1:]])
    assert cache.conversions == 1
    (entry,) = (cache.root / "openvino").iterdir()
    data = bytearray((entry / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (entry / "model.bin").write_bytes(bytes(data))
    run([args[0], str(tmp_path / "third"), *args[1:]])
    assert cache.conversions == 2
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["key"]["openvino"] = "0.0.0"
    (entry / "manifest.json").write_text(json.dumps(manifest))
    run([args[0], str(tmp_path / "fourth"), *args[1:]])
    assert cache.conversions == 3
    for name in (p.name for p in photos.iterdir()):
        for other in ("second", "third", "fourth"):
            assert psnr(tmp_path / "first" / name, tmp_path / other / name) >= 60, (other, name)


def test_engine_errors_are_one_line(cut_weights, photos, tmp_path, monkeypatch):
    """--engine openvino without the package, with --compile, or on another device; an unknown engine."""
    from translate.inference import engines

    base = ["run", str(photos), str(tmp_path / "out"), "-w", str(cut_weights)]
    cases = [(["--engine", "tensorrt"], "unknown engine 'tensorrt'; choose from auto, torch, openvino"),
             (["--engine", "openvino", "--compile"], "--compile is torch.compile"),
             (["--engine", "openvino", "--device", "meta"], "runs on the CPU")]
    for extra, needle in cases:
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 1 and needle in res.output and len(res.output.strip().splitlines()) == 1, res.output
    monkeypatch.setattr(engines, "openvino_version", lambda: None)
    res = runner.invoke(app, [*base, "--engine", "openvino"])
    assert res.exit_code == 1 and "pip install openvino" in res.output, res.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # where it is missing, auto is torch
    assert engines.pick_engine("auto", torch.device("cpu"), "bf16") == "torch"


SIGNAL_AFTER_TWO_MODELS = """
import gc, signal, subprocess, sys, torch
from pathlib import Path
from translate.inference.engines import Compiled
from translate.nets import init_weights
from translate.core.registry import create_net

net, x = init_weights(create_net("resnet_6blocks", ngf=8)).eval(), torch.zeros(1, 3, 32, 32)
first = Compiled(net, (x,), [(0,)], "first", "fp32", root=Path(sys.argv[1]))
second = Compiled(net, (x,), [(0,)], "second", "fp32", root=Path(sys.argv[1]))
first(x), second(x)
del first
gc.collect()
del second
gc.collect()
signal.signal(signal.SIGCHLD, lambda *args: None)  # a Python handler, as torch's DataLoader installs one
for _ in range(3):
    subprocess.run([sys.executable, "-c", "pass"], check=True)
print("ok")
"""


def test_models_compiled_and_freed_leave_signals_handled(tmp_path):
    """Two models compiled and freed, then a child process's SIGCHLD: the process goes on. (With an
    OpenVINO Core per model, freeing them left a freed alternate signal stack in place, and the
    next handled signal killed the process with SIGSEGV: the test suite died so.)"""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_TWO_MODELS, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), (res.returncode, res.stderr[-2000:])


def test_a_network_openvino_cannot_take_runs_in_torch_under_auto(photos, tmp_path, monkeypatch):
    """Auto falls back to torch with a note (the images still come); --engine openvino says so in one line."""
    import openvino.tools.ovc as ovc

    from translate.inference.engines import pick_engine

    def fails(*args, **kwargs):
        raise RuntimeError("Couldn't get TorchScript module by tracing.\nmore")

    monkeypatch.setattr(ovc, "convert_model", fails)
    monkeypatch.setenv("TRANSLATE_CACHE", str(tmp_path / "cache"))
    res = runner.invoke(app, ["run", str(photos), str(tmp_path / "auto"), "--format", "png"])
    assert res.exit_code == 0, res.output
    from translate.core.checkpoints import read_weights
    from translate.inference.plan import DEFAULT_WEIGHTS

    shipped = read_weights(DEFAULT_WEIGHTS).build("G")
    falls_back = pick_engine("auto", torch.device("cpu"), PRECISION, net=shipped) == "openvino"  # (auto picks it here)
    assert ("note: OpenVINO cannot compile this network (RuntimeError: Couldn't get TorchScript module by "
            "tracing.): torch runs it" in res.output) == falls_back, res.output
    assert len(list((tmp_path / "auto").iterdir())) == len(list(photos.iterdir()))
    res = runner.invoke(app, ["run", str(photos), str(tmp_path / "ov"), "--engine", "openvino"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "OpenVINO cannot compile this network (RuntimeError" in res.output and "--engine torch" in res.output
