"""BicycleGAN equals the BicycleGAN code (junyanz/BicycleGAN at 40b9d52, ../shared/peers/bicyclegan-ref),
step for step, and its checkpoints translate as its own test.py translates them.

- The step: the official model built from its own options at 128 px (unet_128, basic_128_multi,
  resnet_128, widths 16), its weights copied into ours, the same batch of real people2outline pairs
  and the same draws (torch's generator seeded the same before each side's step: eps, z_random, then
  G's dropout), three fp32 steps; every logged loss, every weight and buffer of G, E, D, D2 and every
  Adam moment compared (``pytest -s`` prints the table).
- The defaults: the official options, with scripts/train_edges2shoes.sh (the script our recipe cites)
  applied, against recipes/bicyclegan.toml, option by option.
- The checkpoints: G and E made by the official networks.define_G / define_E and saved as its
  train.py saves them, imported with `translate import`, run with `translate run --style` (the
  example's B as the style) on real pairs, compared with the official test.py's encoded outputs.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared
from peers import PEERS, Report, copy_weights, exact_cpu, official, options_for, ours, pairs  # noqa: F401 (a fixture)
from PIL import Image
from typer.testing import CliRunner

from translate.cli.commands import app
from translate.core.recipes import load_recipe
from translate.core.registry import NETS

pytestmark = pytest.mark.usefixtures("exact_cpu")

STEPS = 3
SIZE, WIDTH, BATCH = 128, 16, 2
AT_128 = ["--netG", "unet_128", "--netD", "basic_128_multi", "--netD2", "basic_128_multi", "--netE", "resnet_128"]
OURS_AT_128 = ["model.generator=bicycle_unet_128", "model.discriminator=basic_128_multi", f"data.load_size={SIZE}",
               f"data.crop_size={SIZE}"]
NETS_COMPARED = ("G", "E", "D", "D2")


# --- the step ------------------------------------------------------------------------------------------

def official_and_ours(tmp_path: Path, conditional: bool = False):
    """The code's model at 128 px (its defaults, the script's dropout) and ours with its weights."""
    from models.bicycle_gan_model import BiCycleGANModel

    opt = options_for(BiCycleGANModel, [*AT_128, "--ngf", str(WIDTH), "--nef", str(WIDTH), "--ndf", str(WIDTH),
                                        "--batch_size", str(BATCH), "--use_dropout",
                                        *(["--conditional_D"] if conditional else [])], tmp_path)
    theirs = BiCycleGANModel(opt)
    mine = ours("bicyclegan", [*OURS_AT_128, f"model.ngf={WIDTH}", f"model.nef={WIDTH}", f"model.ndf={WIDTH}",
                               f"train.batch_size={BATCH}", f"model.conditional_D={str(conditional).lower()}"])
    assert mine.cfg.dropout and mine.cfg.num_Ds == opt.num_Ds == 2
    for name in NETS_COMPARED:
        copy_weights(getattr(theirs, f"net{name}"), mine.nets[name])
    return opt, theirs, mine


def as_logged(losses: dict[str, torch.Tensor], opt) -> dict[str, torch.Tensor]:
    """Our losses as the code logs them: its G terms times their lambdas (we log them bare)."""
    weights = {"G_GAN": opt.lambda_GAN, "G_GAN2": opt.lambda_GAN2, "G_L1": opt.lambda_L1, "z_L1": opt.lambda_z,
               "kl": opt.lambda_kl}
    return {k: v * weights.get(k, 1.0) for k, v in losses.items()}


@pytest.mark.parametrize("conditional", [False, True], ids=["default", "conditional_D"])
def test_bicyclegan_steps_equal_the_bicyclegan_code(conditional, tmp_path):
    """The code's defaults and the script's dropout at 128 px, batch 2: the first pair makes both
    cycles, the second gives D2 its real image (with conditional_D its A too). The code logs its G
    losses times their lambdas."""
    with official("bicyclegan-ref"):
        opt, theirs, mine = official_and_ours(tmp_path, conditional)
        start = {name: [p.detach().clone() for p in mine.nets[name].parameters()] for name in NETS_COMPARED}

        a, b = pairs(BATCH, SIZE)
        report = Report("bicyclegan" + (", conditional_D" if conditional else ""))
        for step in range(STEPS):
            torch.manual_seed(step)
            theirs.set_input({"A": a, "B": b, "A_paths": [], "B_paths": []})
            theirs.optimize_parameters()
            after_theirs = torch.get_rng_state()
            torch.manual_seed(step)
            losses = mine.train_step({"A": a, "B": b})
            assert torch.equal(torch.get_rng_state(), after_theirs)  # the same draws, as many
            report.losses(step, as_logged(losses, opt), theirs.get_current_losses())
        for name in NETS_COMPARED:  # every net trained (a comparison of untouched weights would prove nothing)
            assert all(not torch.equal(p, q) for p, q in zip(mine.nets[name].parameters(), start[name], strict=True))
        report.nets((name, mine.nets[name], getattr(theirs, f"net{name}")) for name in NETS_COMPARED)
        for name in NETS_COMPARED:
            report.adam(name, mine.optimizers[name], getattr(theirs, f"optimizer_{name}"))
    report.check()


def test_one_backward_as_under_ddp_gives_the_codes_gradients(tmp_path):
    """Under DDP (a gradient reduced once per backward) our step takes z_L1 in the same backward as
    the rest, where the code runs a second one: one step, as one process of a DDP run takes it, gives
    the code's losses and E's, D's and D2's gradients to the bit, and G's within 1e-6 of its largest
    gradient (measured 1e-8 to 8e-8: float32 rounding of adding D2's and z_L1's gradients at G's
    second output, then backpropagating once, against backpropagating each and adding). Weights are not
    compared: Adam turns the rounding noise of the gradients that instance norm makes 0 (the conv
    biases before it, ~1e-9) into steps of the learning rate's size, different each way."""
    with official("bicyclegan-ref"):
        opt, theirs, mine = official_and_ours(tmp_path)
        mine.world_size = 2  # the DDP path's backward, without processes
        a, b = pairs(BATCH, SIZE)
        torch.manual_seed(0)
        theirs.set_input({"A": a, "B": b, "A_paths": [], "B_paths": []})
        theirs.optimize_parameters()
        torch.manual_seed(0)
        losses = mine.train_step({"A": a, "B": b})
        report = Report("bicyclegan, one backward (DDP)")
        report.losses(0, as_logged(losses, opt), theirs.get_current_losses())
        for name in NETS_COMPARED:  # relative to the net's largest gradient
            report.add(f"{name} gradients", torch.cat([p.grad.flatten() for p in mine.nets[name].parameters()]),
                       torch.cat([p.grad.flatten() for p in getattr(theirs, f"net{name}").parameters()]))
    report.check(tolerance=0.0, looser={"G gradients": 1e-6})


