"""`translate run` writes G(input): output pixels against a direct forward of the network.

Direction, padding and crop-back, batching (instance and batch norm), mixed sizes, tiling, the CLI.
Inputs are real photos, reduced and saved as PNG; outputs are PNG, so the comparison is lossless.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import translate.inference.infer as infer
import translate.inference.tiling as tiling
from translate.cli.commands import app
from translate.core.checkpoints import save_weights
from translate.core.registry import create_net
from translate.inference.infer import RunOptions, run
from translate.inference.plan import DEFAULT_WEIGHTS
from translate.inference.translator import Translator
from translate.nets import init_weights

NGF = 8
MULTIPLE = {"resnet_6blocks": 4, "unet_128": 128, "unet_256": 256}  # two stride-2 levels; 7 or 8 of them
PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "china", "flower", "motorcycle_left"]


# --- inputs and expected outputs ------------------------------------------------------------------

@functools.cache
def photo(name: str) -> Image.Image:
    return Image.open(shared("photos", f"{name}.jpg")).convert("RGB")


def put(path: Path, im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Save ``im`` resized to ``size`` (w, h) as PNG; return its (h, w, 3) uint8 pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = im.resize(size, Image.BICUBIC)
    im.save(path)
    return np.asarray(im)


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def to_input(img: np.ndarray) -> torch.Tensor:
    """(h, w, 3) uint8 -> (1, 3, h, w) float in [-1, 1], contiguous (as the run feeds the net)."""
    return (torch.from_numpy(img.copy()).permute(2, 0, 1).contiguous().float() / 127.5 - 1)[None]


def forward(net: nn.Module, img: np.ndarray, m: int, mode: str | None = None) -> np.ndarray:
    """The expected output: pad bottom/right to a multiple of ``m`` (at least 16 and ``m``), reflect
    where each pad is shorter than its side else replicate, forward alone, round, crop back."""
    h, w = img.shape[:2]
    low = max(m, 16)
    ph, pw = max(low, math.ceil(h / m) * m) - h, max(low, math.ceil(w / m) * m) - w
    mode = mode or ("reflect" if ph < h and pw < w else "edge")
    x = to_input(np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode))
    with torch.inference_mode():
        y = net.eval()(x)
    u8 = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8[0, :, :h, :w].permute(1, 2, 0).numpy()


def assert_matches(out: np.ndarray, want: np.ndarray, exact: bool, what: str = "") -> None:
    """Equal; or, where the net ran in a batch, at most 1 level on under 0.1% of the values.

    A batch is not bit-identical to single-image forwards on the CPU: oneDNN picks other kernels and
    summation orders for N > 1, so a few outputs land on the other side of a .5 rounding boundary.
    """
    assert out.shape == want.shape, what
    diff = np.abs(out.astype(np.int16) - want.astype(np.int16))
    if exact:
        assert diff.max() == 0, f"{what}: {np.count_nonzero(diff)} values differ, by up to {diff.max()}"
    else:
        assert diff.max() <= 1 and np.count_nonzero(diff) < 1e-3 * diff.size, \
            f"{what}: {np.count_nonzero(diff)} of {diff.size} values differ, by up to {diff.max()}"


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


# --- networks -----------------------------------------------------------------------------------------

def make_net(name: str, norm: str = "instance", seed: int = 0) -> nn.Module:
    """A random generator, initialised as training does. Batch norm gets running statistics from
    real photos (train-mode passes), as a trained net has; the default mean 0, var 1 would shrink
    every image to nearly the same flat output, where a mix-up could not be seen."""
    torch.manual_seed(seed)
    net = init_weights(create_net(name, ngf=NGF, norm=norm))
    if norm == "batch":
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.reset_running_stats()
                mod.momentum = None  # a plain average over the passes
        x = torch.cat([to_input(np.asarray(photo(p).resize((64, 64)))) for p in ("retina", "hubble_deep_field",
                                                                                   "immunohistochemistry")])
        with torch.no_grad():
            net.train()(x)
    return net.eval()


def save_one(path: Path, name: str, net: nn.Module, norm: str = "instance") -> Path:
    """A weights file with one generator ``G`` (pix2pix-shaped)."""
    return save_weights(path, {"G": net}, {"G": {"net": name, "kwargs": {"ngf": NGF, "norm": norm}}})


@pytest.fixture(scope="module")
def cyclegan(tmp_path_factory) -> tuple[Path, dict[str, nn.Module]]:
    """A CycleGAN-shaped weights file: G_A and G_B, resnet_6blocks of different random weights."""
    nets = {"G_A": make_net("resnet_6blocks", seed=1), "G_B": make_net("resnet_6blocks", seed=2)}
    spec = {"net": "resnet_6blocks", "kwargs": {"ngf": NGF, "norm": "instance"}}
    path = tmp_path_factory.mktemp("w") / "cyclegan.safetensors"
    save_weights(path, nets, {"G_A": spec, "G_B": spec})
    return path, nets


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, torch.Tensor]]:
    """Every input the network is given during a run, as (kind, copy): kind is ``batch``
    (launch_batch), ``stats`` (the InstanceNorm statistics pass of tiling) or ``tile``."""
    seen: list[tuple[str, torch.Tensor]] = []
    where: list[str] = []
    call, stats, tiled = Translator.__call__, tiling.instance_norm_stats, infer.translate_tiled

    def spy_call(self, x, z=None):
        seen.append((where[-1] if where else "batch", x.detach().clone()))
        return call(self, x, z)

    def within(kind, fn):
        def wrapper(*args, **kwargs):
            where.append(kind)
            try:
                return fn(*args, **kwargs)
            finally:
                where.pop()
        return wrapper

    monkeypatch.setattr(Translator, "__call__", spy_call)
    monkeypatch.setattr(tiling, "instance_norm_stats", within("stats", stats))
    monkeypatch.setattr(infer, "translate_tiled", within("tile", tiled))
    return seen


def shapes(calls: list[tuple[str, torch.Tensor]], kind: str) -> list[tuple[int, ...]]:
    return [tuple(x.shape) for k, x in calls if k == kind]


def opts(weights: Path, **kw) -> RunOptions:
    # torch's fp32 forward is the expectation, so torch runs it (OpenVINO against torch: test_engines.py)
    return RunOptions(weights=weights, precision="fp32", format="png", workers=0, engine="torch", **kw)


# --- the tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("direction", "mine", "other"), [("AtoB", "G_A", "G_B"), ("BtoA", "G_B", "G_A")])
def test_direction_runs_its_generator(cyclegan, tmp_path, direction, mine, other):
    """AtoB writes G_A(x), BtoA writes G_B(x), pixel for pixel; the other net's output is far off."""
    weights, nets = cyclegan
    imgs = {"horse.png": put(tmp_path / "in" / "horse.png",
                             Image.open(shared("horse2zebra", "testA", "n02381460_1000.jpg")), (128, 128)),
            "cat.png": put(tmp_path / "in" / "cat.png", photo("chelsea"), (120, 80))}
    summary = run(tmp_path / "in", tmp_path / "out", opts(weights, direction=direction, batch_size=1))
    assert summary.translated == 2 and not summary.failed
    for name, img in imgs.items():
        out = read(tmp_path / "out" / name)
        assert_matches(out, forward(nets[mine], img, 4), exact=True, what=name)
        assert mean_abs(out, forward(nets[other], img, 4)) > 10, f"{name}: {other} gives the same image"


