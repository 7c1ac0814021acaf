"""Weights files (safetensors + metadata) and training state: round trips, errors, atomic writes, safety."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import translate.core.checkpoints as ckpt
from translate.core.checkpoints import FORMAT, load_state, read_weights, save_state, save_weights
from translate.core.errors import TranslateError
from translate.core.recipes import load_recipe, recipe_from_json
from translate.core.registry import METHODS, create_net
from translate.methods import get_method
from translate.training.train import Trainer

SPEC = {"net": "resnet_6blocks", "kwargs": {"in_ch": 3, "out_ch": 3, "ngf": 8, "norm": "instance",
                                            "dropout": False}}


def make_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_net(SPEC["net"], **SPEC["kwargs"]).eval()


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert text and "\n" not in text, text
    return text


def test_round_trip_keeps_metadata_and_outputs(tmp_path):
    recipe = load_recipe("cyclegan", ["model.ngf=8", "train.lr=0.001"])
    nets = {"G_A": make_net(0), "G_B": make_net(1)}
    path = save_weights(tmp_path / "w.safetensors", nets, {"G_A": SPEC, "G_B": SPEC}, recipe.to_json(),
                        {"step": "7"})
    wf = read_weights(path)
    assert wf.meta["format"] == FORMAT == "translate-weights/1"
    assert json.loads(wf.meta["arch"]) == {"G_A": SPEC, "G_B": SPEC}
    assert json.loads(wf.meta["nets"]) == ["G_A", "G_B"] == wf.nets
    assert wf.meta["step"] == "7"
    assert recipe_from_json(wf.recipe_json) == recipe
    assert json.loads(wf.recipe_json)["train"]["lr"] == 0.001
    for name, net in nets.items():
        assert set(wf.tensors[name]) == set(net.state_dict())
        rebuilt = wf.build(name)
        assert not rebuilt.training
        assert same_outputs(rebuilt, net)
    assert same_outputs(wf.build(), nets["G_A"])  # the first net by default
    assert not same_outputs(wf.build("G_B"), nets["G_A"])
    with pytest.raises(TranslateError, match="not 'D_A'") as e:
        wf.build("D_A")
    one_line_error(e)


def test_weights_file_alone_rebuilds_the_model(tmp_path):
    net = make_net(2)
    path = save_weights(tmp_path / "alone.safetensors", {"G": net}, {"G": SPEC})  # no recipe at all
    del net  # only the file is left: nothing in this test keeps the architecture
    wf = read_weights(path)
    assert wf.recipe_json == "" and wf.nets == ["G"]
    rebuilt = wf.build()
    assert isinstance(rebuilt, torch.nn.Module) and not rebuilt.training
    assert same_outputs(rebuilt, make_net(2))  # the same weights as the net that was saved
    assert not same_outputs(rebuilt, make_net(3))


def test_weights_from_a_training_run_rebuild_its_generators(h2z4, tmp_path):
    tiny = ["data.load_size=72", "data.crop_size=64", "data.num_workers=0", "model.generator=resnet_6blocks",
            "model.ngf=8", "model.ndf=8", "train.batch_size=2", "train.sample_every=0", "train.device=cpu",
            "train.max_steps=1", "train.precision=fp32"]
    recipe = load_recipe("cyclegan", [f"data.path={h2z4}", *tiny])
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    trainer.fit()
    wf = read_weights(tmp_path / "run" / "latest.safetensors")
    assert wf.nets == ["G_A", "G_B"]  # inference nets only, no discriminators
    assert recipe_from_json(wf.recipe_json) == recipe
    for name in wf.nets:
        assert same_outputs(wf.build(name), trainer.method.nets[name])
    assert wf.meta["kind"] == wf.kind == "translator"  # saved at training time, read without the methods


@pytest.mark.parametrize("method", METHODS.names())
def test_a_method_kind_is_what_its_old_files_were_told_by(method, tmp_path):
    """Files written before the kind was saved are told by their nets and method; every method's
    kind (saved in new files) agrees with that rule, so old and new files of a method open alike."""
    cls = get_method(method)
    nets = {n: make_net() for n in cls.export_names}
    path = save_weights(tmp_path / "old.safetensors", nets, dict.fromkeys(nets, SPEC), "", {"method": method})
    old = read_weights(path)
    assert "kind" not in old.meta and old.kind == cls.model_kind()
    assert cls.model_kind() in ckpt.KIND_COMMANDS


def test_the_saved_kind_decides_and_a_wrong_command_is_one_line(tmp_path):
    path = save_weights(tmp_path / "g.safetensors", {"G": make_net()}, {"G": SPEC}, "",
                        {"method": "somenewgan", "kind": "generator"})
    wf = read_weights(path)
    assert wf.kind == "generator"  # the saved kind, not the method's name (unknown to the fallback)
    with pytest.raises(TranslateError, match=r"`translate run` does not apply to g.safetensors: it holds a "
                                             r"somenewgan generator \(use translate sample, translate interpolate\)"):
        wf.check_kind("run")


@pytest.mark.parametrize("module", ["translate.inference.infer", "translate.inference.export",
                                    "translate.inference.generate", "translate.analysis.analyze",
                                    "translate.analysis.evaluate"])
def test_inference_imports_no_training_code(module):
    """What runs, exports and analyses a weights file learns what it holds from the file (its kind
    in the metadata), not from the training methods: importing it loads no method, network or trainer.
    (The recipe schema may load: it names no method until a recipe is read.)"""
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('translate.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for training in ("translate.methods", "translate.training", "translate.nets", "translate.data"):
        assert f"'{training}" not in loaded, f"{module} imports {training}: {loaded}"


def test_missing_file(tmp_path):
    with pytest.raises(TranslateError, match="not found") as e:
        read_weights(tmp_path / "nope.safetensors")
    assert str(tmp_path / "nope.safetensors") in one_line_error(e)


def test_pth_pickle_suggests_import(tmp_path):
    path = tmp_path / "latest_net_G.pth"
    torch.save(make_net().state_dict(), path)
    with pytest.raises(TranslateError, match="translate import") as e:
        read_weights(path)
    one_line_error(e)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(TranslateError, match="not a safetensors file") as e:
        read_weights(path)
    one_line_error(e)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(TranslateError, match="not a safetensors file"):
        read_weights(empty)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(TranslateError, match="not a translate weights file") as e:
        read_weights(path)
    one_line_error(e)
    save_file({"weight": torch.zeros(2, 2)}, str(path), metadata={"format": FORMAT})  # ours, but damaged
    with pytest.raises(TranslateError, match="damaged metadata") as e:
        read_weights(path)
    one_line_error(e)


def test_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.safetensors"
    save_weights(path, {"G": make_net(0)}, {"G": SPEC})
    before = path.read_bytes()

    def broken_write(filename, data):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)  # a partial write, then the disk "fills up"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_bytes", broken_write)
    with pytest.raises(OSError, match="No space left"):
        save_weights(path, {"G": make_net(1)}, {"G": SPEC})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors"]
    assert same_outputs(read_weights(path).build(), make_net(0))


def test_failed_state_save_leaves_the_previous_state(tmp_path, monkeypatch):
    path = tmp_path / "latest.state.pt"
    save_state(path, {"step": 1, "w": torch.ones(3)})
    before = path.read_bytes()
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save({"step": 2}, f)
        raise KeyboardInterrupt  # stopped hard in the middle of writing

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_state(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.state.pt"]
    assert load_state(path)["step"] == 1


def test_saved_files_have_normal_permissions(tmp_path):
    path = save_weights(tmp_path / "w.safetensors", {"G": make_net()}, {"G": SPEC})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_state_round_trip(tmp_path):
    state = {"step": 5, "epoch": 1, "nets": {"G": make_net().state_dict()}, "rng": {"cpu": torch.get_rng_state()},
             "skipped": ["a.jpg: unreadable"], "lr": 1e-4}
    save_state(tmp_path / "s.pt", state)
    back = load_state(tmp_path / "s.pt")
    assert back["step"] == 5 and back["skipped"] == ["a.jpg: unreadable"] and back["lr"] == 1e-4
    assert torch.equal(back["rng"]["cpu"], state["rng"]["cpu"])
    for k, v in state["nets"]["G"].items():
        assert torch.equal(back["nets"]["G"][k], v)
    with pytest.raises(TranslateError, match="no training state") as e:
        load_state(tmp_path / "missing.pt")
    one_line_error(e)


class Payload:
    """Unpickling this calls os.mkdir(marker): a stand-in for any code a hostile file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_load_state_never_unpickles_objects(tmp_path):
    marker = tmp_path / "side_effect_ran"
    path = tmp_path / "evil.state.pt"
    torch.save({"step": 1, "extra": Payload(marker)}, path)
    with pytest.raises(TranslateError, match="cannot read training state") as e:
        load_state(path)
    one_line_error(e)
    assert not marker.exists()
    # the payload is live: an unrestricted load would have run it
    with open(path, "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.is_dir()


def test_plain_pickle_state_is_refused(tmp_path):
    marker = tmp_path / "side_effect_ran"
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"step": 1, "extra": Payload(marker)}, protocol=2))
    with pytest.raises(TranslateError) as e:
        load_state(path)
    one_line_error(e)
    assert not marker.exists()