def test_every_official_variant_computes_what_ours_does(tmp_path):
    """The code's G (both depths, both upsamplings, each activation and norm), E (both depths, each
    norm) and D (both depths, one to three scales): its weights load into ours by their own keys,
    and ours computes its output to the bit (eval mode, CPU, one thread)."""
    torch.manual_seed(0)
    with official("bicyclegan-ref"):
        from models import networks

        cases = []
        for net_g, norm, nl, up in [("unet_128", "instance", "relu", "basic"), ("unet_256", "batch", "lrelu", "basic"),
                                    ("unet_128", "none", "elu", "bilinear")]:
            theirs = networks.define_G(2, 3, 5, 4, netG=net_g, norm=norm, nl=nl, use_dropout=True, where_add="all",
                                       upsample=up, init_gain=1.0)
            mine = NETS.get(f"bicycle_{net_g}")(in_ch=2, out_ch=3, nz=5, ngf=4, norm=norm, dropout=True, upsample=up,
                                                nl=nl)
            size = int(net_g.split("_")[1])
            z = torch.randn(2, 5)
            cases.append((theirs, mine, (torch.randn(2, 2, size, size), z)))
        for net_e, norm in [("resnet_128", "instance"), ("resnet_256", "batch"), ("resnet_128", "none")]:
            size = int(net_e.split("_")[1])
            theirs = networks.define_E(3, 6, 4, netE=net_e, norm=norm, vaeLike=True, init_gain=1.0)
            mine = NETS.get("e_resnet")(in_ch=3, nz=6, nef=4, resolution=size, norm=norm)
            cases.append((theirs, mine, (torch.randn(2, 3, size, size),)))
        for net_d, num_d, norm in [("basic_256_multi", 2, "instance"), ("basic_128_multi", 1, "batch"),
                                   ("basic_128_multi", 3, "instance")]:
            theirs = networks.define_D(6, 5, netD=net_d, norm=norm, num_Ds=num_d, init_gain=1.0)
            mine = NETS.get(net_d)(in_ch=6, ndf=5, norm=norm, num_D=num_d)
            cases.append((theirs, mine, (torch.randn(2, 6, 128, 128),)))
        for theirs, mine, args in cases:
            copy_weights(theirs, mine)
            assert [k for k, _ in mine.named_parameters()] == [k for k, _ in theirs.named_parameters()]
            theirs.eval(), mine.eval()
            with torch.no_grad():
                want, got = theirs(*[t.clone() for t in args]), mine(*args)
            want = [want] if isinstance(want, torch.Tensor) else list(want)  # (D with one scale: a tensor)
            assert len(got) == len(want) if isinstance(got, list | tuple) else len(want) == 1
            got = [got] if isinstance(got, torch.Tensor) else list(got)
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), type(theirs).__name__


