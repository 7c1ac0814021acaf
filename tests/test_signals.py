"""SIGINT / SIGTERM sent to the whole process group, as timeout, Slurm, Kubernetes, docker stop and
Ctrl-C do: DataLoader workers included. Training saves and resumes exactly; `translate run` finishes
the outputs in flight, reports, and a rerun completes the rest."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import copy_first, shared
from PIL import Image

from translate.core.checkpoints import read_weights, save_weights
from translate.core.recipes import load_recipe
from translate.core.registry import create_net
from translate.nets import init_weights
from translate.training.train import Trainer

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CODES = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
# Two decoding workers, so the group signal reaches worker processes too.
TINY = ["data.load_size=72", "data.crop_size=64", "data.num_workers=2", "model.generator=resnet_6blocks",
        "model.ngf=8", "model.ndf=8", "train.batch_size=2", "train.log_every=1", "train.sample_every=0",
        "train.n_samples=2", "train.device=cpu"]


def sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def start(cmd: list[str], tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """Start ``cmd`` as the leader of a new process group; stderr to a file (not a TTY, no pipe to fill).
    The thread count stays this process's, so sums run in the same order as in-process runs."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    err = tmp_path / f"stderr-{time.monotonic_ns()}.txt"
    with open(err, "w") as se:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=se, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    return proc, err


