"""The zoo inside the translators: composed generators (model.encoder + model.decoder), halves started
from zoo weights files and frozen, pSp into a trained StyleGAN2, BicycleGAN's many outputs per input.

Real images: fashion_mnist (pSp), mnist (a VAE), people2outline pairs (BicycleGAN).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import copy_first, shared
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from translate.cli.commands import app
from translate.core.checkpoints import read_weights, save_weights
from translate.core.devices import Precision
from translate.core.errors import TranslateError
from translate.core.recipes import load_recipe
from translate.core.registry import NETS, create_net
from translate.methods import get_method
from translate.training.train import Trainer, resume

runner = CliRunner()
CPU = torch.device("cpu")
QUIET = ["data.num_workers=0", "train.sample_every=0", "train.log_every=1", "train.save_every=0", "train.device=cpu"]


def build(recipe: str, overrides: list[str]):
    """The method a recipe makes (networks built, nothing trained)."""
    r = load_recipe(recipe, overrides)
    return get_method(r.method)(r, CPU, Precision("fp32", CPU))


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def one_line_error(args: list[str], *needles: str) -> str:
    """The command fails with exit 1 and one error line holding ``needles`` (no traceback)."""
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit | None), res.output
    text = " ".join(res.output.split())
    assert text.startswith("error:") and text.count("error:") == 1, res.output
    for needle in needles:
        assert needle in text, text
    return text


# --- the halves compute what the whole networks do ---------------------------------------------------

def test_resnet_halves_are_the_resnet_generator():
    torch.manual_seed(0)
    g = create_net("resnet_9blocks", ngf=4).eval()
    enc, dec = create_net("resnet_encoder", ngf=4).eval(), create_net("resnet_decoder", ngf=4).eval()
    split = len(enc.model)
    sd = g.state_dict()
    enc.load_state_dict({k: v for k, v in sd.items() if int(k.split(".")[1]) < split})
    dec.load_state_dict({f"model.{int(k.split('.')[1]) - split}.{k.split('.', 2)[2]}": v for k, v in sd.items()
                         if int(k.split(".")[1]) >= split})
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(dec(enc(x)), g(x), rtol=0, atol=1e-6)


def test_unet_halves_are_the_unet_generator():
    torch.manual_seed(0)
    g = create_net("unet_256", ngf=4, norm="batch")
    enc = create_net("unet_encoder", ngf=4, norm="batch", num_downs=8)
    dec = create_net("unet_decoder", ngf=4, norm="batch", num_downs=8)
    block, level = g.model, 0
    while True:  # walk the nested blocks outermost first, copying each level's convs and norms
        seq = block.model
        if block.outermost:
            enc.downs[0].load_state_dict(seq[0].state_dict())
            dec.ups[0][1].load_state_dict(seq[3].state_dict())
            block = seq[1]
        elif block.innermost:
            enc.downs[level][1].load_state_dict(seq[1].state_dict())
            dec.ups[level][1].load_state_dict(seq[3].state_dict())
            dec.ups[level][2].load_state_dict(seq[4].state_dict())
            break
        else:
            for i, j in ((1, 1), (2, 2)):
                enc.downs[level][i].load_state_dict(seq[j].state_dict())
            dec.ups[level][1].load_state_dict(seq[5].state_dict())
            dec.ups[level][2].load_state_dict(seq[6].state_dict())
            block = seq[3]
        level += 1
    for net in (g, enc, dec):
        for m in net.modules():  # non-trivial running statistics, the same in both
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(0.1)
                m.running_var.fill_(2.0)
        net.eval()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(dec(enc(x)), g(x), rtol=0, atol=1e-5)


# --- a VAE's encoder inside a translator ---------------------------------------------------------------

@pytest.fixture(scope="module")
def vae_weights(tmp_path_factory) -> Path:
    """A VAE trained for a few steps on 32x32 MNIST digits."""
    root = tmp_path_factory.mktemp("vae")
    copy_first(shared("mnist", "train", "3"), root / "data" / "train" / "3", 16)
    over = [f"data.path={root / 'data'}", "train.max_steps=8", "train.batch_size=8", *QUIET]
    return Trainer(load_recipe("vae", over), root / "run", quiet=True).fit().weights


def test_vae_encoder_in_a_translator_gives_the_vae_codes(vae_weights):
    vae = read_weights(vae_weights).build("AE")
    m = build("pix2pix", ["model.encoder=vae", "model.decoder=stylegan2", f"model.init_encoder={vae_weights}",
                          "data.crop_size=32", "data.load_size=32", "data.channels=1", "model.input_nc=1",
                          "model.output_nc=1", "model.ngf=4", f"model.z_dim={vae.z_dim}"])
    G = m.net("G").eval()
    files = sorted(shared("mnist", "train", "7").iterdir())[:4]  # digits the VAE has not seen
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("L").resize((32, 32)))) for f in files])
    x = x[:, None].float() / 127.5 - 1
    with torch.no_grad():
        torch.testing.assert_close(G.encoder(x), vae.encode(x), rtol=0, atol=0)
        assert G(x).shape == (4, 1, 32, 32)
    assert G.decoder.mapping.net[0].weight.requires_grad  # not frozen unless asked


def test_init_files_are_checked_in_one_line(vae_weights, weights, pairs4, tmp_path):
    base = ["train", "--recipe", "pix2pix", "--data", str(pairs4), "-o", str(tmp_path / "run"),
            "--set", "model.encoder=vae", "--set", "model.decoder=stylegan2", "--set", "data.channels=1",
            "--set", "model.input_nc=1", "--set", "model.output_nc=1", "--set", "data.load_size=32"]
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    one_line_error([*base, "--set", "data.crop_size=32", "--set", f"model.init_encoder={text}"],
                   "model.init_encoder", "not a safetensors file")
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign))
    one_line_error([*base, "--set", "data.crop_size=32", "--set", f"model.init_encoder={foreign}"],
                   "not a translate weights file")
    one_line_error([*base, "--set", "data.crop_size=32", "--set", f"model.init_encoder={weights}"],
                   "holds resnet_6blocks", "a vae encoder starts from", "--recipe vae")
    one_line_error([*base, "--set", "data.crop_size=64", "--set", "data.load_size=64",
                    "--set", f"model.init_encoder={vae_weights}"],
                   "holds a conv_vae for resolution 32", "needs resolution 64")
    one_line_error([*base, "--set", "data.crop_size=32", "--set", f"model.init_decoder={vae_weights}"],
                   "a stylegan2 decoder starts from", "--recipe stylegan2")


def test_bad_pairings_are_one_line(pairs4, tmp_path):
    args = ["train", "--recipe", "pix2pix", "--data", str(pairs4), "-o", str(tmp_path / "run")]
    one_line_error([*args, "--set", "model.encoder=psp", "--set", "model.decoder=resnet"],
                   "model.encoder psp gives a wplus code", "does not take", "psp+stylegan2", "unet+unet")
    one_line_error([*args, "--set", "model.encoder=psp"], "go together", "psp+stylegan2")
    one_line_error([*args, "--set", "model.decoder=stylegan"], "model.decoder", "did you mean 'stylegan2'")
    one_line_error([*args, "--set", "model.encoder=unet", "--set", "model.decoder=unet",
                    "--set", "model.freeze_decoder=true"], "model.freeze_decoder", "model.init_decoder=FILE")


def test_a_half_frozen_for_its_first_steps_then_trains(pairs4, tmp_path):
    """freeze_encoder_steps: the encoder's weights do not move for N steps (Adam's moments neither; batch
    norm statistics follow the data), then they do. Resume continues that way."""
    over = [f"data.path={pairs4}", "data.load_size=32", "data.crop_size=32", "model.encoder=resnet",
            "model.decoder=resnet", "model.ngf=4", "model.ndf=4", "model.freeze_encoder_steps=2",
            "train.max_steps=2", "train.batch_size=2", *QUIET]
    trainer = Trainer(load_recipe("pix2pix", over), tmp_path / "run", quiet=True)
    G = trainer.method.net("G")
    start = {k: v.detach().clone() for k, v in G.named_parameters()}
    trainer.fit()
    after = dict(G.named_parameters())
    assert all(torch.equal(after[k], start[k]) for k in start if k.startswith("encoder."))
    assert any(not torch.equal(after[k], start[k]) for k in start if k.startswith("decoder."))
    resume(tmp_path / "run", ["train.max_steps=3"], quiet=True)
    moved = read_weights(tmp_path / "run" / "latest.safetensors").tensors["G"]
    assert any(not torch.equal(moved[k], start[k]) for k in start if k.startswith("encoder."))


# --- pSp: into a StyleGAN2 the zoo trained --------------------------------------------------------------

def test_psp_learns_to_undo_downsampling_and_keeps_the_generator(tmp_path):
    """A StyleGAN2 trained a few hundred steps on fashion_mnist, then pSp on the same images 4x
    downsampled (data.degrade): L2 to the targets at least halves, and the generator (weights and
    w_avg) stays what the zoo wrote."""
    images = tmp_path / "images"
    for c in ("0", "1", "8"):
        copy_first(shared("fashion_mnist", "train", c), images / c, 48)
    small = ["model.z_dim=32", "model.w_dim=32", "model.mapping_layers=2", "model.channel_base=256",
             "model.channel_max=32", "train.batch_size=16", *QUIET]
    sg = Trainer(load_recipe("stylegan2", [f"data.path={images}", "train.max_steps=200", *small]), tmp_path / "sg",
                 quiet=True).fit().weights

    over = [f"data.path={images}", "data.degrade=downsample4", f"model.init_decoder={sg}", "model.ngf=8",
            "train.max_steps=150", "train.batch_size=16", *QUIET]
    trainer = Trainer(load_recipe("psp", over), tmp_path / "psp", quiet=True)
    some = [trainer.dataset[i] for i in range(0, len(trainer.dataset), 4)]
    a, b = (torch.stack([it[k] for it in some]).float() / 127.5 - 1 for k in ("A", "B"))

    def l2() -> float:
        G = trainer.method.net("G").eval()
        with torch.no_grad():
            return float(F.mse_loss(G(a), b))

    before = l2()
    trainer.fit()
    after = l2()
    assert after <= 0.5 * before, (before, after)

    exported = read_weights(tmp_path / "psp" / "latest.safetensors")
    decoder = {k.removeprefix("decoder."): v for k, v in exported.tensors["G"].items() if k.startswith("decoder.")}
    generator = read_weights(sg).tensors["G"]
    assert decoder.keys() == generator.keys() and "mapping.w_avg" in decoder
    assert all(torch.equal(decoder[k], generator[k]) for k in generator)

    # translate run at any size and mode: resized to the generator's 32x32 and back
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.open(sorted((images / "0").iterdir())[0]).save(inputs / "small.png")
    Image.open(sorted(shared("horse2zebra", "trainA").iterdir())[0]).save(inputs / "photo.jpg")
    res = runner.invoke(app, ["run", str(inputs), str(tmp_path / "out"), "-w", str(exported.path), "-q"])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "out" / "small.png").size == (28, 28)
    assert Image.open(tmp_path / "out" / "photo.jpg").size == Image.open(inputs / "photo.jpg").size
    one_line_error(["run", str(inputs), str(tmp_path / "out2"), "-w", str(exported.path), "--samples", "2"],
                   "--samples and --seed need a model with a latent code", "bicyclegan")


def test_psp_head_conv_of_a_1x1_map_is_its_centre_tap():
    """The style heads' stride-2 conv takes a 1x1 map (the coarse heads at 32x32, the shipped size) as
    the 1x1 conv of its centre tap: the same output and gradients as nn.Conv2d in fp32, at 1x1 and
    at larger maps; under bf16 autocast, 20 times with NaN left in freed memory before each, the
    eight padding taps get a gradient of exactly 0. (Computed as a 3x3 conv, torch 2.14.1's oneDNN
    left them unwritten on CPUs with AVX512-BF16 about half the time: NaN or 1e37, then in the
    weights; an AVX2 CPU, which emulates bf16, never showed it.)"""
    from translate.nets.psp import StridedConv

    torch.manual_seed(0)
    conv, plain = StridedConv(32, 32, 3, 2, 1), nn.Conv2d(32, 32, 3, 2, 1)
    plain.load_state_dict(conv.state_dict())
    for size in (1, 2, 4):
        x = torch.randn(2, 32, size, size)
        (out, grad), (out_plain, grad_plain) = [(y, torch.autograd.grad(y.square().sum(), net.weight)[0])
                                                for net in (conv, plain) for y in [net(x)]]
        torch.testing.assert_close(out, out_plain, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, grad_plain, rtol=1e-5, atol=1e-6)

    x = torch.randn(2, 32, 1, 1)
    want = torch.autograd.grad(conv(x).square().sum(), conv.weight)[0]
    for _ in range(20):
        junk = torch.full((1 << 16,), float("nan"))
        del junk
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        (got,) = torch.autograd.grad(out.float().square().sum(), conv.weight)
        off_centre = got.clone()
        off_centre[:, :, 1, 1] = 0
        assert torch.count_nonzero(off_centre) == 0
        assert (got - want).abs().max() <= 0.05 * want.abs().max()


# --- BicycleGAN: several outputs per input ---------------------------------------------------------------

def test_bicyclegan_rebuilds_and_draws_different_repeatable_samples(pairs4, tmp_path):
    """BicycleGAN with a composed generator (the zoo's U-Net halves, z at the input): it learns, draws
    different and repeatable samples, walks its code, and takes the code of an example (--style)."""
    over = [f"data.path={pairs4}", "data.load_size=64", "data.crop_size=64", "model.encoder=unet",
            "model.decoder=unet", "model.discriminator=basic_128_multi", "model.ngf=8", "model.ndf=8",
            "model.nef=8", "train.max_steps=60", "train.batch_size=2", *QUIET]
    result = Trainer(load_recipe("pix2pix-vae", over), tmp_path / "run", quiet=True).fit()
    rows = log(tmp_path / "run")
    first, last = np.mean([r["G_L1"] for r in rows[:5]]), np.mean([r["G_L1"] for r in rows[-5:]])
    assert last < 0.8 * first, (first, last)

    inputs = tmp_path / "in"
    copy_first(shared("people2outline", "test"), inputs, 2)
    outs = []
    for name in ("a", "b"):
        res = runner.invoke(app, ["run", str(inputs), str(tmp_path / name), "-w", str(result.weights),
                                  "--samples", "4", "--seed", "7", "-q"])
        assert res.exit_code == 0, res.output
        outs.append({p.name: np.asarray(Image.open(p)) for p in sorted((tmp_path / name).iterdir())})
    stem = sorted(inputs.iterdir())[0].stem
    assert sorted(outs[0]) == sorted(f"{p.stem}_{k}.jpg" for p in inputs.iterdir() for k in range(4))
    samples = [outs[0][f"{stem}_{k}.jpg"].astype(int) for k in range(4)]
    assert all(np.abs(samples[i] - samples[j]).mean() > 0 for i in range(4) for j in range(i))
    assert all(np.array_equal(outs[0][k], outs[1][k]) for k in outs[0])  # the same seed, the same files

    # one sample, no seed: z = 0, the same every time, under the input's own name
    for name in ("mean1", "mean2"):
        assert runner.invoke(app, ["run", str(inputs), str(tmp_path / name), "-w", str(result.weights),
                                   "-q"]).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mean1" / f"{stem}.jpg")),
                          np.asarray(Image.open(tmp_path / "mean2" / f"{stem}.jpg")))

    # interpolate walks z for one input: the input, then the steps
    png = tmp_path / "walk.png"
    res = runner.invoke(app, ["interpolate", "-w", str(result.weights), "--input", str(sorted(inputs.iterdir())[0]),
                              "--steps", "4", "--rows", "2", "-o", str(png)])
    assert res.exit_code == 0 and "2 row(s) of 5" in res.output, res.output
    w, h = Image.open(png).size
    assert w > h > 0

    # --style: E's code of one example (a target, an outline) for every input; another example, others
    examples = []
    for i, pair in enumerate(sorted(shared("people2outline", "train").iterdir())[4:6]):
        img = Image.open(pair)
        examples.append(tmp_path / f"style{i}.png")
        img.crop((img.width // 2, 0, img.width, img.height)).save(examples[-1])

    def styled(example: Path, name: str) -> dict[str, np.ndarray]:
        res = runner.invoke(app, ["run", str(inputs), str(tmp_path / name), "-w", str(result.weights), "--style",
                                  str(example), "-q"])
        assert res.exit_code == 0, res.output
        return {p.name: np.asarray(Image.open(p)) for p in sorted((tmp_path / name).iterdir())}

    first, again, other = styled(examples[0], "style_a"), styled(examples[0], "style_b"), styled(examples[1], "style_c")
    assert sorted(first) == sorted(p.name for p in inputs.iterdir())  # one output each, under its own name
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert all(np.abs(first[k].astype(int) - other[k].astype(int)).mean() > 0 for k in first)
    one_line_error(["run", str(inputs), str(tmp_path / "x"), "-w", str(result.weights), "--style", str(examples[0]),
                    "--samples", "2"], "--style gives one latent")
    wf = read_weights(result.weights)
    no_encoder = save_weights(tmp_path / "g.safetensors", {"G": wf.build("G")}, {"G": wf.arch["G"]})
    one_line_error(["run", str(inputs), str(tmp_path / "y"), "-w", str(no_encoder), "--style", str(examples[0])],
                   "--style needs the model's encoder E")
    one_line_error(["run", str(inputs), str(tmp_path / "z"), "-w", str(result.weights), "--style",
                    str(tmp_path / "nowhere.png")], "--style: cannot read")


def test_bicyclegan_generator_exports_with_its_latent_and_bad_settings_are_one_line(pairs4, tmp_path):
    """The default generator (the BicycleGAN code's, z at every level) exports as (image, z) ->
    output; an odd batch, or a generator without a latent, is one line before anything trains."""
    m = build("bicyclegan", ["model.generator=bicycle_unet_128", "model.discriminator=basic_128_multi",
                             "data.crop_size=128", "model.ngf=4", "model.ndf=4", "model.nef=4"])
    weights = save_weights(tmp_path / "w.safetensors", m.export(), {n: m.arch(n) for n in m.export_names})
    assert read_weights(weights).nets == ["G", "E"]
    res = runner.invoke(app, ["export", "-w", str(weights), "--format", "torchscript", "-o", str(tmp_path / "g.pt")])
    assert res.exit_code == 0 and "inputs image, z" in res.output, res.output
    traced = torch.jit.load(str(tmp_path / "g.pt"))
    assert traced(torch.zeros(1, 3, 128, 256), torch.zeros(1, 8)).shape == (1, 3, 128, 256)
    for sets, needle in ((["train.batch_size=3"], "train.batch_size 3 must be even for bicyclegan"),
                         (["model.generator=unet_256"], "model.generator unet_256 takes no latent code")):
        one_line_error(["train", "--recipe", "bicyclegan", "--data", str(pairs4), "--out", str(tmp_path / "run"),
                        *[x for s in sets for x in ("--set", s)]], needle)


def test_bicyclegan_checkpoints_import_with_their_encoder_and_wrong_files_are_one_line(tmp_path):
    """State dicts in the BicycleGAN code's layout (ours is it, key for key; the official code's own
    files: tests/test_parity_bicyclegan.py) import as they were built, norm none and the bilinear
    upsampling included; a wrong pairing is one line."""
    torch.manual_seed(0)
    g = create_net("bicycle_unet_128", in_ch=1, out_ch=3, nz=5, ngf=4, norm="none", upsample="bilinear").eval()
    e = create_net("e_resnet", in_ch=3, nz=5, nef=4, resolution=64, norm="batch").eval()
    for name, net in (("G", g), ("E", e), ("E5", create_net("e_resnet", nz=6, nef=4, resolution=64))):
        torch.save(net.state_dict(), tmp_path / f"latest_net_{name}.pth")
    torch.save(create_net("unet_128", ngf=4).state_dict(), tmp_path / "pix2pix.pth")
    out, g_file = tmp_path / "w.safetensors", str(tmp_path / "latest_net_G.pth")
    res = runner.invoke(app, ["import", g_file, "--encoder", str(tmp_path / "latest_net_E.pth"), "--norm", "none",
                              "-o", str(out)])
    assert res.exit_code == 0, res.output
    wf = read_weights(out)
    assert wf.arch["G"] == {"net": "bicycle_unet_128", "kwargs": {"in_ch": 1, "out_ch": 3, "nz": 5, "ngf": 4,
                                                                  "dropout": False, "upsample": "bilinear",
                                                                  "norm": "none"}}
    assert wf.arch["E"] == {"net": "e_resnet", "kwargs": {"in_ch": 3, "nz": 5, "nef": 4, "resolution": 64,
                                                          "norm": "batch"}}
    x, z, b = torch.randn(1, 1, 128, 128), torch.randn(1, 5), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(wf.build("G")(x, z), g(x, z))
        assert all(torch.equal(a, c) for a, c in zip(wf.build("E")(b), e(b), strict=True))
    for args, needle in (([str(tmp_path / "pix2pix.pth"), "--encoder", g_file], "--encoder is for BicycleGAN"),
                         ([g_file, "--encoder", g_file], "does not look like the BicycleGAN code's encoder E"),
                         ([g_file, "--encoder", str(tmp_path / "latest_net_E5.pth")], "not its encoder"),
                         ([g_file, "--norm", "batch"], "norm 'batch' contradicts the checkpoint")):
        one_line_error(["import", *args, "-o", str(tmp_path / "x.safetensors")], needle)


# --- a new backbone is its own definition ----------------------------------------------------------------

def test_a_toy_encoder_registered_at_run_time_composes_trains_and_runs(monkeypatch, pairs4, tmp_path):
    monkeypatch.setattr(NETS, "_items", dict(NETS._items))  # the registration ends with the test
    monkeypatch.setattr(NETS, "_info", dict(NETS._info))

    class Toy(nn.Module):
        def __init__(self, in_ch: int, z_dim: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(in_ch, z_dim, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean((2, 3))

    @NETS.register("toy_encoder", role="encoder", family="image", gives="vector",
                   options=lambda c: {"in_ch": c["in_ch"], "z_dim": c["z_dim"]})
    def toy(in_ch: int = 3, z_dim: int = 8) -> nn.Module:
        """A conv and a spatial mean: the smallest encoder."""
        return Toy(in_ch, z_dim)

    assert ("toy", "stylegan2") in NETS.pairs() and ("toy", "unet") not in NETS.pairs()
    over = [f"data.path={pairs4}", "data.load_size=32", "data.crop_size=32", "model.encoder=toy",
            "model.decoder=stylegan2", "model.ngf=2", "model.ndf=4", "model.z_dim=8", "train.max_steps=2",
            "train.batch_size=2", *QUIET]
    weights = Trainer(load_recipe("pix2pix", over), tmp_path / "run", quiet=True).fit().weights
    G = read_weights(weights).build("G")  # the weights file alone rebuilds it
    assert isinstance(G.encoder, Toy)
    inputs = tmp_path / "in"
    copy_first(shared("people2outline", "test"), inputs, 1)
    res = runner.invoke(app, ["run", str(inputs), str(tmp_path / "out"), "-w", str(weights), "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["zoo"])
    assert res.exit_code == 0 and "toy + stylegan2" in res.output and "smallest encoder" in res.output


def test_composed_weights_file_says_what_it_is_made_of(tmp_path):
    m = build("pix2pix", ["model.encoder=unet", "model.decoder=unet", "data.crop_size=64", "model.ngf=4"])
    path = save_weights(tmp_path / "g.safetensors", m.export(), {"G": m.arch("G")})
    spec = read_weights(path).arch["G"]
    assert spec["net"] == "composed"
    assert spec["kwargs"]["encoder"] == {"net": "unet_encoder", "kwargs": {"in_ch": 3, "ngf": 4, "norm": "batch",
                                                                         "num_downs": 6}}
    assert NETS.input_size(spec) == (64, None)
    with pytest.raises(TranslateError, match="does not suit model.encoder unet"):
        build("pix2pix", ["model.encoder=unet", "model.decoder=unet", "data.crop_size=96", "model.ngf=4"])


def test_psp_with_a_frozen_decoder_and_bicyclegan_train_with_two_processes(pairs4, tmp_path):
    """DDP (gloo) over a composed generator whose decoder is frozen, and over BicycleGAN's G called
    twice a step with E's latent loss outside DDP: both finish, the frozen half stays as it was."""
    import os
    import subprocess
    import sys

    torch.manual_seed(0)
    spec = {"net": "stylegan2_g", "kwargs": {"z_dim": 8, "w_dim": 8, "resolution": 32, "channels": 3,
                                             "channel_base": 64, "channel_max": 8, "mapping_layers": 1}}
    sg = save_weights(tmp_path / "sg.safetensors", {"G": create_net(spec["net"], **spec["kwargs"])}, {"G": spec},
                      extra={"method": "stylegan2"})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tiny = ["data.load_size=32", "data.crop_size=32", "model.ngf=4", "train.max_steps=2", "train.batch_size=1",
            "data.num_workers=0", "train.sample_every=0", "train.log_every=1", "train.device=cpu"]
    runs = {"psp": [f"model.init_decoder={sg}", "data.channels=3", "model.input_nc=3", "model.output_nc=3"],
            "bicyclegan": ["model.ndf=4", "model.nef=4", "train.batch_size=2", "model.encoder=unet",
                           "model.decoder=unet", "model.discriminator=basic_128_multi"]}
    for recipe, extra in runs.items():
        sets = [f"--set={s}" for s in [*tiny, *extra]]
        cmd = [sys.executable, "-m", "translate", "train", "--devices=2", f"--recipe={recipe}", f"--data={pairs4}",
               f"--out={tmp_path / recipe}", *sets]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert res.returncode == 0 and "done: step 2" in res.stderr, res.stderr[-3000:]
    decoder = {k.removeprefix("decoder."): v for k, v in read_weights(tmp_path / "psp" / "latest.safetensors")
               .tensors["G"].items() if k.startswith("decoder.")}
    assert all(torch.equal(decoder[k], v) for k, v in read_weights(sg).tensors["G"].items())


def test_psp_perceptual_term_and_random_noise_in_training(pairs4, tmp_path):
    """pSp's LPIPS(alex) term (x 0.8) enters the loss and the update when a local AlexNet file is given,
    with one start-up note when it is not; the StyleGAN2 decoder draws random noise while the
    translator trains (pSp's randomize_noise) and constant noise when it translates."""
    import copy

    import torchvision
    from conftest import tiny

    alex = tmp_path / "alexnet-random.pth"  # the real torchvision file is not on these machines
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), alex)
    over = [f"data.path={pairs4}", *tiny("psp", ["model.freeze_decoder=false"])]
    device, precision = torch.device("cpu"), Precision("fp32", torch.device("cpu"))
    methods, batch = {}, None
    for name, extra in (("off", []), ("on", [f"loss.lpips_weights={alex}"])):
        recipe = load_recipe("psp", [*over, *extra])
        torch.manual_seed(1)
        methods[name] = get_method("psp")(recipe, device, precision)
        if batch is None:
            torch.manual_seed(2)
            cfg, size = recipe.model, recipe.data.crop_size
            batch = {"A": torch.rand(2, cfg.input_nc, size, size) * 2 - 1,
                     "B": torch.rand(2, cfg.output_nc, size, size) * 2 - 1}
    assert methods["off"].notes and "loss.lpips_weights" in methods["off"].notes[0]
    assert methods["on"].notes == []
    G = copy.deepcopy(methods["on"].nets["G"])
    assert G.decoder.random_noise  # the whole trains
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)  # (a trained generator's; they start at 0)
        assert not torch.equal(G(batch["A"]), G(batch["A"]))  # random noise
        G.eval()
        assert torch.equal(G(batch["A"]), G(batch["A"])) and not G.decoder.random_noise
        G.train()
    losses = {}
    for name, method in methods.items():
        torch.manual_seed(3)
        losses[name] = method.train_step(batch)
    assert "LPIPS" not in losses["off"] and float(losses["on"]["LPIPS"]) > 0
    assert losses["on"]["L2"] == losses["off"]["L2"]  # same start, same draws: only the term differs
    after = {n: m.nets["G"].encoder.state_dict() for n, m in methods.items()}
    assert any(not torch.equal(after["on"][k], after["off"][k]) for k in after["on"])  # and it moved the update