# --- the defaults --------------------------------------------------------------------------------------

SCRIPT = "scripts/train_edges2shoes.sh"
# The code's option -> (our recipe's field, the value the option's value means there).
SAME = {
    "batch_size": ("train.batch_size", None), "load_size": ("data.load_size", None),
    "crop_size": ("data.crop_size", None), "output_nc": ("model.output_nc", None), "nz": ("model.nz", None),
    "preprocess": ("data.preprocess", None), "direction": ("data.direction", None),
    "use_dropout": ("model.dropout", None), "no_flip": ("data.flip", lambda v: not v),
    "num_Ds": ("model.num_Ds", None), "netD": ("model.discriminator", None), "netD2": ("model.discriminator", None),
    "netG": ("model.generator", lambda v: f"bicycle_{v}"),  # with where_add all: G_Unet_add_all (checked below)
    "nef": ("model.nef", None), "ngf": ("model.ngf", None), "ndf": ("model.ndf", None), "norm": ("model.norm", None),
    "conditional_D": ("model.conditional_D", None), "init_type": ("model.init_type", None),
    "init_gain": ("model.init_gain", None), "gan_mode": ("loss.gan_mode", None), "niter": ("train.epochs", None),
    "niter_decay": ("train.epochs_decay", None), "lr": ("train.lr", None), "beta1": ("train.beta1", None),
    "lr_policy": ("train.lr_policy", None), "lambda_L1": ("loss.lambda_l1", None),
    "lambda_GAN": ("loss.lambda_gan_vae", None), "lambda_GAN2": ("loss.lambda_gan_lr", None),
    "lambda_z": ("loss.lambda_z", None), "lambda_kl": ("loss.lambda_kl", None),
    "save_epoch_freq": ("train.save_every", None),
}
# Where the recipe differs on purpose (its comment says why): the option, its value, ours.
DIFFERS = {"input_nc": (1, ("model.input_nc", 3))}


def script_args() -> list[str]:
    """The options scripts/train_edges2shoes.sh passes to train.py, its variables filled in."""
    text = (PEERS / "bicyclegan-ref" / SCRIPT).read_text()
    env = dict(re.findall(r"^([A-Z_]+)=['\"]?([^'\"\n]*)['\"]?$", text, re.M))
    command = text[text.index("./train.py"):].replace("\\\n", " ")
    words = shlex.split(re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: env.get(m[1], m[0]), command))[1:]
    dropped = {"--display_id", "--dataroot", "--name", "--model", "--checkpoints_dir"}  # not the training's
    out, i = [], 0
    while i < len(words):
        takes_value = i + 1 < len(words) and not words[i + 1].startswith("--")
        if words[i] not in dropped:
            out += words[i : i + 1 + takes_value]
        i += 1 + takes_value
    return out


def test_recipe_defaults_are_the_codes_defaults_and_its_script(tmp_path):
    with official("bicyclegan-ref"):
        from models.bicycle_gan_model import BiCycleGANModel

        args = script_args()
        assert {"--load_size", "--use_dropout", "--niter"} <= set(args), args
        assert "--no_flip" not in args  # the script sets NO_FLIP but never passes it: it trains with flips
        opt = vars(options_for(BiCycleGANModel, args, tmp_path))
    recipe = load_recipe("bicyclegan")

    def ours_value(path: str):
        section, key = path.split(".")
        return getattr(getattr(recipe, section), key)

    for option, (path, meaning) in SAME.items():
        want = meaning(opt[option]) if meaning else opt[option]
        assert ours_value(path) == want, (option, opt[option], path, ours_value(path))
    for option, (theirs, (path, mine)) in DIFFERS.items():
        assert opt[option] == theirs and ours_value(path) == mine, option
    # What the recipe has no field for: fixed in our code, to the code's values.
    assert (opt["where_add"], opt["use_same_D"], opt["epoch_count"]) == ("all", False, 1)
    assert NETS.info(recipe.model.generator).latent  # G_Unet_add_all: z at every level
    builder = inspect.signature(NETS.get(recipe.model.generator)).parameters
    assert (builder["upsample"].default, builder["nl"].default) == (opt["upsample"], opt["nl"])
    assert opt["netE"] == f"resnet_{recipe.data.crop_size}"  # our E's depth follows the crop size
    assert recipe.train.beta2 == 0.999  # hard-coded in the code's Adams


# --- checkpoints: translate import + translate run --style against the code's test.py ----------------

N_IMAGES = 3


