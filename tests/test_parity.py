"""Each translator equals its paper's official code, step for step (tests/peers.py builds the official
models from ../shared/peers; PARITY.md there lists what one step draws, reads and writes).

Both sides start from the same weights (the official model's, copied into ours), see the same batch
of real images and the same random draws, run three training steps in fp32 on the CPU, and every
logged loss, weight, buffer and Adam moment is compared. Small sizes keep it quick; the code paths
are the defaults'.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from peers import Report, copy_weights, exact_cpu, official, options_for, ours, pairs, seed_flipping, unpaired  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("exact_cpu")

STEPS = 3


# --- pix2pix -------------------------------------------------------------------------------------------

def test_pix2pix_steps_equal_the_reference(tmp_path):
    """pix2pix (the reference's defaults: U-Net, batch norm, dropout, vanilla GAN, L1 x 100) at 128 px:
    dropout draws from torch's generator, seeded the same before each side's step."""
    size, batch = 128, 2
    with official("cyclegan-ref"):
        from models.pix2pix_model import Pix2PixModel

        opt = options_for(Pix2PixModel, ["--model", "pix2pix", "--netG", "unet_128", "--ngf", "16", "--ndf", "16",
                                         "--batch_size", str(batch)], tmp_path)
        theirs = Pix2PixModel(opt)
        theirs.setup(opt)
        mine = ours("pix2pix", ["model.generator=unet_128", "model.ngf=16", "model.ndf=16",
                                f"train.batch_size={batch}", f"data.crop_size={size}"])
        copy_weights(theirs.netG, mine.nets["G"])
        copy_weights(theirs.netD, mine.nets["D"])

        a, b = pairs(batch, size)
        report = Report("pix2pix")
        for step in range(STEPS):
            torch.manual_seed(step)
            theirs.set_input({"A": a, "B": b, "A_paths": [], "B_paths": []})
            theirs.optimize_parameters()
            torch.manual_seed(step)
            losses = mine.train_step({"A": a, "B": b})
            losses["G_L1"] = losses["G_L1"] * opt.lambda_L1  # the reference logs L1 times lambda_L1
            report.losses(step, losses, theirs.get_current_losses())
        report.nets([("G", mine.nets["G"], theirs.netG), ("D", mine.nets["D"], theirs.netD)])
        report.adam("G", mine.optimizers["G"], theirs.optimizer_G)
        report.adam("D", mine.optimizers["D"], theirs.optimizer_D)
    report.check()


# --- CycleGAN ------------------------------------------------------------------------------------------

class Replay:
    """Stands in for the ``random`` module the reference's image pool draws from: hands out, in order,
    the draws our pools make (torch generators of their own, saved for resume), so both pools return
    the same images."""

    def __init__(self, draws: list[tuple[str, float | int]]) -> None:
        self.draws = list(draws)

    def uniform(self, low: float, high: float) -> float:
        kind, value = self.draws.pop(0)
        assert kind == "uniform" and (low, high) == (0, 1), kind
        return float(value)

    def randint(self, low: int, high: int) -> int:
        kind, value = self.draws.pop(0)
        assert kind == "randint" and low == 0, kind
        return int(value)


def pool_draws(pool, n: int) -> list[tuple[str, float | int]]:
    """What ``pool.query`` of ``n`` images will draw, from a copy of its generator."""
    gen, stored, draws = torch.Generator(), len(pool.images), []
    gen.set_state(pool.gen.get_state())
    for _ in range(n):
        if stored < pool.size:
            stored += 1
            continue
        u = torch.rand((), generator=gen).item()
        draws.append(("uniform", u))
        if u > 0.5:
            draws.append(("randint", int(torch.randint(0, pool.size, (), generator=gen))))
    return draws


def test_cyclegan_steps_equal_the_reference(tmp_path, monkeypatch):
    """CycleGAN (the reference's defaults: ResNet-9, instance norm, LSGAN, cycle x 10, identity 0.5) at
    64 px, batch 2, with a pool of 2: it fills in the first step and draws in the next two."""
    size, batch, pool = 64, 2, 2
    with official("cyclegan-ref"):
        import util.image_pool
        from models.cycle_gan_model import CycleGANModel

        opt = options_for(CycleGANModel, ["--model", "cycle_gan", "--ngf", "16", "--ndf", "16",
                                          "--pool_size", str(pool), "--batch_size", str(batch)], tmp_path)
        theirs = CycleGANModel(opt)
        theirs.setup(opt)
        mine = ours("cyclegan", ["model.ngf=16", "model.ndf=16", f"loss.pool_size={pool}", f"train.batch_size={batch}",
                                 f"data.crop_size={size}"])
        for name in ("G_A", "G_B", "D_A", "D_B"):
            copy_weights(getattr(theirs, f"net{name}"), mine.nets[name])

        a, b = unpaired(batch, size)
        report = Report("cyclegan")
        lam, lam_idt = opt.lambda_A, opt.lambda_A * opt.lambda_identity
        swaps = 0  # pooled images handed out instead of the new ones
        for step in range(STEPS):
            draws = pool_draws(mine.pool_b, batch) + pool_draws(mine.pool_a, batch)
            swaps += sum(kind == "randint" for kind, _ in draws)
            replay = Replay(draws)
            monkeypatch.setattr(util.image_pool, "random", replay)
            theirs.set_input({"A": a, "B": b, "A_paths": [], "B_paths": []})
            theirs.optimize_parameters()
            assert not replay.draws and (step > 0) == bool(draws)
            losses = mine.train_step({"A": a, "B": b})
            for k in ("cycle_A", "cycle_B"):  # the reference logs them times their lambdas
                losses[k] = losses[k] * lam
            for k in ("idt_A", "idt_B"):
                losses[k] = losses[k] * lam_idt
            report.losses(step, losses, theirs.get_current_losses())
        report.nets((name, mine.nets[name], getattr(theirs, f"net{name}")) for name in ("G_A", "G_B", "D_A", "D_B"))
        report.adam("G", mine.optimizers["G"], theirs.optimizer_G)
        report.adam("D", mine.optimizers["D"], theirs.optimizer_D)
    assert swaps > 0
    report.check()


# --- CUT and FastCUT -------------------------------------------------------------------------------------

def numpy_flipping(flipped: bool) -> SimpleNamespace:
    """Stands in for numpy in the CUT code's model file, which draws only FastCUT's flip from it
    (``np.random.random() < 0.5``)."""
    return SimpleNamespace(random=SimpleNamespace(random=lambda: 0.0 if flipped else 0.9))


@pytest.mark.parametrize("mode", ["CUT", "FastCUT"])
def test_cut_steps_equal_the_cut_code(mode, tmp_path, monkeypatch):
    """CUT and FastCUT (the CUT code's defaults: anti-aliased ResNet-9 and PatchGAN, PatchNCE on layers
    0, 4, 8, 12, 16 with 256 patches, LSGAN) at 64 px, batch 2. The patch positions the CUT code draws
    (numpy) are handed to our heads; FastCUT's steps flip, do not, then flip."""
    size, batch, recipe = 64, 2, mode.lower()
    flips = [True, False, True] if mode == "FastCUT" else [False] * STEPS
    with official("cut-ref"):
        monkeypatch.setattr(sys, "argv", ["train.py", "--CUT_mode", mode])  # its options read sys.argv
        import models.cut_model
        from models.cut_model import CUTModel

        opt = options_for(CUTModel, ["--CUT_mode", mode, "--ngf", "16", "--ndf", "16", "--batch_size", str(batch)],
                          tmp_path)
        theirs = CUTModel(opt)
        a, b = unpaired(batch, size)
        data = {"A": a, "B": b, "A_paths": [], "B_paths": []}
        theirs.data_dependent_initialize(data)  # builds its heads (F) on the first batch
        mine = ours(recipe, ["model.ngf=16", "model.ndf=16", f"train.batch_size={batch}", f"data.crop_size={size}"])
        for name in ("G", "D"):
            copy_weights(getattr(theirs, f"net{name}"), mine.nets[name])
        heads = {k: f"mlps.{k.removeprefix('mlp_')}" for k in theirs.netF.state_dict()}
        copy_weights(theirs.netF, mine.nets["F"], heads)

        drawn: list = []  # the CUT code's patch positions, for our heads in the same order
        their_f, my_f = theirs.netF.forward, mine.nets["F"].forward
        monkeypatch.setattr(theirs.netF, "forward", lambda feats, n, ids=None: _record(their_f, drawn, feats, n, ids))
        monkeypatch.setattr(mine.nets["F"], "forward", lambda feats, n, ids=None: my_f(feats, n, ids or drawn.pop(0)))

        report = Report(mode)
        for step, flipped in enumerate(flips):
            monkeypatch.setattr(models.cut_model, "np", numpy_flipping(flipped))
            theirs.set_input(data)
            theirs.optimize_parameters()
            torch.manual_seed(seed_flipping(flipped))
            losses = mine.train_step({"A": a, "B": b})
            assert not drawn
            nce_both = (losses["NCE"] + losses["NCE_Y"]) * 0.5 if "NCE_Y" in losses else losses["NCE"]
            report.losses(step, {**losses, "G": losses["G_GAN"] + nce_both}, theirs.get_current_losses())
        report.nets([("G", mine.nets["G"], theirs.netG), ("D", mine.nets["D"], theirs.netD)])
        report.nets([("F", mine.nets["F"], theirs.netF)], heads)
        for name in ("G", "D", "F"):
            report.adam(name, mine.optimizers[name], getattr(theirs, f"optimizer_{name}"))
    report.check()


def _record(forward, drawn: list, feats, num_patches, patch_ids):
    out = forward(feats, num_patches, patch_ids)
    if patch_ids is None:
        drawn.append([torch.as_tensor(i) for i in out[1]])
    return out


# --- the recipes' defaults are the official ones ---------------------------------------------------------

COMMON = {  # recipe field -> the official option's value (opt -> value)
    "data.load_size": lambda o: o.load_size, "data.crop_size": lambda o: o.crop_size,
    "data.preprocess": lambda o: o.preprocess, "data.direction": lambda o: o.direction,
    "data.flip": lambda o: not o.no_flip, "model.generator": lambda o: o.netG,
    "model.discriminator": lambda o: o.netD, "model.n_layers_D": lambda o: o.n_layers_D,
    "model.ngf": lambda o: o.ngf, "model.ndf": lambda o: o.ndf, "model.dropout": lambda o: not o.no_dropout,
    "model.init_type": lambda o: o.init_type, "model.init_gain": lambda o: o.init_gain,
    "model.input_nc": lambda o: o.input_nc, "model.output_nc": lambda o: o.output_nc,
    "train.epochs": lambda o: o.n_epochs, "train.epochs_decay": lambda o: o.n_epochs_decay,
    "train.batch_size": lambda o: o.batch_size, "train.lr": lambda o: o.lr, "train.beta1": lambda o: o.beta1,
    "train.lr_policy": lambda o: o.lr_policy, "train.save_every": lambda o: o.save_epoch_freq,
    "loss.gan_mode": lambda o: o.gan_mode,
}
REFERENCE = {**COMMON, "model.norm": lambda o: o.norm, "train.beta2": lambda o: 0.999}  # (its Adams' beta2)
OFFICIAL = {  # recipe -> (peer, model module, class, options, the fields beyond COMMON)
    "pix2pix": ("cyclegan-ref", "models.pix2pix_model", "Pix2PixModel", ["--model", "pix2pix"],
                {**REFERENCE, "loss.lambda_l1": lambda o: o.lambda_L1}),
    "cyclegan": ("cyclegan-ref", "models.cycle_gan_model", "CycleGANModel", ["--model", "cycle_gan"],
                 {**REFERENCE, "loss.lambda_cycle": lambda o: o.lambda_A == o.lambda_B and o.lambda_A,
                  "loss.lambda_identity": lambda o: o.lambda_identity, "loss.pool_size": lambda o: o.pool_size}),
    **{mode.lower(): ("cut-ref", "models.cut_model", "CUTModel", ["--CUT_mode", mode], {
        **COMMON, "model.norm": lambda o: o.normG == o.normD and o.normG, "train.beta2": lambda o: o.beta2,
        "model.antialias": lambda o: not o.no_antialias, "model.antialias_up": lambda o: not o.no_antialias_up,
        "model.nce_layers": lambda o: [int(i) for i in o.nce_layers.split(",")],
        "model.num_patches": lambda o: o.num_patches, "model.netF_nc": lambda o: o.netF_nc,
        "loss.lambda_gan": lambda o: o.lambda_GAN, "loss.lambda_nce": lambda o: o.lambda_NCE,
        "loss.nce_idt": lambda o: o.nce_idt, "loss.nce_t": lambda o: o.nce_T,
        "loss.flip_equivariance": lambda o: o.flip_equivariance, "loss.pool_size": lambda o: o.pool_size})
       for mode in ("CUT", "FastCUT")},
}


@pytest.mark.parametrize("recipe", sorted(OFFICIAL))
def test_recipe_defaults_are_the_official_ones(recipe, tmp_path, monkeypatch):
    """Every default the recipe shares with the official options equals the official default."""
    from translate.core.recipes import load_recipe

    peer, module, cls, args, fields = OFFICIAL[recipe]
    with official(peer):
        monkeypatch.setattr(sys, "argv", ["train.py", *args])  # the CUT code's options read sys.argv
        model = getattr(__import__(module, fromlist=[cls]), cls)
        opt = options_for(model, args, tmp_path)
    r = load_recipe(recipe)
    ours_, theirs = {}, {}
    for field, official_value in fields.items():
        section, key = field.split(".")
        if hasattr(getattr(r, section), key):  # (a method without the field: CUT has no pool)
            ours_[field], theirs[field] = getattr(getattr(r, section), key), official_value(opt)
    assert len(ours_) >= len(COMMON) and ours_ == theirs