def wait_for(proc: subprocess.Popen, err: Path, ready, what: str, limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        assert proc.poll() is None, f"exited early ({proc.returncode}) before {what}: {err.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} in {limit} s: {err.read_text()[-3000:]}"
        time.sleep(0.1)


def stop_group(proc: subprocess.Popen, sig: int, timeout: float = 180) -> int:
    try:
        os.killpg(proc.pid, sig)
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def logged(run: Path) -> bool:
    log = run / "log.jsonl"
    return log.exists() and bool(log.read_text().strip())


def train_cmd(data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "translate", "train", "--recipe", "cyclegan", "--data", str(data), "--out", str(run),
            *extra, *sets([*TINY, "train.max_steps=100000"])]


def assert_clean_stop(text: str, run: Path) -> int:
    assert "Traceback" not in text and "killed by signal" not in text, text[-3000:]
    assert re.search(r"^interrupted by SIG\w+; saved, resume with .*--resume " + re.escape(str(run)), text, re.M), text
    saved = int(read_weights(run / "latest.safetensors").meta["step"])
    assert saved >= 1 and read_log(run)[-1]["step"] <= saved
    return saved


@pytest.mark.parametrize(("sig", "code"), CODES)
def test_training_stopped_by_group_signal_saves_and_resumes_exactly(h2z4, tmp_path, sig, code):
    run = tmp_path / "run"
    proc, err = start(train_cmd(h2z4, run), tmp_path)
    wait_for(proc, err, lambda: logged(run), "log line")
    rc = stop_group(proc, sig)
    text = ANSI.sub("", err.read_text())
    assert rc == code, text[-3000:]
    # plain progress lines when stderr is no TTY, one line per step (not wrapped at 80 columns)
    assert re.search(r"^step 1/\d+ epoch 0 .*cycle_A .*D_B \d", text, re.M), text
    saved = assert_clean_stop(text, run)

    # --resume takes the same steps as a run that was never stopped
    res = subprocess.run([sys.executable, "-m", "translate", "train", "--resume", str(run), "--quiet",
                          "--set", f"train.max_steps={saved + 2}"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    recipe = load_recipe("cyclegan", [f"data.path={h2z4}", *TINY, f"train.max_steps={saved + 2}"])
    Trainer(recipe, tmp_path / "straight", quiet=True).fit()
    resumed, straight = read_log(run), read_log(tmp_path / "straight")
    assert [r["step"] for r in resumed] == list(range(1, saved + 3))
    for a, b in zip(resumed, straight, strict=True):
        a.pop("images_per_s"), b.pop("images_per_s")
        assert a == b
    wa, wb = read_weights(run / "latest.safetensors"), read_weights(tmp_path / "straight" / "latest.safetensors")
    for net in wa.nets:
        for k, v in wa.tensors[net].items():
            assert torch.equal(v, wb.tensors[net][k]), (net, k)


@pytest.mark.parametrize("to_group", [True, False], ids=["group", "launcher-only"])
def test_devices_launcher_passes_the_signal_on_and_waits(h2z4, tmp_path, to_group):
    """`--devices 2`: a signal to the group (Ctrl-C, timeout) or to the launcher alone (docker stop,
    Kubernetes: PID 1) stops both processes after the same step; both save, exit 143, no traceback."""
    run = tmp_path / "run"
    proc, err = start(train_cmd(h2z4, run, "--devices", "2"), tmp_path)
    wait_for(proc, err, lambda: logged(run), "log line")
    if to_group:
        rc = stop_group(proc, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                stop_group(proc, signal.SIGKILL)
    text = ANSI.sub("", err.read_text())
    assert rc == 143, text[-3000:]
    assert text.count("interrupted by SIGTERM") == 1, text  # rank 0 alone reports
    assert_clean_stop(text, run)
    res = subprocess.run([sys.executable, "-m", "translate", "train", "--resume", str(run), "--quiet",
                          "--set", "train.max_steps=1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]  # the saved state reads back


@pytest.fixture(scope="module")
def slow_weights(tmp_path_factory) -> Path:
    """resnet_9blocks at full width (about 1 s an image here): slow enough to stop a run midway."""
    torch.manual_seed(0)
    spec = {"net": "resnet_9blocks", "kwargs": {"ngf": 64, "norm": "instance"}}
    net = init_weights(create_net(spec["net"], **spec["kwargs"]))
    path = tmp_path_factory.mktemp("w") / "slow.safetensors"
    save_weights(path, {"G": net}, {"G": spec})
    return path


@pytest.mark.parametrize(("sig", "code"), CODES)
def test_run_stopped_by_group_signal_finishes_in_flight_and_rerun_completes(slow_weights, tmp_path, sig, code):
    src = tmp_path / "in"
    copy_first(shared("horse2zebra", "testA"), src / "a", 6)
    copy_first(shared("horse2zebra", "testB"), src / "b", 6)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "translate", "run", str(src), str(out), "--weights", str(slow_weights),
           "--workers", "2", "--device", "cpu"]
    proc, err = start(cmd, tmp_path)
    wait_for(proc, err, lambda: len(list(out.rglob("*.jpg"))) >= 2, "outputs")
    rc = stop_group(proc, sig)
    assert rc == code, err.read_text()[-3000:]
    assert_run_stopped_whole(err, out, sig, 12, (256, 256))

    again = subprocess.run(cmd + ["--quiet"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len([p for p in out.rglob("*") if p.is_file()]) == 12


def assert_run_stopped_whole(err: Path, out: Path, sig: int, total: int, size: tuple[int, int]) -> str:
    """A `translate run` stopped by ``sig`` said so in one summary line, left no temporary file, and
    every output it wrote (as many as it counted, fewer than ``total``) decodes whole at ``size``."""
    text = ANSI.sub("", err.read_text())
    assert "Traceback" not in text and "killed by signal" not in text, text[-3000:]
    m = re.search(rf"^interrupted by {signal.Signals(sig).name}: translated (\d+), .* of {total} images", text, re.M)
    assert m, text
    written = sorted(out.rglob("*"))
    assert not [p for p in written if p.name.endswith(".tmp")]
    outputs = [p for p in written if p.is_file()]
    assert len(outputs) == int(m.group(1)) < total
    for p in outputs:  # nothing half-written: each output decodes whole
        with Image.open(p) as im:
            im.load()
            assert im.size == size
    return text


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def test_a_second_sigint_stops_run_at_once(slow_weights, tmp_path):
    """Ctrl-C twice (signals.py: a process on its own takes a second signal as "stop now"): the first
    makes `translate run` finish the image in flight, the second stops it there, so that image is
    never written and the run's summary never printed: exit 130, no traceback, no temporary file,
    the outputs written before whole. The first signal is sent once the network has spent half a CPU
    second past an output (an image costs several here), so an image is surely in flight; a graceful
    stop would write it."""
    src = tmp_path / "in"
    src.mkdir()
    for p in copy_first(shared("horse2zebra", "testA"), tmp_path / "jpg", 6):
        # 768 px: an image takes seconds even on an idle machine (at 256 px, 0.5 s: the image in flight
        # could finish between the two signals, and the run then stopped gracefully)
        Image.open(p).resize((768, 768)).save(src / f"{p.stem}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "translate", "run", str(src), str(out), "--weights", str(slow_weights),
           "--workers", "1", "--device", "cpu", "--engine", "torch", "--precision", "fp32"]
    proc, err = start(cmd, tmp_path)
    try:
        wait_for(proc, err, lambda: len(list(out.rglob("*.png"))) >= 1, "an output")
        busy = cpu_seconds(proc.pid) + 0.5
        wait_for(proc, err, lambda: cpu_seconds(proc.pid) > busy, "work on the next image")
        os.killpg(proc.pid, signal.SIGINT)
        wait_for(proc, err, lambda: "SIGINT: finishing the images in flight" in err.read_text(), "first signal noted")
        before = len(list(out.rglob("*.png")))  # written before the first signal; one more is in flight
    except BaseException:
        stop_group(proc, signal.SIGKILL)
        raise
    rc = stop_group(proc, signal.SIGINT, timeout=60)
    text = ANSI.sub("", err.read_text())
    assert rc == 130, text[-3000:]
    assert "Traceback" not in text and "killed by signal" not in text, text[-3000:]
    assert "interrupted by SIGINT: translated" not in text, text[-3000:]  # the graceful stop's summary
    written = sorted(out.rglob("*"))
    assert not [p for p in written if p.name.endswith(".tmp")]
    outputs = [p for p in written if p.is_file()]
    assert 1 <= len(outputs) == before < 6, outputs  # the image in flight was not finished
    for p in outputs:
        with Image.open(p) as im:
            im.load()
            assert im.size == (768, 768)


@pytest.mark.parametrize("launched", [False, True], ids=["alone", "under-launcher"])
def test_a_second_sigint_stops_training_at_once_unless_a_launcher_repeats_it(h2z4, tmp_path, monkeypatch,
                                                                            single_thread, launched):
    """README: "A second Ctrl-C stops at once" (signals.py: "stop now, without saving"). Both signals
    arrive inside step 2 (raised in this process, so each is handled before the next line runs): alone,
    the second raises KeyboardInterrupt there (`translate` exits 130 on it, as the run test above
    shows), the step is left unfinished and nothing is saved; under a launcher, which passes the
    group's signal on once more, the repeat is ignored and training stops after step 2 and saves."""
    from translate.training.train import TrainingInterrupted

    if launched:
        monkeypatch.setenv("TRANSLATE_LAUNCHER", "1")
    else:
        monkeypatch.delenv("TRANSLATE_LAUNCHER", raising=False)
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    run = tmp_path / "run"
    recipe = load_recipe("cyclegan", [f"data.path={h2z4}", *TINY, "data.num_workers=0", "train.max_steps=100"])
    trainer = Trainer(recipe, run, quiet=True)
    step, finished, noted = trainer.method.train_step, [], []

    def step_with_two_sigints(batch):
        if trainer.step == 1:
            signal.raise_signal(signal.SIGINT)  # the first Ctrl-C: noted, the step goes on
            noted.append(trainer.signals.stop)
            signal.raise_signal(signal.SIGINT)  # the second
        losses = step(batch)
        finished.append(trainer.step + 1)
        return losses

    monkeypatch.setattr(trainer.method, "train_step", step_with_two_sigints)
    before = signal.getsignal(signal.SIGINT)
    if launched:
        try:
            with pytest.raises(TrainingInterrupted, match="interrupted by SIGINT; saved"):
                trainer.fit()
        except KeyboardInterrupt:  # (not left to end the test session)
            pytest.fail("under a launcher the repeated SIGINT stopped training at once")
        assert finished == [1, 2]
        assert int(read_weights(run / "latest.safetensors").meta["step"]) == 2
    else:
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
        assert finished == [1]  # step 2 was cut short
        assert not (run / "latest.safetensors").exists() and not (run / "latest.state.pt").exists()
        assert [r["step"] for r in read_log(run)] == [1]
    assert noted == [signal.SIGINT]  # the first signal was recorded, not raised
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back either way