def dominate_path(tmp: Path) -> str:
    """The code's test.py writes an HTML page with dominate; where it is not installed, a stand-in
    that accepts the calls (the page is not what is compared)."""
    if importlib.util.find_spec("dominate") is not None:
        return ""
    pkg = tmp / "shim" / "dominate"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "class _Tag:\n"
        "    def __init__(self, *a, **k): pass\n"
        "    def __enter__(self): return self\n"
        "    def __exit__(self, *a): return False\n"
        "    def add(self, *a): return a[0] if a else None\n"
        "class document(_Tag):\n"
        "    head = _Tag()\n"
        "    def render(self): return ''\n")
    (pkg / "tags.py").write_text("from dominate import _Tag as meta, _Tag as h3, _Tag as table, _Tag as tr, "
                                 "_Tag as td, _Tag as p, _Tag as a, _Tag as img, _Tag as br\n")
    return str(pkg.parent)


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    mse = np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_imported_checkpoints_translate_as_the_codes_test_script(tmp_path):
    """G and E from the code's own define_G/define_E (xavier with gain 1, so the code changes the
    output), saved as its train.py saves them; `translate import G --encoder E`; `translate run
    --style B` on each pair's A (resized to 128 as its test.py resizes it) against test.py's encoded
    output of that pair (E's mean of B): at least 40 dB. The official PNGs truncate where ours
    round, at most one level apart."""
    runner = CliRunner()
    ckpt = tmp_path / "ck" / "p2o"
    ckpt.mkdir(parents=True)
    with official("bicyclegan-ref"):
        from models import networks

        torch.manual_seed(0)
        G = networks.define_G(3, 3, 8, WIDTH, netG="unet_128", norm="instance", nl="relu", use_dropout=True,
                              init_gain=1.0, where_add="all", upsample="basic")
        E = networks.define_E(3, 8, WIDTH, netE="resnet_128", norm="instance", nl="lrelu", init_gain=1.0,
                              vaeLike=True)
        torch.save(G.state_dict(), ckpt / "latest_net_G.pth")
        torch.save(E.state_dict(), ckpt / "latest_net_E.pth")

    files = sorted(shared("people2outline", "test").iterdir())[:N_IMAGES]
    data = tmp_path / "data" / "val"
    data.mkdir(parents=True)
    for f in files:
        Image.open(f).save(data / f"{f.stem}.png")
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (dominate_path(tmp_path), str(PEERS.parent / "tools" / "peer" /
                                                                                   "shims")) if p)}
    cmd = [sys.executable, "test.py", "--dataroot", str(tmp_path / "data"), "--name", "p2o", "--checkpoints_dir",
           str(tmp_path / "ck"), "--results_dir", str(results), "--gpu_ids", "-1", *AT_128, "--ngf", str(WIDTH),
           "--nef", str(WIDTH), "--load_size", str(SIZE), "--crop_size", str(SIZE), "--no_flip", "--num_test",
           str(N_IMAGES), "--n_samples", "1"]
    res = subprocess.run(cmd, cwd=PEERS / "bicyclegan-ref", env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    weights = tmp_path / "w.safetensors"
    res = runner.invoke(app, ["import", str(ckpt / "latest_net_G.pth"), "--encoder", str(ckpt / "latest_net_E.pth"),
                              "-o", str(weights)])
    assert res.exit_code == 0 and "bicycle_unet_128" in res.output and "encoder" in res.output, res.output

    outs = []
    for i, f in enumerate(files):
        pair = Image.open(f).convert("RGB")
        w, h = pair.size
        a_dir, style = tmp_path / f"in{i}", tmp_path / f"style{i}.png"
        a_dir.mkdir()
        pair.crop((0, 0, w // 2, h)).save(a_dir / "a.png")
        pair.crop((w // 2, 0, w, h)).save(style)
        out = tmp_path / f"out{i}"
        res = runner.invoke(app, ["run", str(a_dir), str(out), "-w", str(weights), "--style", str(style),
                                  "--size", str(SIZE), "--precision", "fp32", "-q"])
        assert res.exit_code == 0, res.output
        mine = np.asarray(Image.open(out / "a.png").convert("RGB"))
        theirs = np.asarray(Image.open(results / "val" / "images" / f"input_{i:03d}_encoded.png").convert("RGB"))
        assert mine.shape == theirs.shape == (SIZE, SIZE, 3)
        assert theirs.std() > 10  # not a flat image: the weights make the comparison mean something
        db = psnr(mine, theirs)
        print(f"\nbicyclegan import, {f.name}: {db:.1f} dB against the code's test.py (encode mode)")
        assert db >= 40, db
        above = mine.astype(int) - theirs.astype(int)
        assert above.min() >= 0 and above.max() <= 1  # theirs truncate to uint8, ours round
        outs.append(theirs)
    assert not np.array_equal(outs[0], outs[1])
