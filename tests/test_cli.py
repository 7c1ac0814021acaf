"""The `translate` command as a user runs it: exit codes, files written, one-line errors (signals: test_signals.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, plain
from PIL import Image
from typer.testing import CliRunner

from translate.cli.commands import app
from translate.core.checkpoints import read_weights
from translate.core.devices import cpu_name
from translate.core.registry import create_net

CROP = 64
N_SAMPLES = 2
TINY = ["data.load_size=72", f"data.crop_size={CROP}", "data.num_workers=0", "model.generator=resnet_6blocks",
        "model.ngf=8", "model.ndf=8", "train.batch_size=2", "train.log_every=1", "train.sample_every=0",
        f"train.n_samples={N_SAMPLES}", "train.device=cpu"]


def sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_recipes_lists_one_line_each():
    result = invoke("recipes")
    assert result.exit_code == 0, result.output
    from translate.core.recipes import list_recipes

    lines = [line.split() for line in plain(result.output).splitlines() if line.strip()]
    by_name = {words[0]: words for words in lines}
    assert list(by_name) == list_recipes()  # one line each, every recipe
    assert all(len(words) >= 3 for words in lines)  # name, method, description
    assert by_name["pix2pix"][1] == "pix2pix" and by_name["cyclegan"][1] == "cyclegan"


def test_train_then_resume(h2z4, tmp_path, recwarn):
    run = tmp_path / "run"
    result = invoke("train", "--recipe", "cyclegan", "--data", str(h2z4), "--out", str(run),
                    *sets([*TINY, "train.max_steps=2"]))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "done: step 2" in plain(result.output)
    assert re.search(r"run folder \S+ \d+\.\d (KB|MB)", plain(result.output)), result.output
    names = {p.name for p in run.iterdir()}
    assert {"recipe.toml", "log.jsonl", "latest.safetensors", "latest.state.pt"} <= names
    pngs = sorted((run / "samples").glob("*.png"))
    assert pngs
    with Image.open(pngs[-1]) as grid:  # real_A | fake_B | rec_A | real_B | fake_A | rec_B, one row per sample
        assert grid.size == (6 * CROP, N_SAMPLES * CROP)
        assert grid.mode == "RGB"
    assert [r["step"] for r in read_log(run)] == [1, 2]
    assert read_weights(run / "latest.safetensors").nets == ["G_A", "G_B"]

    # step 2 ended epoch 0 (4 images, batch 2): the resumed run first closes that epoch
    result = invoke("train", "--resume", str(run), "--set", "train.max_steps=3")
    assert result.exit_code == 0, result.output
    assert not [w for w in recwarn if "lr_scheduler" in str(w.message)]  # no false alarm on resume
    assert [r["step"] for r in read_log(run)] == [1, 2, 3]
    assert read_weights(run / "latest.safetensors").meta["step"] == "3"


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--set", "train.epoch=3"], ["train.epoch", "epochs"]),
        (["--set", "train.lr=fast"], ["train.lr", "fast"]),
        (["--set", "data.preprocess=squash"], ["data.preprocess", "squash"]),
        (["--set", "train.batch_size=0"], ["train.batch_size"]),
    ],
)
def test_bad_setting_is_one_line(tmp_path, extra, needles):
    result = invoke("train", "--recipe", "cyclegan", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                    *extra)
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "run").exists()


def test_unknown_recipe(tmp_path):
    assert_one_line_error(invoke("train", "--recipe", "cyclegam", "--data", str(tmp_path), "--out",
                                 str(tmp_path / "run")), "cyclegam", "cyclegan")


def test_missing_data_folder(tmp_path):
    missing = tmp_path / "nope"
    assert_one_line_error(invoke("train", "--recipe", "cyclegan", "--data", str(missing), "--out",
                                 str(tmp_path / "run")), "not found", str(missing))
    a_file = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(a_file)
    assert_one_line_error(invoke("train", "--recipe", "pix2pix", "--data", str(a_file), "--out",
                                 str(tmp_path / "run")), "not a folder")
    assert not (tmp_path / "run").exists()


def test_recipe_or_resume_is_needed(tmp_path):
    assert_one_line_error(invoke("train", "--data", str(tmp_path)), "--recipe", "--resume")
    assert_one_line_error(invoke("train", "--resume", str(tmp_path), "--recipe", "cyclegan"), "--set")


def test_cyclegan_needs_trainA_trainB(tmp_path):
    data = tmp_path / "flat"
    data.mkdir()
    Image.new("RGB", (32, 32)).save(data / "x.png")
    assert_one_line_error(invoke("train", "--recipe", "cyclegan", "--data", str(data), "--out",
                                 str(tmp_path / "run")), "trainA", "trainB")


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    assert_one_line_error(invoke("train", "--resume", str(tmp_path)), "not a run folder")
    (tmp_path / "recipe.toml").write_text('method = "cyclegan"\n')
    assert_one_line_error(invoke("train", "--resume", str(tmp_path)), "latest.state.pt")


def test_import_reference_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = create_net("resnet_6blocks", ngf=16, norm="instance").eval()
    src, dst = tmp_path / "latest_net_G.pth", tmp_path / "out.safetensors"
    torch.save(net.state_dict(), src)
    result = invoke("import", str(src), "-o", str(dst))
    assert result.exit_code == 0, result.output
    assert "resnet_6blocks" in plain(result.output)
    rebuilt = read_weights(dst).build()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))


def test_import_of_a_text_file(tmp_path):
    src = tmp_path / "notes.pth"
    src.write_text("not a checkpoint\n")
    assert_one_line_error(invoke("import", str(src), "-o", str(tmp_path / "out.safetensors")), str(src))
    assert not (tmp_path / "out.safetensors").exists()


def test_info_names_the_cpu():
    result = invoke("info")
    assert result.exit_code == 0, result.output
    text = plain(result.output)
    cpu_line = next(line for line in text.splitlines() if line.startswith("cpu"))
    assert cpu_name() in cpu_line
    assert re.search(r"bf16 native: (yes|no)", cpu_line), cpu_line
