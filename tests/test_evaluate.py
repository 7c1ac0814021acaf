"""`translate eval` (paired metrics), evaluation during training (train.eval_every, best.safetensors)
and `translate export` (ONNX / TorchScript, checked against PyTorch), on real images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_first, shared
from PIL import Image
from typer.testing import CliRunner

from translate.checkpoints import save_weights
from translate.cli import app
from translate.images import read_rgb, resize_u8
from translate.nets import init_weights
from translate.recipes import load_recipe
from translate.registry import create_net
from translate.train import Trainer

runner = CliRunner()
SMALL = ["data.load_size=64", "data.crop_size=64", "model.generator=resnet_6blocks", "model.ngf=4", "model.ndf=4",
         "train.batch_size=2", "data.num_workers=0", "train.sample_every=0", "train.log_every=1",
         "train.save_every=0", "train.device=cpu", "model.dropout=false"]


@pytest.fixture
def split_pairs(tmp_path) -> Path:
    """people2outline pairs (photo | outline) in train/, val/ and test/."""
    root = tmp_path / "p2o"
    copy_first(shared("people2outline", "train"), root / "train", 4)
    files = copy_first(shared("people2outline", "test"), root / "test", 5)
    (root / "val").mkdir()
    for f in files[3:]:
        f.rename(root / "val" / f.name)
    return root


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_eval_gives_the_metrics_of_the_written_outputs(split_pairs, tmp_path):
    weights = Trainer(load_recipe("pix2pix", [f"data.path={split_pairs}", "train.max_steps=2", *SMALL]),
                      tmp_path / "run", quiet=True).fit().weights
    out = tmp_path / "eval.csv"
    res = runner.invoke(app, ["eval", "-w", str(weights), "--data", str(split_pairs), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "3 test pairs" in res.output and "worst five by PSNR" in res.output
    table = rows(out)
    assert [r["file"] for r in table] == sorted(f"test/{p.name}" for p in (split_pairs / "test").iterdir())

    # the same numbers, computed directly: halves resized to the training size, `translate run`, torchmetrics
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    inputs, targets = tmp_path / "a", {}
    inputs.mkdir()
    for p in sorted((split_pairs / "test").iterdir()):
        img = read_rgb(p)
        half = img.shape[-1] // 2
        a, b = resize_u8(img[..., :half], (64, 64)), resize_u8(img[..., half : 2 * half], (64, 64))
        Image.fromarray(a.permute(1, 2, 0).numpy()).save(inputs / f"{p.stem}.png")
        targets[p.stem] = b
    assert runner.invoke(app, ["run", str(inputs), str(tmp_path / "out"), "-w", str(weights), "-q",
                               "--precision", "fp32"]).exit_code == 0
    for r in table:
        stem = Path(r["file"]).stem
        y = torch.from_numpy(np.array(Image.open(tmp_path / "out" / f"{stem}.png"))).permute(2, 0, 1)[None] / 255
        t = targets[stem][None].float() / 255
        assert abs(float(r["psnr"]) - float(peak_signal_noise_ratio(y, t, data_range=1.0))) < 1e-3
        assert abs(float(r["ssim"]) - float(structural_similarity_index_measure(y, t, data_range=1.0))) < 1e-4
        assert abs(float(r["l1"]) - float((y - t).abs().mean())) < 1e-4

    # either engine (translate/engines.py), fp32: the same metrics
    by_engine = {}
    for engine in ("torch", "openvino"):
        res = runner.invoke(app, ["eval", "-w", str(weights), "--data", str(split_pairs), "-o",
                                  str(tmp_path / f"{engine}.csv"), "--engine", engine, "--precision", "fp32", "-q"])
        assert res.exit_code == 0, res.output
        by_engine[engine] = rows(tmp_path / f"{engine}.csv")
    for a, b in zip(by_engine["torch"], by_engine["openvino"], strict=True):
        assert a["file"] == b["file"] and abs(float(a["l1"]) - float(b["l1"])) < 1e-4, (a, b)


def test_eval_every_logs_metrics_and_keeps_the_best(split_pairs, tmp_path):
    over = [f"data.path={split_pairs}", "train.epochs=2", "train.epochs_decay=0", "train.eval_every=1", *SMALL]
    Trainer(load_recipe("pix2pix", over), tmp_path / "run", quiet=True).fit()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval_psnr" in r]
    assert [r["epoch"] for r in evals] == [1, 2] and all(r["split"] == "val" for r in evals)
    assert (tmp_path / "run" / "best.safetensors").is_file()
    assert len(rows(tmp_path / "run" / "eval" / "epoch_002.csv")) == 2
    state = torch.load(tmp_path / "run" / "latest.state.pt", weights_only=True)
    assert state["best_eval"] == max(r["eval_psnr"] for r in evals) or abs(
        state["best_eval"] - max(r["eval_psnr"] for r in evals)) < 1e-4


def test_eval_errors_are_one_line(split_pairs, weights, tmp_path):
    res = runner.invoke(app, ["eval", "-w", str(weights), "--data", str(split_pairs), "--split", "holdout"])
    assert res.exit_code == 1 and "no holdout/ folder" in res.output
    res = runner.invoke(app, ["eval", "-w", str(weights), "--data", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "data folder not found" in res.output
    unpaired = tmp_path / "h2z"
    copy_first(shared("horse2zebra", "trainA"), unpaired / "trainA", 2)
    copy_first(shared("horse2zebra", "trainB"), unpaired / "trainB", 2)
    res = runner.invoke(app, ["train", "--recipe", "cyclegan", "--data", str(unpaired), "-o", str(tmp_path / "c"),
                              "--set", "train.eval_every=1"])
    assert res.exit_code == 1 and "train.eval_every evaluates paired translation" in res.output


# --- export -------------------------------------------------------------------------------------------------

def translator_weights(tmp_path: Path, kind: str) -> Path:
    torch.manual_seed(0)
    if kind == "composed":
        spec = {"net": "composed", "kwargs": {
            "encoder": {"net": "unet_encoder", "kwargs": {"ngf": 4, "norm": "instance", "num_downs": 5}},
            "decoder": {"net": "unet_decoder", "kwargs": {"ngf": 4, "norm": "instance", "num_downs": 5}}}}
    else:
        spec = {"net": kind, "kwargs": {"ngf": 4, "norm": "instance"}}
    net = init_weights(create_net(spec["net"], **spec["kwargs"]))
    return save_weights(tmp_path / f"{kind}.safetensors", {"G": net}, {"G": spec}, extra={"method": "pix2pix"})


@pytest.mark.parametrize("kind", ["resnet_6blocks", "unet_128", "composed"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_round_trips(kind, fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (pip install 'translate[export]')")
    weights = translator_weights(tmp_path, kind)
    out = tmp_path / f"g.{'onnx' if fmt == 'onnx' else 'pt'}"
    res = runner.invoke(app, ["export", "-w", str(weights), "--format", fmt, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "checked: max difference to PyTorch" in res.output and out.is_file()
    if fmt == "torchscript":  # a plain torch.jit file: loads without this package's code
        net = torch.jit.load(str(out))
        assert net(torch.zeros(1, 3, 128, 256)).shape == (1, 3, 128, 256)


def test_export_a_zoo_generator_and_refuse_an_autoencoder(tmp_path):
    spec = {"net": "stylegan2_g", "kwargs": {"z_dim": 8, "w_dim": 8, "resolution": 16, "channels": 1,
                                             "channel_base": 64, "channel_max": 8, "mapping_layers": 1}}
    w = save_weights(tmp_path / "sg.safetensors", {"G": create_net(spec["net"], **spec["kwargs"])}, {"G": spec},
                     extra={"method": "stylegan2"})
    res = runner.invoke(app, ["export", "-w", str(w), "--format", "torchscript", "-o", str(tmp_path / "g.pt")])
    assert res.exit_code == 0 and "inputs z" in res.output, res.output
    assert torch.jit.load(str(tmp_path / "g.pt"))(torch.randn(5, 8)).shape == (5, 1, 16, 16)
    ae_spec = {"net": "conv_ae", "kwargs": {"channels": 1, "resolution": 16, "z_dim": 4, "nf": 4}}
    ae = save_weights(tmp_path / "ae.safetensors", {"AE": create_net("conv_ae", **ae_spec["kwargs"])},
                      {"AE": ae_spec}, extra={"method": "ae"})
    res = runner.invoke(app, ["export", "-w", str(ae), "-o", str(tmp_path / "ae.onnx")])
    assert res.exit_code == 1 and "holds an autoencoder" in res.output
    res = runner.invoke(app, ["export", "-w", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "x.onnx")])
    assert res.exit_code == 1 and "weights file not found" in res.output


# --- FID / KID ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    """The FID network's layout with random weights, saved as the real file is (a state dict): the real
    pt_inception weights are not on these machines."""
    from translate.fid import FIDInception

    torch.manual_seed(0)
    net = FIDInception()
    for m in net.modules():  # He init keeps the signal's scale through the 90-odd ReLU layers (the default
        if isinstance(m, torch.nn.Conv2d):  # init shrinks the features towards 0)
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def shifted(src: Path, dst: Path, add: int) -> Path:
    dst.mkdir(parents=True)
    for p in sorted(src.iterdir()):
        img = np.array(Image.open(p).convert("RGB")).astype(int) + add
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(dst / f"{p.stem}.png")
    return dst


def test_fid_is_zero_for_a_set_against_itself_and_grows_with_a_shift(inception_file, tmp_path):
    from translate.fid import distances, folder_features, load_inception

    base = tmp_path / "base"
    copy_first(shared("fashion_mnist", "test", "0"), base, 4)
    copy_first(shared("fashion_mnist", "test", "7"), base, 4)
    same, near, far = (shifted(base, tmp_path / n, add) for n, add in (("same", 0), ("near", 30), ("far", 90)))
    d_same = distances(same, base, inception_file, device="cpu", kid_subsets=5, kid_subset_size=6)
    d_near = distances(near, base, inception_file, device="cpu", kid_subsets=5, kid_subset_size=6)
    d_far = distances(far, base, inception_file, device="cpu", kid_subsets=5, kid_subset_size=6)
    assert 0 < d_near.fid < d_far.fid and d_near.kid[0] < d_far.kid[0]
    # a set against itself: the same features, and FID 0 up to the rounding of the eigenvalues of S1 S2
    # (8 images in 2048 dimensions: 2040 of them are noise around 0; measured 4e-6 of the traces)
    net, key = load_inception(inception_file, torch.device("cpu"))
    fa, _ = folder_features(net, key, same, torch.device("cpu"))
    fb, _ = folder_features(net, key, base, torch.device("cpu"))
    assert torch.equal(fa, fb)
    assert abs(d_same.fid) < 1e-4 * float(2 * torch.cov(fb.T).trace())
    assert d_near.cached == (False, True)  # base's features were computed once, then read from its cache
    assert distances(near, base, inception_file, device="cpu", kid_subsets=5, kid_subset_size=6).cached == (True, True)


def test_fid_and_kid_match_torchmetrics_on_the_same_features(inception_file, tmp_path):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    from translate.analyze import folder, model_input
    from translate.fid import fid, folder_features, kid, load_inception

    a, b = tmp_path / "a", tmp_path / "b"
    copy_first(shared("fashion_mnist", "test", "1"), a, 5)
    copy_first(shared("fashion_mnist", "test", "8"), b, 5)
    net, key = load_inception(inception_file, torch.device("cpu"))
    fa, _ = folder_features(net, key, a, torch.device("cpu"))
    fb, _ = folder_features(net, key, b, torch.device("cpu"))

    def images(d: Path) -> torch.Tensor:  # what our reader feeds the network, as torchmetrics' input
        return torch.stack([model_input(p, 3, 299) for p in folder(d).files]).float() / 255

    tm_fid = FrechetInceptionDistance(feature=net, normalize=True).double()
    tm_kid = KernelInceptionDistance(feature=net, normalize=True, subsets=1, subset_size=5)
    for metric in (tm_fid, tm_kid):
        metric.update(images(b), real=True)
        metric.update(images(a), real=False)
    assert abs(fid(fb, fa) - float(tm_fid.compute())) < 1e-3 * max(1.0, abs(fid(fb, fa)))
    assert abs(kid(fb, fa, subsets=1, subset_size=5)[0] - float(tm_kid.compute()[0])) < 1e-4


def test_fid_without_the_inception_file_says_what_to_pass(tmp_path):
    folder_ = tmp_path / "x"
    copy_first(shared("fashion_mnist", "test", "1"), folder_, 2)
    res = runner.invoke(app, ["eval", "--images", str(folder_), "--ref", str(folder_)])
    assert res.exit_code == 1 and "pt_inception-2015-12-05-6726825d.pth" in res.output and "--inception" in res.output
    res = runner.invoke(app, ["eval", "--images", str(folder_)])
    assert res.exit_code == 1 and "give both --images and --ref" in res.output


def test_lpips_from_a_local_alexnet_file(split_pairs, tmp_path):
    import torchvision

    from translate.evaluate import load_lpips

    torch.manual_seed(0)
    alex = tmp_path / "alexnet-random.pth"  # the real torchvision file is not on these machines
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), alex)
    net = load_lpips(alex, torch.device("cpu"))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert float(net(x, x).mean()) < 1e-6 < float(net(x, x.flip(-1)).mean())
    weights = translator_weights(tmp_path, "resnet_6blocks")
    out = tmp_path / "e.csv"
    res = runner.invoke(app, ["eval", "-w", str(weights), "--data", str(split_pairs), "--lpips", str(alex), "-o",
                              str(out), "-q"])
    assert res.exit_code == 0 and "lpips" in res.output, res.output
    assert all(float(r["lpips"]) > 0 for r in rows(out))
    res = runner.invoke(app, ["eval", "-w", str(weights), "--data", str(split_pairs), "--lpips",
                              str(tmp_path / "no.pth")])
    assert res.exit_code == 1 and "alexnet-owt-7be5be79.pth" in res.output