@pytest.mark.parametrize(
    ("net", "size", "seen"),
    [
        pytest.param("resnet_6blocks", (250, 173), (176, 252), id="resnet-reflect"),
        pytest.param("unet_256", (250, 173), (256, 256), id="unet256-reflect"),
        pytest.param("unet_128", (100, 60), (128, 128), id="unet128-replicate"),  # 68 rows to add > 60
        pytest.param("resnet_6blocks", (7, 10), (16, 16), id="resnet-min-side-replicate"),
    ],
)
def test_pads_bottom_right_then_crops_back(tmp_path, calls, net, size, seen):
    """An image off the net's size multiple is padded at the bottom/right (reflect where it fits,
    else replicate) to the size the net needs, translated, and cropped back to its own size."""
    g = make_net(net)
    m = MULTIPLE[net]
    img = put(tmp_path / "in" / "x.png", photo("coffee"), size)
    run(tmp_path / "in", tmp_path / "out", opts(save_one(tmp_path / "g.safetensors", net, g), batch_size=1))
    assert shapes(calls, "batch") == [(1, 3, *seen)]
    out = read(tmp_path / "out" / "x.png")
    assert out.shape == (size[1], size[0], 3)
    want = forward(g, img, m)
    assert_matches(out, want, exact=True)
    other = "edge" if (seen[0] - size[1] < size[1] and seen[1] - size[0] < size[0]) else "reflect"
    assert not np.array_equal(out, forward(g, img, m, mode=other)), "the padding mode is not pinned down"


