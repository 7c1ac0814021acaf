"""Faults a long job meets, each made real: a full disk (a small tmpfs where the machine lets us
mount one, else an injected ENOSPC), kill -9 in the middle of a save, a FIFO named like an image,
names at the filesystem's length limit, CUDA out of memory (raised by a stand-in network on the CPU:
the retreat is ours, the error type torch's), and CI without its data."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import SHARED, assert_one_line_error, copy_first, plain, shared
from PIL import Image
from typer.testing import CliRunner

from translate.cli.commands import app
from translate.core.checkpoints import load_state, read_weights, weights_save_id
from translate.core.files import temp_prefix

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
# pix2pix small enough for seconds a run: 4 pairs, batch 2, so 2 steps an epoch and a save at each epoch's end
PIX2PIX = ["--set", "data.load_size=128", "--set", "data.crop_size=128", "--set", "data.num_workers=0",
           "--set", "model.generator=unet_128", "--set", "model.ngf=8", "--set", "model.ndf=8",
           "--set", "train.batch_size=2", "--set", "train.sample_every=0", "--set", "train.device=cpu",
           "--set", "train.epochs_decay=0"]


@contextlib.contextmanager
def small_disk(where: Path, kb: int) -> Iterator[Path | None]:
    """A tmpfs of ``kb`` KiB mounted at ``where`` (None where mounting is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def grow(disk: Path, kb: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={kb}k", str(disk)], check=True, capture_output=True)


def photos(dst: Path, n: int) -> list[Path]:
    return copy_first(shared("horse2zebra", "trainA"), dst, n)


def cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``translate ARGS`` as a user's shell runs it."""
    return subprocess.run([sys.executable, "-m", "translate", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


# --- translate run on a full disk ---------------------------------------------------------------------

def test_run_stops_at_a_full_disk_and_the_rerun_does_the_rest(weights, tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    photos(inputs, 10)
    args = [str(inputs), "", "-w", str(weights), "--format", "png", "--engine", "torch"]
    with small_disk(tmp_path / "disk", 400) as disk:
        if disk is None:  # no mount here: the same error, injected at the write call
            from translate.inference import plan as infer

            real, calls = infer.encode_atomic, []

            def encode(dst, *a, **k):
                calls.append(dst)
                if len(calls) > 3:
                    raise OSError(errno.ENOSPC, "No space left on device", str(dst))
                return real(dst, *a, **k)

            monkeypatch.setattr(infer, "encode_atomic", encode)
            out = tmp_path / "out"
        else:
            out = disk / "out"
        args[1] = str(out)
        res = runner.invoke(app, ["run", *args])
        text = plain(res.output)
        assert res.exit_code == 3, text
        last = text.strip().splitlines()[-1]
        assert last.startswith("disk full after "), last
        written = sorted(out.rglob("*.png"))
        assert 1 <= len(written) < 10, last
        assert f"disk full after {len(written)} outputs" in last and "run the same command again" in last
        assert text.count("No space left") <= 1, text  # stopped at once, not one failure per image
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written
        for p in written:
            with Image.open(p) as im:
                im.load()
        if disk is None:
            monkeypatch.undo()
        else:
            grow(disk, 8192)
        res = runner.invoke(app, ["run", *args])
        assert res.exit_code == 0, plain(res.output)
        assert f"translated {10 - len(written)}, skipped {len(written)} (already there)" in plain(res.output)
        assert len(list(out.rglob("*.png"))) == 10


# --- only regular files are opened; temporary names fit ----------------------------------------------

def test_a_fifo_named_like_an_image_is_skipped_not_opened(weights, tmp_path):
    inputs = tmp_path / "in"
    photos(inputs, 2)
    os.mkfifo(inputs / "fifo.jpg")  # opening it would block until something writes to it
    res = cli("run", str(inputs), str(tmp_path / "out"), "-w", str(weights), "--engine", "torch", timeout=240)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    assert f"skipped {inputs / 'fifo.jpg'}: a FIFO, not an image file\n" in text
    assert "translated 2, skipped 1 (0 already there, 1 not image files), failed 0 of 3 images" in text
    assert len(list((tmp_path / "out").glob("*"))) == 2

    # score, classify, debias, reconstruct and encode read folders through images.read_folder; training
    # and eval through datasets
    from translate.core.images import read_folder
    from translate.core.recipes import DataConfig
    from translate.data import open_dataset

    reading = read_folder(inputs)
    assert [Path(p).name for p, _ in reading.skipped] == ["fifo.jpg"] and len(reading.files) == 2
    data = open_dataset(DataConfig(path=str(inputs), num_workers=0), "images")
    items = [data[i] for i in range(len(data))]
    errors = [it["error"] for it in items if "error" in it]
    assert errors == [f"{inputs / 'fifo.jpg'}: a FIFO, not an image file"]


@pytest.mark.parametrize("name", ["a" * 246 + ".png", "é" * 123 + ".png"], ids=["250-ascii", "250-bytes-utf8"])
def test_names_at_the_length_limit_get_outputs(weights, tmp_path, name):
    assert len(name.encode()) == 250
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.open(photos(tmp_path / "src", 1)[0]).save(inputs / name)
    prefix = temp_prefix(tmp_path / name)
    assert len(prefix.encode()) + 8 + len(".tmp") <= 255 and prefix.startswith(".")
    res = runner.invoke(app, ["run", str(inputs), str(tmp_path / "out"), "-w", str(weights), "--engine", "torch"])
    assert res.exit_code == 0, plain(res.output)
    with Image.open(tmp_path / "out" / name) as im:
        assert im.size == (256, 256)


# --- training: saves as a consistent pair -------------------------------------------------------------

def test_a_save_that_fails_for_want_of_space_is_one_line_and_the_run_resumes(pairs4, tmp_path):
    # The first epoch's save fits; the second writes its new pair beside the first and finds the disk full.
    probe = tmp_path / "probe"
    res = runner.invoke(app, ["train", "--recipe", "pix2pix", "--data", str(pairs4), "--out", str(probe), "-q",
                              *PIX2PIX, "--set", "train.epochs=1"])
    assert res.exit_code == 0, plain(res.output)
    pair = sum((probe / n).stat().st_size for n in ("latest.safetensors", "latest.state.pt"))
    rest = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file()) - pair
    with small_disk(tmp_path / "disk", (rest + pair * 3 // 2) // 1024 + 64) as disk:
        if disk is None:
            pytest.skip("cannot mount a tmpfs here (not root?): the injected case is test_train's")
        run = disk / "run"
        res = runner.invoke(app, ["train", "--recipe", "pix2pix", "--data", str(pairs4), "--out", str(run), "-q",
                                  *PIX2PIX, "--set", "train.epochs=2"])
        line = assert_one_line_error(res, "saving step 4 failed: No space left on device", "MB are free",
                                     "the last good checkpoint (step 2)", "--resume")
        assert "MB free on the disk" not in line  # (the warning is its own line, checked below)
        state = load_state(run / "latest.state.pt")
        assert state["step"] == 2 and weights_save_id(run / "latest.safetensors") == state["save_id"]
        assert not list(run.glob(".*.tmp"))
        grow(disk, (rest + pair * 4) // 1024 + 256)
        res = runner.invoke(app, ["train", "--resume", str(run), "-q"])
        assert res.exit_code == 0, plain(res.output)
        assert read_weights(run / "latest.safetensors").meta["step"] == "4"


def test_low_space_before_a_save_is_one_warning_line(pairs4, tmp_path, monkeypatch):
    import shutil

    from translate.training import checkpointer

    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--recipe", "pix2pix", "--data", str(pairs4), "--out", str(run), "-q",
                              *PIX2PIX, "--set", "train.epochs=1"])
    assert res.exit_code == 0
    usage = shutil.disk_usage(run)
    monkeypatch.setattr(checkpointer.shutil, "disk_usage", lambda _: usage._replace(free=1000))
    res = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=2"])
    assert res.exit_code == 0, plain(res.output)
    warnings = [ln for ln in plain(res.output).splitlines() if ln.startswith("warning: 0 MB free on the disk")]
    assert len(warnings) == 1 and "this save may not fit" in warnings[0], plain(res.output)


KILLER = textwrap.dedent("""
    import sys, time
    import translate.core.checkpoints as checkpoints
    stage, seen = sys.argv[1], []
    def pause(at):
        if at == stage:
            seen.append(at)
            if len(seen) == 2:  # the second save: a good pair is on disk
                print("PAUSED", flush=True)
                time.sleep(120)
    checkpoints.between_files = pause
    from translate.cli.commands import main
    sys.argv = ["translate", *sys.argv[2:]]
    main()
""")


@pytest.mark.parametrize("stage", ["weights written", "state written", "state renamed"])
def test_kill_9_during_a_save_leaves_a_resumable_run(pairs4, tmp_path, stage):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILLER, stage, "train", "--recipe", "pix2pix", "--data",
                             str(pairs4), "--out", str(run), "-q", *PIX2PIX, "--set", "train.epochs=3"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if line.strip() == "PAUSED":
                break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # as the OOM killer or `kill -9` of the job would
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert list(run.glob(".*.tmp"))  # the killed save's leftovers
    res = cli("train", "--resume", str(run), timeout=300)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    assert ("a save was cut short" in text) == (stage == "state renamed"), text
    state = load_state(run / "latest.state.pt")
    assert state["step"] == 6 and weights_save_id(run / "latest.safetensors") == state["save_id"]
    assert read_weights(run / "latest.safetensors").meta["step"] == "6"
    assert not list(run.glob(".*.tmp"))


# --- CUDA out of memory -------------------------------------------------------------------------------

class Tight:
    """A translator that raises CUDA's out-of-memory error above a batch size or an image area."""

    def __init__(self, tr, max_batch: int, max_pixels: int) -> None:
        self.tr, self.max_batch, self.max_pixels = tr, max_batch, max_pixels
        self.device, self.net, self.calls = tr.device, tr.net, []

    def __call__(self, x, z=None):
        self.calls.append(tuple(x.shape))
        if x.shape[0] > self.max_batch or x.shape[-2] * x.shape[-1] > self.max_pixels:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (stand-in)")
        return self.tr(x, z)

    def eager(self):
        return self


def test_out_of_memory_halves_the_batch_then_tiles(weights):
    from translate.core.images import read_rgb, resize_u8
    from translate.inference.tiling import launch_fitting
    from translate.inference.translator import launch_batch, load_translator

    tr, multiple, _ = load_translator(weights, "AtoB", torch.device("cpu"), "fp32")
    rgbs = [resize_u8(read_rgb(p), (64, 64)) for p in sorted(shared("horse2zebra", "trainA").iterdir())[:8]]
    notes: list[str] = []
    tight = Tight(tr, max_batch=2, max_pixels=64 * 64)
    got = launch_fitting(tight, rgbs, multiple, note=notes.append).result()
    want = launch_batch(tr, rgbs, multiple).result()
    assert len(got) == 8 and all((g.int() - w.int()).abs().max() <= 1 for g, w in zip(got, want, strict=True))
    assert notes[:2] == ["out of GPU memory with 8 images in a batch: trying 4 at a time",
                         "out of GPU memory with 4 images in a batch: trying 2 at a time"]
    assert [shape[0] for shape in tight.calls] == [8, 4, 2, 2, 4, 2, 2]

    big = resize_u8(read_rgb(sorted(shared("horse2zebra", "trainA").iterdir())[0]), (128, 128))
    notes.clear()
    (y,) = launch_fitting(Tight(tr, max_batch=1, max_pixels=64 * 64), [big], multiple, note=notes.append).result()
    assert notes == ["out of GPU memory with one 128x128 image: translating it in tiles of 64x64"]
    assert y.shape == (3, 128, 128)
    from translate.core.options import RunOptions
    from translate.inference.tiling import translate_tiled

    assert torch.equal(y, translate_tiled(tr, big, multiple, RunOptions(tile=64, max_pixels=64 * 64)))


def test_out_of_memory_in_a_scoring_batch_halves_it():
    from translate.core.devices import fitting

    def fn(x):
        if len(x) > 3:
            raise torch.cuda.OutOfMemoryError("stand-in")
        return {"score": x.sum(1), "both": (x[:, 0], x[:, 1])}

    x = torch.arange(20.0).reshape(10, 2)
    notes: list[str] = []
    out = fitting(fn, x, notes.append)
    assert torch.equal(out["score"], x.sum(1)) and torch.equal(out["both"][1], x[:, 1])
    assert notes[0] == "out of GPU memory with 10 images in a batch: trying 5 at a time"


def test_out_of_memory_in_training_names_the_sizes_and_keeps_the_last_save(pairs4, tmp_path, monkeypatch):
    from translate.methods.pix2pix import Pix2Pix

    real = Pix2Pix.train_step

    def step(self, batch):
        if self.steps_done >= 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")
        return real(self, batch)

    monkeypatch.setattr(Pix2Pix, "train_step", step)
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--recipe", "pix2pix", "--data", str(pairs4), "--out", str(run), "-q",
                              *PIX2PIX, "--set", "train.epochs=3"])
    assert_one_line_error(res, "out of GPU memory at step 4: train.batch_size=2 of data.crop_size=128 images",
                          "--set train.batch_size=1", "the last good checkpoint (step 2)")
    assert load_state(run / "latest.state.pt")["step"] == 2


# --- CI cannot pass hollow ------------------------------------------------------------------------------

def test_ci_without_the_shared_data_is_an_error(tmp_path):
    assert SHARED.is_dir()  # (this test itself runs where the data is)
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (project / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    for ci, code in (("true", 2), ("", 0)):
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                             cwd=project, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "CI": ci})
        assert res.returncode == code, res.stdout + res.stderr
        if ci:
            assert "CI=true but the real image data is missing" in res.stdout + res.stderr
