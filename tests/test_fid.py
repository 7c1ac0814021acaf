"""FID and KID (translate/analysis/fid.py, `translate eval --images --ref`) against the packages whose numbers papers
quote: pytorch-fid for FID and torch-fidelity for KID, from the same image files and the same Inception
weights (random but shared: the real pt_inception file is not on these machines)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, copy_first, shared, tiny
from PIL import Image
from typer.testing import CliRunner

from translate.analysis.fid import FID_WEIGHTS, distances, fid, folder_features, kid, load_inception
from translate.cli.commands import app

runner = CliRunner()
CPU = torch.device("cpu")


def random_inception(path: Path) -> Path:
    """The FID network's weights file layout (torchvision's Inception-v3 with 1008 classes and no auxiliary
    head: the keys of pytorch-fid's FIDInceptionA/C/E blocks are torchvision's), random weights, saved
    as the real file is (a state dict)."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    for m in net.modules():  # He init keeps the signal's scale through the 90-odd ReLU layers (the default
        if isinstance(m, torch.nn.Conv2d):  # init shrinks the features towards 0)
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    return random_inception(tmp_path_factory.mktemp("inception") / "pt_inception-random.pth")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, Path]:
    """Two flat folders of real images of several sizes (photos 300x451 to 872x1000, 256x256 horses and
    zebras, 28x28 grayscale Fashion-MNIST), as pytorch-fid lists a folder (*.jpg, *.png at its top)."""
    root = tmp_path_factory.mktemp("mixed")
    photos = sorted(shared("photos").iterdir())
    a, b = root / "a", root / "b"
    for dst, part, zebra, cls in ((a, photos[:2], "testA", "1"), (b, photos[2:4], "testB", "8")):
        dst.mkdir()
        for p in part:
            (dst / p.name).write_bytes(p.read_bytes())
        copy_first(shared("horse2zebra", zebra), dst, 2)
        copy_first(shared("fashion_mnist", "test", cls), dst, 3)
    return a, b


