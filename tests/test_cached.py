"""`translate run` from a cached OpenVINO model without torch (translate/inference/cached.py): the same
files as the full path (pixels and alpha equal), torch never imported, every other run left to the full
path with nothing written, and a group signal handled as the full path handles it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_first, photos_of, shared
from PIL import Image

from translate.core.checkpoints import save_weights
from translate.core.devices import cpu_bf16_native
from translate.core.options import RunOptions
from translate.core.registry import create_net
from translate.inference import cached
from translate.nets import init_weights

pytest.importorskip("openvino", reason="the openvino package is a dependency; this install lacks it")
if cached.cpu_bf16_native() is None:
    pytest.skip("this CPU's bf16 support cannot be told without oneDNN: the cached path declines every run here",
                allow_module_level=True)
# auto on a CPU without bf16 may pick torch's Winograd convolutions (engines.pick_engine), and the cached
# path leaves auto to the full path there: name the engine
ENGINE = "auto" if cached.cpu_bf16_native() else "openvino"


def translate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`translate ARGS` as a user runs it, with Python's import log on stderr."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "translate", *args], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def imported(stderr: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", stderr, re.M)}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture
def photos(tmp_path) -> Path:
    """Real photos: sizes that need padding to the net's multiple, two of one size (a batch of 2), an RGBA PNG."""
    root = tmp_path / "in"
    photos_of(root, [(150, 117), (184, 126), (218, 135)], ".jpg")
    with Image.open(root / "a1.jpg") as im:
        rgba = im.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(im.size))
        rgba.save(root / "sub_alpha.png")
        im.transpose(Image.FLIP_TOP_BOTTOM).save(root / "a1_flipped.jpg")
    return root


def test_a_cached_run_writes_the_full_paths_files_without_importing_torch(weights, photos, tmp_path):
    env = {**os.environ, "TRANSLATE_CACHE": str(tmp_path / "cache")}
    common = ["-w", str(weights), "--direction", "BtoA", "--format", "png", "-b", "2", "--keep-alpha",
              "--engine", ENGINE]
    first = translate("run", str(photos), str(tmp_path / "full"), *common, env=env)
    assert "torch" in imported(first.stderr) and "compiled the network for OpenVINO" in first.stderr
    second = translate("run", str(photos), str(tmp_path / "cached"), *common, env=env)
    assert "openvino" in imported(second.stderr)
    assert not {m for m in imported(second.stderr) if m == "torch" or m.startswith("torch.")}, "torch was imported"
    assert "translated 5, skipped 0 (already there), failed 0 of 5 images" in second.stderr, second.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "full").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "cached").iterdir()) and len(names) == 5
    for name in names:
        a, b = pixels(tmp_path / "full" / name), pixels(tmp_path / "cached" / name)
        assert a.shape == b.shape and np.array_equal(a, b), name
    assert pixels(tmp_path / "cached" / "sub_alpha.png").shape[-1] == 4  # the alpha came back


def test_every_other_run_is_left_to_the_full_path_with_nothing_written(weights, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSLATE_CACHE", str(tmp_path / "cache"))
    base = RunOptions(weights=weights, format="png", engine=ENGINE)
    assert cached.run_cached(photos, tmp_path / "out", base) is None  # nothing cached yet
    assert not (tmp_path / "out").exists()
    from translate.inference.infer import run

    assert run(photos, tmp_path / "full", base).translated == 5  # converts and caches the model
    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    spec = {"net": "resnet_6blocks", "kwargs": {"ngf": 8, "norm": "instance"}}
    save_weights(other, {"G": init_weights(create_net(spec["net"], **spec["kwargs"]))}, {"G": spec})
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)  # (read, it would block for ever)
    declined = {"--size": {"size": 64}, "tiles": {"max_pixels": 100 * 100}, "--engine torch": {"engine": "torch"},
                "--workers": {"workers": 1}, "fp16": {"precision": "fp16"}, "--compile": {"compile": True},
                "other weights": {"weights": other}, "the other generator": {"direction": "BtoA"},
                "a folder as weights": {"weights": tmp_path}, "a FIFO as weights": {"weights": fifo}}
    for why, change in declined.items():
        assert cached.run_cached(photos, tmp_path / "out", RunOptions(**{**base.__dict__, **change})) is None, why
        assert not (tmp_path / "out").exists(), why
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cached.run_cached(photos, tmp_path / "out", base) is None, "torchrun"
    monkeypatch.delenv("WORLD_SIZE")
    summary = cached.run_cached(photos, tmp_path / "out", base)
    assert summary is not None and summary.translated == 5 and summary.exit_code == 0
    rerun = cached.run_cached(photos, tmp_path / "out", base)  # outputs there: skipped, as the full path does
    assert rerun is not None and rerun.skipped == 5 and rerun.translated == 0


def test_cpu_bf16_is_told_as_onednn_tells_it(monkeypatch):
    assert cached.cpu_bf16_native() == cpu_bf16_native()
    for cap in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # oneDNN capped (either name): only oneDNN can say
        monkeypatch.setenv(cap, "AVX2")
        assert cached.cpu_bf16_native() is None, cap
        monkeypatch.delenv(cap)


@pytest.fixture(scope="module")
def slow_weights(tmp_path_factory) -> Path:
    """resnet_9blocks at full width: at 640 px, most of a second an image through OpenVINO here."""
    torch.manual_seed(0)
    spec = {"net": "resnet_9blocks", "kwargs": {"ngf": 64, "norm": "instance"}}
    path = tmp_path_factory.mktemp("w") / "slow.safetensors"
    save_weights(path, {"G": init_weights(create_net(spec["net"], **spec["kwargs"]))}, {"G": spec})
    return path


def test_a_cached_run_stopped_by_a_group_signal_finishes_in_flight_and_rerun_completes(slow_weights, tmp_path,
                                                                                         monkeypatch):
    from test_signals import assert_run_stopped_whole, start, stop_group, wait_for

    monkeypatch.setenv("TRANSLATE_CACHE", str(tmp_path / "cache"))  # (the commands started inherit it)
    src = tmp_path / "in"
    src.mkdir()
    for p in copy_first(shared("horse2zebra", "testA"), tmp_path / "jpg", 6):
        Image.open(p).resize((640, 640)).save(src / f"{p.stem}.jpg")

    def run(inp: Path, out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-X", "importtime", "-m", "translate", "run", str(inp), str(out), "-w",
                str(slow_weights), "--engine", ENGINE, *extra]

    copy_first(src, tmp_path / "warm", 1)
    subprocess.run(run(tmp_path / "warm", tmp_path / "warm_out"), check=True, timeout=600,
                   capture_output=True)  # the first run of these weights: the model is cached
    out = tmp_path / "out"
    proc, err = start(run(src, out), tmp_path)
    wait_for(proc, err, lambda: len(list(out.rglob("*.jpg"))) >= 2, "outputs")
    rc = stop_group(proc, signal.SIGTERM)
    assert rc == 143, err.read_text()[-3000:]
    text = assert_run_stopped_whole(err, out, signal.SIGTERM, 6, (640, 640))
    assert "compiled the network" not in text and "openvino" in imported(text) and "torch" not in imported(text)
    again = subprocess.run(run(src, out, "--quiet"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len([p for p in out.rglob("*") if p.is_file()]) == 6
