"""Every command in README.md runs as written, on the data it names, in the order the README gives.

The commands are read from the README's fenced blocks (comments dropped, ``\\`` continuations
joined) and run in a scratch folder laid out like a checkout: ``examples/`` and ``bench/`` of this
repository, ``../shared`` beside it. What is changed, and only this:

- ``translate train`` gets ``--set`` overrides that make it tiny (conftest's ``tiny``) and stop
  after a few steps: the commands are real, their sizes are not;
- GPU counts become 2 CPU processes (``--devices N``, ``--nproc-per-node N``); two machines
  (``--nnodes 2``) become two torchrun processes on this one, ``HOST`` being 127.0.0.1;
- ``docker run [options] translate ARGS`` runs ``translate ARGS`` (no Docker engine here;
  ``test_infer.test_dockerfile_is_a_gpu_batch_image`` checks the image), ``docker build`` is skipped;
- the install and test commands are what CI runs around this file, so they are skipped;
- the benchmark runs one step of one method.
Files the README's Docker and import examples take as given (``in/``, ``w.safetensors``, the
reference's ``.pth`` checkpoints) are made here with real images and our networks.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import copy_first, shared, tiny
from PIL import Image

from translate.core.checkpoints import save_weights
from translate.core.files import list_images
from translate.core.registry import create_net
from translate.nets import init_weights
from translate.training.launch import free_port

REPO = Path(__file__).resolve().parents[1]
SKIPPED = ("python3 -m venv", ".venv/bin/pip", ".venv/bin/ruff", ".venv/bin/mypy", ".venv/bin/python -m pytest",
           "docker build")
DOCKER_VALUE_OPTIONS = {"-v", "--volume", "--shm-size", "--stop-timeout", "--entrypoint", "-e", "--gpus", "-w"}


def readme_commands() -> list[str]:
    """Shell commands in the README's fenced blocks, one per line, in order; a ```python block is one
    command, ``python:`` and its code."""
    commands = []
    for lang, block in re.findall(r"```([a-z]*)\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        if lang == "python":
            commands.append(f"python:{block}")
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s+)#(\s.*)?$", "", line).strip()  # a comment, whole-line or trailing
            if line:
                commands += [part.strip() for part in line.split(" && ")]
    return commands


def as_run(command: str) -> list[list[str]] | None:
    """The argv lists that stand for one README command here (several for two machines), or None."""
    if command.startswith(SKIPPED):
        return None
    if command.startswith("python:"):  # a Python example, run as written
        return [[sys.executable, "-c", command.removeprefix("python:")]]
    words = shlex.split(command)
    if words[:2] == ["docker", "run"]:
        words, entry = _strip_docker(words[2:])
        words = [entry, *words]
    tool, args = words[0], words[1:]
    if tool in ("translate", ".venv/bin/translate"):
        return [[sys.executable, "-m", "translate", *_small(args)]]
    if tool == ".venv/bin/python" and args[0].startswith("bench/"):
        return [[sys.executable, *args, "--steps", "1", "--warmup", "0", "--methods", "pix2pix",
                 "--precisions", "fp32"]]
    if tool == "torchrun":
        run = args.index("-m")
        launcher, module = _launcher(args[:run]), args[run + 1]
        assert module == "translate", command
        argv = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "translate", *_small(args[run + 2:])]
        return [argv] * (2 if "--nnodes=2" in launcher else 1)
    raise AssertionError(f"README command this test does not know how to run: {command}")


def _strip_docker(words: list[str]) -> tuple[list[str], str]:
    """``[options] IMAGE ARGS`` of docker run -> (ARGS, the entrypoint)."""
    entry, i = "translate", 0
    while words[i].startswith("-"):
        if words[i] == "--entrypoint":
            entry = words[i + 1]
        i += 2 if words[i] in DOCKER_VALUE_OPTIONS else 1
    assert words[i] == "translate", words  # the image
    return words[i + 1:], entry


def _launcher(opts: list[str]) -> list[str]:
    """torchrun's options with GPU counts as 2 CPU processes, and two machines as two processes here."""
    out, port = [], free_port()
    i = 0
    while i < len(opts):
        key, value = opts[i], opts[i + 1]
        i += 2
        if key == "--nnodes":
            out.append(f"--nnodes={value}")
        elif key == "--nproc-per-node":
            out.append("--nproc-per-node=1" if "--nnodes" in opts else "--nproc-per-node=2")
        elif key == "--rdzv-endpoint":
            out.append(f"--rdzv-endpoint={value.replace('HOST', '127.0.0.1').rsplit(':', 1)[0]}:{port}")
        else:
            out.append(f"{key}={value}")
    if not any(o.startswith("--rdzv-endpoint") for o in out):
        out.insert(0, "--standalone")
    return out