def pytorch_fid_network(inception_file: Path, tmp_path: Path, monkeypatch) -> None:
    """pytorch-fid's own loader reads its weights from torch's hub cache without downloading: the
    shared random weights placed there under the real file's name."""
    hub = tmp_path / "torch-home"
    (hub / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(inception_file, hub / "hub" / "checkpoints" / FID_WEIGHTS)
    monkeypatch.setenv("TORCH_HOME", str(hub))


# pytorch-fid's scipy sqrtm of a rank-6 product: scipy says it is singular (and that its `disp` goes away)
@pytest.mark.filterwarnings("ignore:Matrix is singular", "ignore:The `disp` argument is deprecated")
def test_fid_and_kid_equal_pytorch_fid_and_torch_fidelity_from_the_same_files(inception_file, mixed, tmp_path,
                                                                             monkeypatch):
    """The whole path from files: pytorch-fid's (its reader, its InceptionV3 loaded by its own loader, its
    statistics and scipy sqrtm, as its calculate_fid_given_paths, batch 1) against ours. KID against
    torch-fidelity's kid on pytorch-fid's features (torch-fidelity's own Inception reads another weights
    file and resizes as TensorFlow 1 did, so only its KID is compared); torchmetrics' FID formula on
    pytorch-fid's statistics."""
    from pytorch_fid.fid_score import calculate_frechet_distance, get_activations
    from pytorch_fid.inception import InceptionV3
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torchmetrics.image.fid import _compute_fid

    from translate.core.files import list_images

    a, b = mixed
    ours = distances(a, b, inception_file, device="cpu", kid_subsets=10, kid_subset_size=4)
    pytorch_fid_network(inception_file, tmp_path, monkeypatch)
    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    # batch 1: pytorch-fid stacks a batch, so files of several sizes go one at a time
    acts = [get_activations(list_images(d), model, batch_size=1, dims=2048, device="cpu", num_workers=0)
            for d in (a, b)]
    stats = [(act.mean(0), np.cov(act, rowvar=False)) for act in acts]  # calculate_activation_statistics
    theirs = calculate_frechet_distance(*stats[0], *stats[1])
    assert abs(ours.fid - theirs) < 1e-3 * theirs, (ours.fid, theirs)
    tm = float(_compute_fid(*(torch.from_numpy(v) for st in stats for v in st)))
    assert abs(ours.fid - tm) < 1e-3 * tm, (ours.fid, tm)

    fidelity = kid_features_to_metric(*(torch.from_numpy(act) for act in acts), kid_subsets=10, kid_subset_size=4,
                                      verbose=False)  # its defaults otherwise: the cubic kernel, seed 2020
    mean, std = fidelity["kernel_inception_distance_mean"], fidelity["kernel_inception_distance_std"]
    assert abs(ours.kid[0] - mean) < 1e-3 * abs(mean) and abs(ours.kid[1] - std) < 1e-3 * std, (ours.kid, fidelity)
    print(f"\nFID parity (7 + 7 files, 28x28 to 872x1000): ours {ours.fid:.6f}, pytorch-fid {theirs:.6f}, "
          f"torchmetrics {tm:.6f}; KID ours {ours.kid[0]:.6g} +- {ours.kid[1]:.6g}, torch-fidelity "
          f"{mean:.6g} +- {std:.6g}")


def test_the_clean_resize_differs_and_is_cached_apart(inception_file, mixed):
    """--resize clean (bicubic antialiased to 299 in uint8 first) gives other features for images not of
    299x299; each resize has its own cache entry, and a second run reads both from the caches."""
    a, _ = mixed
    net, key = load_inception(inception_file, CPU)
    native, _ = folder_features(net, key, a, "pytorch-fid")
    clean, cached = folder_features(net, key, a, "clean")
    assert not cached and native.shape == clean.shape == (7, 2048)
    assert (native - clean).abs().max() > 1e-2 * native.abs().max()
    for resize, want in (("pytorch-fid", native), ("clean", clean)):
        again, cached = folder_features(net, key, a, resize)
        assert cached and torch.equal(again, want)


def shifted(src: Path, dst: Path, add: int) -> Path:
    dst.mkdir(parents=True)
    for p in sorted(src.iterdir()):
        img = np.array(Image.open(p).convert("RGB")).astype(int) + add
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(dst / f"{p.stem}.png")
    return dst


def test_fid_is_zero_for_a_set_against_itself_and_grows_with_a_shift(inception_file, tmp_path):
    base = tmp_path / "base"
    copy_first(shared("fashion_mnist", "test", "0"), base, 4)
    copy_first(shared("fashion_mnist", "test", "7"), base, 4)
    same, near, far = (shifted(base, tmp_path / n, add) for n, add in (("same", 0), ("near", 30), ("far", 90)))
    d_same, d_near, d_far = (distances(d, base, inception_file, device="cpu", kid_subsets=5, kid_subset_size=6)
                             for d in (same, near, far))
    assert 0 < d_near.fid < d_far.fid and d_near.kid[0] < d_far.kid[0]
    # a set against itself: the same features, and FID 0 up to the rounding of the eigenvalues of S1 S2
    # (8 images in 2048 dimensions: 2040 of them are noise around 0; measured 4e-6 of the traces)
    net, key = load_inception(inception_file, CPU)
    fa, _ = folder_features(net, key, same)
    fb, _ = folder_features(net, key, base)
    assert torch.equal(fa, fb)
    assert abs(d_same.fid) < 1e-4 * float(2 * torch.cov(fb.T).trace())
    assert d_near.cached == (False, True)  # base's features were computed once, then read from its cache
    assert distances(near, base, inception_file, device="cpu", kid_subsets=5, kid_subset_size=6).cached == (True, True)


def test_fid_and_kid_match_torchmetrics_on_the_same_features():
    """The formulas alone, on features: torchmetrics' FID, with more images than dimensions (the same
    eigenvalues) and fewer (our exact small product; torchmetrics' d x d eigenvalues then round, measured
    2e-8), and its KID with one subset as large as the sets (then the subsets drawn cannot differ)."""
    from torchmetrics.image.fid import _compute_fid
    from torchmetrics.image.kid import poly_mmd

    g = torch.Generator().manual_seed(0)
    fa = torch.randn(40, 64, generator=g, dtype=torch.float64)
    fb = torch.randn(30, 64, generator=g, dtype=torch.float64) * 1.3 + 0.2
    for dims, tolerance in ((16, 1e-9), (64, 1e-7)):
        a, b = fa[:, :dims], fb[:, :dims]
        tm_fid = float(_compute_fid(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T)))
        assert abs(fid(a, b) - tm_fid) < tolerance * tm_fid, (dims, fid(a, b), tm_fid)
    assert abs(kid(fa[:30], fb, subsets=1, subset_size=30)[0] - float(poly_mmd(fa[:30], fb))) < 1e-9


