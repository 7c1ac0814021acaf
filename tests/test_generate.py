"""sample / interpolate / reconstruct / encode / zoo, run as a user runs them, on tiny trained models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_first, shared
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from translate.cli.commands import app
from translate.core.recipes import list_recipes, load_recipe
from translate.inference.generate import sample
from translate.training.train import Trainer

runner = CliRunner()
TINY = ["data.load_size=32", "data.crop_size=32", "data.channels=1", "data.flip=false", "data.num_workers=0",
        "train.batch_size=8", "train.max_steps=2", "train.sample_every=0"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    for d in ("3", "7"):
        copy_first(shared("mnist", "train", d), root / "train" / d, 8)
    return root


def trained(recipe: str, data: Path, tmp: Path) -> Path:
    Trainer(load_recipe(recipe, [f"data.path={data}", *TINY]), tmp / recipe, quiet=True).fit()
    return tmp / recipe / "latest.safetensors"


@pytest.fixture(scope="module")
def models(digits, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("models")
    return {name: trained(name, digits, tmp) for name in ("dcgan", "cgan", "vae")}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_sample_writes_a_seeded_grid(models, tmp_path):
    args = ["sample", "--weights", str(models["dcgan"]), "-n", "16"]
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        res = runner.invoke(app, [*args, "--seed", str(seed), "-o", str(tmp_path / f"{name}.png")])
        assert res.exit_code == 0, res.output
    assert pixels(tmp_path / "a.png").shape == (4 * 34 + 2, 4 * 34 + 2, 3)
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))
    assert not np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "c.png"))


def test_truncation_zero_is_one_image_for_every_seed(models):
    for name in ("dcgan", "cgan"):
        a = sample(models[name], n=4, seed=1, truncation=0.0, class_name="3" if name == "cgan" else None)
        b = sample(models[name], n=4, seed=2, truncation=0.0, class_name="3" if name == "cgan" else None)
        assert torch.allclose(a, b) and torch.allclose(a[0], a[3]), name


def test_sample_by_class_name(models, tmp_path):
    res = runner.invoke(app, ["sample", "-w", str(models["cgan"]), "-n", "4", "--class", "7", "-o",
                              str(tmp_path / "sevens.png")])
    assert res.exit_code == 0, res.output
    bad = runner.invoke(app, ["sample", "-w", str(models["cgan"]), "--class", "9", "-o", str(tmp_path / "x.png")])
    assert bad.exit_code == 1 and "the model knows 3, 7" in bad.output
    assert not (tmp_path / "x.png").exists()


def test_interpolate_latents_and_images(models, digits, tmp_path):
    res = runner.invoke(app, ["interpolate", "-w", str(models["dcgan"]), "--steps", "5", "--rows", "2", "-o",
                              str(tmp_path / "i.png")])
    assert res.exit_code == 0, res.output
    assert pixels(tmp_path / "i.png").shape == (2 * 34 + 2, 5 * 34 + 2, 3)
    a, b = sorted((digits / "train" / "3").iterdir())[:2]
    res = runner.invoke(app, ["interpolate", "-w", str(models["vae"]), "--steps", "6", "--between", str(a), str(b),
                              "-o", str(tmp_path / "between.png")])
    assert res.exit_code == 0, res.output
    assert pixels(tmp_path / "between.png").shape == (34 + 2, 6 * 34 + 2, 3)
    res = runner.invoke(app, ["interpolate", "-w", str(models["dcgan"]), "--between", str(a), str(b)])
    assert res.exit_code == 1 and "needs a model with an encoder" in res.output


def test_reconstruct_and_encode(models, digits, tmp_path):
    res = runner.invoke(app, ["reconstruct", str(digits), str(tmp_path / "rec"), "-w", str(models["vae"])])
    assert res.exit_code == 0, res.output
    outs = sorted(p.relative_to(tmp_path / "rec") for p in (tmp_path / "rec").rglob("*.png"))
    ins = sorted(p.relative_to(digits).with_suffix(".png") for p in digits.rglob("*.png"))
    assert outs == ins
    assert Image.open(tmp_path / "rec" / outs[0]).size == (28, 28)  # the input's size
    res = runner.invoke(app, ["encode", str(digits), "-w", str(models["vae"]), "-o", str(tmp_path / "z.safetensors")])
    assert res.exit_code == 0, res.output
    with safe_open(str(tmp_path / "z.safetensors"), "pt") as f:
        z = f.get_tensor("z")
        files = json.loads(f.metadata()["files"])
    assert z.shape[0] == len(files) == 16 and torch.isfinite(z).all()


def test_reconstruct_and_encode_skip_a_bad_file_and_do_the_rest(models, digits, tmp_path):
    """Batch work over a folder: an unreadable image is named with its reason and skipped, every other one
    is written (exit 3); the codes' file lists only the images it holds rows for."""
    import shutil

    inputs = tmp_path / "in"
    shutil.copytree(digits, inputs)
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    res = runner.invoke(app, ["reconstruct", str(inputs), str(tmp_path / "rec"), "-w", str(models["vae"])])
    assert res.exit_code == 3, res.output
    assert "broken.png" in res.output and "wrote 16 reconstruction(s)" in res.output and "1 failed" in res.output
    assert len(list((tmp_path / "rec").rglob("*.png"))) == 16 and not (tmp_path / "rec" / "broken.png").exists()
    res = runner.invoke(app, ["encode", str(inputs), "-w", str(models["vae"]), "-o", str(tmp_path / "z.safetensors")])
    assert res.exit_code == 3 and "broken.png" in res.output, res.output
    with safe_open(str(tmp_path / "z.safetensors"), "pt") as f:
        files = json.loads(f.metadata()["files"])
        assert f.get_tensor("z").shape[0] == len(files) == 16 and "broken.png" not in files


def test_commands_that_do_not_apply_say_so(models, digits, tmp_path):
    res = runner.invoke(app, ["reconstruct", str(digits), str(tmp_path / "r"), "-w", str(models["dcgan"])])
    assert res.exit_code == 1 and "does not apply" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["run", str(digits), str(tmp_path / "r"), "-w", str(models["vae"])])
    assert res.exit_code == 1 and "does not apply" in res.output
    from translate.core.checkpoints import save_weights
    from translate.core.registry import create_net

    spec = {"net": "resnet_6blocks", "kwargs": {"ngf": 4}}
    save_weights(tmp_path / "t.safetensors", {"G": create_net(spec["net"], **spec["kwargs"])}, {"G": spec})
    res = runner.invoke(app, ["sample", "-w", str(tmp_path / "t.safetensors")])
    assert res.exit_code == 1 and "does not apply" in res.output and "translator" in res.output


def test_zoo_lists_every_recipe():
    res = runner.invoke(app, ["zoo"])
    assert res.exit_code == 0, res.output
    for name in list_recipes(aliases=False):
        assert name in res.output, name