def _small(args: list[str]) -> list[str]:
    """`translate ARGS` with training made tiny and GPU counts turned into CPU processes."""
    args = [("2" if i and args[i - 1] == "--devices" else a) for i, a in enumerate(args)]
    if args[0] != "train":
        return args
    if "--resume" in args:
        return [*args, "--set", "train.max_steps=3"]
    recipe = args[args.index("--recipe") + 1]
    sets = tiny(recipe, ["train.max_steps=2"])
    return [*args, *[x for s in sets for x in ("--set", s)]]


def positionals(args: list[str]) -> list[str]:
    """The arguments that are not options or option values."""
    out, i = [], 0
    while i < len(args):
        if args[i].startswith("-"):
            i += 1 if args[i] in ("--quiet", "-q", "--compile", "--no-keep-alpha", "--no-skip-existing") else 2
        else:
            out.append(args[i])
            i += 1
    return out


def check_outputs(args: list[str], ws: Path) -> None:
    """Open what the command says it writes."""
    cmd = args[args.index("translate") + 1 :] if "translate" in args else []
    if not cmd:
        return
    if cmd[0] == "train":
        run = cmd[cmd.index("--resume" if "--resume" in cmd else "--out") + 1]
        assert (ws / run / "latest.safetensors").is_file(), run
    elif cmd[0] in ("run", "reconstruct"):
        src, dst = (ws / p for p in positionals(cmd[1:]))
        samples = int(cmd[cmd.index("--samples") + 1]) if "--samples" in cmd else 1
        for image in list_images(src):  # the same tree, every output whole (name_k.ext for several samples)
            out = dst / image.relative_to(src)
            outs = [out] if samples == 1 else [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(samples)]
            for out in outs:
                with Image.open(out if cmd[0] == "run" else out.with_suffix(".png")) as im:
                    im.load()
    for flag in ("-o", "--output"):
        if flag in cmd:
            out = ws / cmd[cmd.index(flag) + 1]
            assert out.is_file(), out
            if out.suffix == ".png":
                with Image.open(out) as im:
                    im.load()


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A folder laid out as a user's checkout, with what the README's examples take as given."""
    data = shared()
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "shared").symlink_to(data.parent)
    for name in ("examples", "bench"):
        (ws / name).symlink_to(REPO / name)
    (ws / "horse2zebra").symlink_to(data / "horse2zebra")  # docker: -v "$PWD":/data
    copy_first(data / "photos", ws / "in", 2)
    torch.manual_seed(0)
    g = {"net": "resnet_6blocks", "kwargs": {"ngf": 8, "norm": "instance"}}
    save_weights(ws / "w.safetensors", {"G": init_weights(create_net(g["net"], **g["kwargs"]))}, {"G": g})
    # what the reference's train.py leaves: state dicts of its (and our, layer for layer) generators
    torch.save(init_weights(create_net("resnet_9blocks", ngf=8, norm="instance")).state_dict(),
               ws / "latest_net_G_A.pth")
    torch.save(init_weights(create_net("unet_256", ngf=8, norm="batch", dropout=True)).state_dict(),
               ws / "latest_net_G.pth")
    (ws / "checkpoints" / "h2z_cut").mkdir(parents=True)  # the CUT code's default, anti-aliased generator
    torch.save(init_weights(create_net("resnet_9blocks", ngf=8, antialias=True, antialias_up=True)).state_dict(),
               ws / "checkpoints" / "h2z_cut" / "latest_net_G.pth")
    return ws


def test_readme_lists_the_commands_this_test_runs():
    commands = readme_commands()
    # the two set-up commands: install and translate the examples; the CI's test command
    assert commands[:3] == ["python3 -m venv .venv", ".venv/bin/pip install -e .",
                            ".venv/bin/translate run examples/photos out/"]
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert " && ".join(commands[3:7]) == ci
    assert all(as_run(c) is None or as_run(c) for c in commands)


def test_every_readme_command_runs(workspace):
    done = []
    for command in readme_commands():
        argvs = as_run(command)
        if argvs is None:
            continue
        procs = [subprocess.Popen(argv, cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for argv in argvs]
        for proc in procs:
            output, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{output[-3000:]}"
            assert "Traceback" not in output, f"`{command}`:\n{output[-3000:]}"
        check_outputs(argvs[0], workspace)
        done.append(command)
    assert len(done) >= 30, done