def test_kid_subset_size_is_shrunk_and_said_or_refused(inception_file, mixed):
    a, b = mixed
    res = runner.invoke(app, ["eval", "--images", str(a), "--ref", str(b), "--inception", str(inception_file),
                              "--kid-subsets", "3", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "KID subsets of 7 images (the default 1000 is more than the 7 images against 7)" in res.output
    assert "FID " in res.output
    res = runner.invoke(app, ["eval", "--images", str(a), "--ref", str(b), "--inception", str(inception_file),
                              "--kid-subset-size", "8", "--device", "cpu"])
    assert_one_line_error(res, "--kid-subset-size 8 is more than the images there are (7 against 7)", "pass 7")
    res = runner.invoke(app, ["eval", "--images", str(a), "--ref", str(b), "--inception", str(inception_file),
                              "--resize", "nearest"])
    assert_one_line_error(res, "--resize 'nearest'", "pytorch-fid or clean")


def test_fid_without_the_inception_file_says_what_to_pass(tmp_path):
    folder_ = tmp_path / "x"
    copy_first(shared("fashion_mnist", "test", "1"), folder_, 2)
    res = runner.invoke(app, ["eval", "--images", str(folder_), "--ref", str(folder_)])
    assert_one_line_error(res, FID_WEIGHTS, "--inception")
    res = runner.invoke(app, ["eval", "--images", str(folder_)])
    assert_one_line_error(res, "give both --images and --ref")
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3)}, bad)
    res = runner.invoke(app, ["eval", "--images", str(folder_), "--ref", str(folder_), "--inception", str(bad)])
    assert_one_line_error(res, "does not hold the FID Inception weights")


@pytest.fixture
def h2z_held_out(tmp_path) -> Path:
    """4 horses and 4 zebras to train on, 3 of each held out (testA/, testB/)."""
    root = tmp_path / "h2z"
    for split, n in (("trainA", 4), ("trainB", 4), ("testA", 3), ("testB", 3)):
        copy_first(shared("horse2zebra", split), root / split, n)
    return root


TINY_CYCLEGAN = ["data.load_size=32", "data.crop_size=32", "model.generator=resnet_6blocks", "model.ngf=4",
                 "model.ndf=4", "train.batch_size=2", "data.num_workers=0", "train.sample_every=0",
                 "train.log_every=1", "train.device=cpu", "train.precision=fp32", "train.epochs=2",
                 "train.epochs_decay=0", "train.eval_every=1", "train.save_every=1", "train.keep_last=0"]