@pytest.mark.parametrize("norm", ["instance", "batch"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_batches_give_each_image_its_own_output(tmp_path, calls, norm, batch_size):
    """Six equal-size photos in batches of 4 + 2 (or 1): each output is its own single-image forward,
    in its own file; batch norm in eval mode uses running statistics, so batching changes nothing."""
    g = make_net("resnet_6blocks", norm)
    imgs = {f"{i}_{p}.png": put(tmp_path / "in" / f"{i}_{p}.png", photo(p), (96, 64)) for i, p in enumerate(PHOTOS[:6])}
    weights = save_one(tmp_path / "g.safetensors", "resnet_6blocks", g, norm)
    summary = run(tmp_path / "in", tmp_path / "out", opts(weights, batch_size=batch_size))
    assert summary.translated == 6
    assert shapes(calls, "batch") == ([(4, 3, 64, 96), (2, 3, 64, 96)] if batch_size == 4 else [(1, 3, 64, 96)] * 6)
    want = {name: forward(g, img, 4) for name, img in imgs.items()}
    outs = list(want.values())
    assert min(mean_abs(a, b) for i, a in enumerate(outs) for b in outs[i + 1 :]) > 3  # a mix-up would show
    for name in imgs:
        assert_matches(read(tmp_path / "out" / name), want[name], exact=batch_size == 1, what=name)


def test_mixed_sizes_each_output_from_its_own_input(tmp_path, calls):
    """Files of several sizes, grouped by padded size into batches that interleave the sorted file
    order (and share a batch across different true sizes): every file gets its own translation."""
    g = make_net("resnet_6blocks", seed=3)
    sizes = {"a_chelsea": (96, 64), "b_coffee": (94, 62), "c_rocket": (64, 96), "d_astronaut": (80, 80),
             "e_china": (96, 64), "f_flower": (77, 79), "g_motorcycle_left": (61, 95)}
    imgs = {f"{k}.png": put(tmp_path / "in" / f"{k}.png", photo(k[2:]), s) for k, s in sizes.items()}
    imgs["h_horse.png"] = put(tmp_path / "in" / "h_horse.png",
                              Image.open(shared("horse2zebra", "testA", "n02381460_1010.jpg")), (50, 30))
    weights = save_one(tmp_path / "g.safetensors", "resnet_6blocks", g)
    summary = run(tmp_path / "in", tmp_path / "out", opts(weights, batch_size=4))
    assert summary.translated == 8 and not summary.failed
    assert Counter(shapes(calls, "batch")) == Counter([(3, 3, 64, 96), (2, 3, 96, 64), (2, 3, 80, 80), (1, 3, 32, 52)])
    for name, img in imgs.items():
        assert_matches(read(tmp_path / "out" / name), forward(g, img, 4), exact=False, what=name)


def test_cli_run_writes_g_of_each_input(cyclegan, tmp_path, calls):
    """`translate run IN OUT --weights W --format png --precision fp32 --batch-size 4` on five photos:
    a batch of 4 and one of 1, each file G_A of its own input (decoded in a worker process)."""
    weights, nets = cyclegan
    imgs = {f"{p}.png": put(tmp_path / "in" / f"{p}.png", photo(p), (96, 64)) for p in PHOTOS[:5]}
    res = CliRunner().invoke(app, ["run", str(tmp_path / "in"), str(tmp_path / "out"), "--weights", str(weights),
                                   "--format", "png", "--precision", "fp32", "--batch-size", "4",
                                   "--engine", "torch"])
    assert res.exit_code == 0, res.output
    assert "translated 5" in res.output
    assert shapes(calls, "batch") == [(4, 3, 64, 96), (1, 3, 64, 96)]
    for name, img in imgs.items():
        assert_matches(read(tmp_path / "out" / name), forward(nets["G_A"], img, 4), exact=False, what=name)


def locate(tile: torch.Tensor, x: torch.Tensor, k: int = 16) -> tuple[int, int]:
    """(top, left) of ``tile`` in the image ``x`` (both (1, 3, ., .)), by its top-left k x k patch."""
    windows = x[0].unfold(1, k, 1).unfold(2, k, 1)  # (3, H-k+1, W-k+1, k, k)
    hits = (windows == tile[0, :, :k, :k][:, None, None]).all(dim=4).all(dim=3).all(dim=0).nonzero()
    assert len(hits) == 1, f"tile found at {hits.tolist()}"
    return int(hits[0, 0]), int(hits[0, 1])


@pytest.mark.parametrize(
    ("size", "overlap", "min_psnr"),
    [
        pytest.param((240, 160), 32, 45, id="aligned"),
        pytest.param((240, 160), 30, 45, id="step-98"),  # tile - overlap off the grid: the step is rounded to it
        # the statistics pass sees the image resampled to multiples of 4 (172x248): ~40 dB at best
        pytest.param((250, 173), 32, 36, id="odd-size"),  # sides off the grid: tiles of the padded image
    ],
)
def test_big_image_goes_through_aligned_tiles(tmp_path, calls, size, overlap, min_psnr):
    """Above max_pixels an image is translated in tiles of at most ``tile`` pixels, which cover it and
    start on the net's stride grid; with whole-image statistics (max_pixels just below the image)
    the shipped model's tiled output stays close to the untiled one. A small image beside it is
    not tiled, and comes out the same either way."""
    w, h = size
    img = put(tmp_path / "in" / "big.png", photo("china"), size)
    put(tmp_path / "in" / "small.png", photo("coffee"), (64, 48))
    summary = run(tmp_path / "in", tmp_path / "tiled",
                  opts(DEFAULT_WEIGHTS, max_pixels=w * h - 1, tile=128, overlap=overlap, batch_size=4))
    assert summary.translated == 2
    assert shapes(calls, "batch") == [(1, 3, 48, 64)]  # the small image, whole
    assert len(shapes(calls, "stats")) == 1
    tiles = [x for k, x in calls if k == "tile"]
    assert len(tiles) > 1 and all(x.shape[0] == 1 and max(x.shape[-2:]) <= 128 for x in tiles)
    x = to_input(img)
    origins = [locate(t, x) for t in tiles]
    covered = torch.zeros(h, w, dtype=torch.bool)
    for (top, left), t in zip(origins, tiles, strict=True):
        covered[top : top + t.shape[-2], left : left + t.shape[-1]] = True
    assert covered.all()
    assert all(top % 4 == 0 and left % 4 == 0 for top, left in origins), origins

    calls.clear()
    run(tmp_path / "in", tmp_path / "whole", opts(DEFAULT_WEIGHTS, batch_size=4))
    assert not shapes(calls, "tile") and len(shapes(calls, "batch")) == 2
    assert np.array_equal(read(tmp_path / "tiled" / "small.png"), read(tmp_path / "whole" / "small.png"))
    tiled, whole = read(tmp_path / "tiled" / "big.png"), read(tmp_path / "whole" / "big.png")
    assert tiled.shape == whole.shape == (h, w, 3)
    assert psnr(tiled, whole) > min_psnr


def test_a_one_channel_translator_sees_the_luma_training_reads():
    """A net with in_ch 1 gets each image's luma as training reads it (images.model_input: ITU-R 601,
    truncated to uint8), and its one-channel output comes back as gray RGB."""
    from translate.core.images import read_rgb, to_gray, to_signed

    class Echo(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    img = read_rgb(next(shared("photos").glob("*.jpg")))[:, :96, :128]
    tr = Translator(Echo(), torch.device("cpu"), "fp32", in_ch=1, out_ch=1)
    y = tr(to_signed(img)[None])
    assert y.shape == (1, 3, 96, 128)
    want = to_signed(to_gray(img))
    assert torch.equal(y[0, :1], want) and torch.equal(y[0, 1], y[0, 0]) and torch.equal(y[0, 2], y[0, 0])
