"""Shared fixtures: small copies of real images from ../shared/data, skipped when it is absent."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI=true the real data must be there: without it a third of the suite would skip and
    CI pass hollow."""
    if IN_CI and not SHARED.is_dir():
        pytest.exit(f"CI=true but the real image data is missing: {SHARED} (../shared/data beside the "
                    "repository); the tests that need it would all be skipped", returncode=2)


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason (fail it under CI=true)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        missing(f"needs the real image data at {p} (../shared/data beside the repository)")
    return p


def missing(why: str) -> None:
    """Skip the test for want of something from ../shared; under CI=true, fail it."""
    if IN_CI:
        pytest.fail(f"CI=true: {why}")
    pytest.skip(why)


def copy_first(src: Path, dst: Path, n: int) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.is_file())[:n]
    return [Path(shutil.copy(p, dst / p.name)) for p in files]


def photos_of(root: Path, sizes: list[tuple[int, int]], suffix: str = ".png") -> list[Path]:
    """Real photos (shared/data/photos) resized to ``sizes`` (width, height), saved in ``root`` as a0, a1, ..."""
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (f, size) in enumerate(zip(copy_first(shared("photos"), root.parent / f"{root.name}_src", len(sizes)),
                                      sizes, strict=True)):
        with Image.open(f) as im:
            im.convert("RGB").resize(size).save(root / f"a{i}{suffix}")
        files.append(root / f"a{i}{suffix}")
    return files


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory) -> Iterator[Path]:
    """OpenVINO's compiled models (translate/inference/engines.py) in a folder of the test session's, not the
    user's ~/.cache; commands the tests start inherit it."""
    root = tmp_path_factory.mktemp("engine-cache")
    before = os.environ.get("TRANSLATE_CACHE")
    os.environ["TRANSLATE_CACHE"] = str(root)
    yield root
    if before is None:
        os.environ.pop("TRANSLATE_CACHE", None)
    else:
        os.environ["TRANSLATE_CACHE"] = before


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """A small CycleGAN-shaped weights file (G_A, G_B: resnet_6blocks, ngf 8), random but fixed."""
    import torch

    from translate.core.checkpoints import save_weights
    from translate.core.registry import create_net
    from translate.nets import init_weights

    torch.manual_seed(0)
    spec = {"net": "resnet_6blocks", "kwargs": {"ngf": 8, "norm": "instance"}}
    nets = {name: init_weights(create_net(spec["net"], **spec["kwargs"])) for name in ("G_A", "G_B")}
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(path, nets, {"G_A": spec, "G_B": spec})
    return path


@pytest.fixture
def single_thread():
    """One intra-op thread for tests of many tiny nets: on a busy 2-core machine OpenMP's waiting made
    test_nets.py's weights-file round trips take 40 s with 2 threads, 3 s with 1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def pairs4(tmp_path: Path) -> Path:
    """4 side-by-side photo|outline pairs in the aligned layout (train/)."""
    root = tmp_path / "p2o"
    copy_first(shared("people2outline", "train"), root / "train", 4)
    return root


@pytest.fixture
def h2z4(tmp_path: Path) -> Path:
    """4 horses and 4 zebras in the unaligned layout (trainA/, trainB/)."""
    root = tmp_path / "h2z"
    copy_first(shared("horse2zebra", "trainA"), root / "trainA", 4)
    copy_first(shared("horse2zebra", "trainB"), root / "trainB", 4)
    return root


# Tiny versions of any recipe, for tests that run many of them. A key is applied only where the
# recipe's dataclasses have it (``applicable``), so names of one method's model (fmap_base,
# channel_max, ...) do not break another's; a new recipe is made tiny without an edit here.
TINY = [
    "data.load_size=32", "data.crop_size=32", "data.num_workers=0", "data.max_dataset_size=4",
    "train.batch_size=2", "train.sample_every=0", "train.log_every=1", "train.n_samples=2", "train.save_every=0",
    "train.device=cpu",
    "model.ngf=4", "model.ndf=4", "model.nf=4", "model.z_dim=8", "model.w_dim=8", "model.mapping_layers=1",
    "model.fmap_base=32", "model.fmap_max=8", "model.channel_base=64", "model.channel_max=8",
]
TINY_BY_RECIPE = {"pix2pix": ["data.load_size=256", "data.crop_size=256"],  # unet_256 halves 8 times
                  "bicyclegan": ["data.load_size=128", "data.crop_size=128", "model.generator=bicycle_unet_128",
                                 "model.discriminator=basic_128_multi", "model.nef=4"]}  # its 128 px nets


def train_two_processes(recipe: str, data: Path, out: Path, sets: list[str], steps: int) -> list[dict]:
    """`translate train --devices=2` as a user runs it (one thread per process: 2 cores here), checked to end
    at ``steps``; its log.jsonl lines."""
    cmd = [sys.executable, "-m", "translate", "train", "--devices=2", f"--recipe={recipe}", f"--data={data}",
           f"--out={out}", *(f"--set={s}" for s in sets)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0 and f"done: step {steps}" in res.stderr, res.stderr[-3000:]
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def applicable(method: str, overrides: list[str]) -> list[str]:
    """The overrides whose key exists in this method's sections."""
    from translate.core.recipes import DataConfig, TrainConfig
    from translate.methods import get_method

    cls = get_method(method)
    sections = {"data": DataConfig, "train": TrainConfig, "model": cls.ModelConfig, "loss": cls.LossConfig}
    keep = []
    for text in overrides:
        section, key = text.split("=", 1)[0].split(".", 1)
        if key in {f.name for f in dataclasses.fields(sections[section])}:
            keep.append(text)
    return keep


def tiny(recipe: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """``--set`` overrides that make recipe ``recipe`` (a name in recipes/) small and quick."""
    from translate.core.recipes import load_recipe

    return applicable(load_recipe(recipe).method, [*TINY, *TINY_BY_RECIPE.get(recipe, []), *extra])


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def plain(text: str) -> str:
    """CLI output without colour codes."""
    return ANSI.sub("", text)


def assert_one_line_error(result, *needles: str) -> str:
    """A CliRunner result that failed with exit 1 and one ``error:`` line (no traceback) holding ``needles``."""
    text = plain(result.output)
    assert result.exit_code == 1, text
    assert "Traceback" not in text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("error:"), text
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