def test_eval_every_of_cyclegan_logs_fid_and_keeps_the_lowest(inception_file, h2z_held_out, tmp_path):
    """FID/KID of G_A's outputs on testA/ against testB/ after each epoch in log.jsonl, and best.safetensors
    the weights of the epoch with the lowest FID (the same tensors as that epoch's numbered copy)."""
    from safetensors.torch import load_file

    from translate.core.recipes import load_recipe
    from translate.training.train import Trainer

    run = tmp_path / "run"
    over = [f"data.path={h2z_held_out}", *TINY_CYCLEGAN, f"train.inception={inception_file}", "train.lr=0.01"]
    Trainer(load_recipe("cyclegan", over), run, quiet=True).fit()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval_fid" in r]
    assert [r["epoch"] for r in evals] == [1, 2] and all(r["split"] == "test" for r in evals)
    assert all(r["eval_fid"] > 0 and "eval_kid" in r and r["eval_kid_std"] == 0 for r in evals)  # 3 against 3
    best = min(evals, key=lambda r: r["eval_fid"])["epoch"]
    kept, numbered = load_file(run / "best.safetensors"), load_file(run / f"epoch_{best:03d}.safetensors")
    other = load_file(run / f"epoch_{3 - best:03d}.safetensors")
    assert kept.keys() == numbered.keys() and all(torch.equal(kept[k], numbered[k]) for k in kept)
    assert not all(torch.equal(kept[k], other[k]) for k in kept)


def test_eval_every_of_a_generator_and_without_the_inception_file(inception_file, tmp_path):
    """A DCGAN: train.eval_images samples against its training images. Without train.inception an
    unpaired method trains on, with one line saying its evaluation is off."""
    import io

    from rich.console import Console

    from translate.core.recipes import load_recipe
    from translate.training.train import Trainer

    digits = tmp_path / "digits"
    copy_first(shared("mnist", "train", "3"), digits, 6)
    run = tmp_path / "dcgan"
    over = [f"data.path={digits}", *tiny("dcgan", ["train.epochs=1", "train.epochs_decay=0", "train.eval_every=1",
                                                    "train.eval_images=4", f"train.inception={inception_file}"])]
    Trainer(load_recipe("dcgan", over), run, quiet=True).fit()
    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if "eval_fid" in line]
    assert [r["split"] for r in evals] == ["train"] and evals[0]["eval_fid"] > 0
    assert (run / "best.safetensors").is_file()

    text = io.StringIO()
    root = tmp_path / "h2z"
    copy_first(shared("horse2zebra", "trainA"), root / "trainA", 2)
    copy_first(shared("horse2zebra", "trainB"), root / "trainB", 2)
    over = [f"data.path={root}", *TINY_CYCLEGAN, "train.epochs=1"]
    Trainer(load_recipe("cyclegan", over), tmp_path / "off", console=Console(file=text, width=300)).fit()
    assert "note: train.eval_every is off: cyclegan is scored by FID, which needs --set train.inception=FILE" \
        in text.getvalue()
    assert not (tmp_path / "off" / "best.safetensors").exists()


def test_eval_every_of_cyclegan_without_held_out_images_or_with_a_broken_one_is_one_line(inception_file, tmp_path):
    root = tmp_path / "h2z"
    copy_first(shared("horse2zebra", "trainA"), root / "trainA", 2)
    copy_first(shared("horse2zebra", "trainB"), root / "trainB", 2)
    train = ["train", "--recipe", "cyclegan", "--data", str(root), "--set", "train.eval_every=1", "--set",
             f"train.inception={inception_file}", "--set", "train.device=cpu"]
    res = runner.invoke(app, [*train, "-o", str(tmp_path / "a")])
    assert_one_line_error(res, "train.eval_every needs held-out images", "testA/", "testB/")
    copy_first(shared("horse2zebra", "testA"), root / "testA", 2)
    copy_first(shared("horse2zebra", "testB"), root / "testB", 2)
    (root / "testA" / "broken.jpg").write_bytes(b"not a jpeg")
    res = runner.invoke(app, [*train, "-o", str(tmp_path / "b")])
    assert_one_line_error(res, "1 unreadable image(s)", "broken.jpg")
