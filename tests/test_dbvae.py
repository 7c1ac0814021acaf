"""The DB-VAE (the dbvae recipe, `translate debias`, `translate classify`) as MIT 6.S191's lab 2 part 2
trains it: the lab's sampling probabilities (written out here in numpy), the rarest positives drawn
most, batches half faces and half non-faces, and a classifier right on both classes of held-out LFW
crops (../shared/data/lfw), debiased and plain."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_first, shared, train_two_processes
from PIL import Image
from typer.testing import CliRunner

from translate.analysis.analyze import classify
from translate.cli.commands import app
from translate.core.checkpoints import read_weights
from translate.core.debias import resampling
from translate.core.errors import TranslateError
from translate.core.recipes import load_recipe
from translate.data.sampler import ResumableSampler
from translate.training.train import Trainer

runner = CliRunner()
QUIET = ["data.num_workers=0", "train.sample_every=0", "train.log_every=1", "train.save_every=0", "train.device=cpu"]
DBVAE = ["data.channels=1", "data.load_size=32", "data.crop_size=32", "model.nf=16", "train.epochs=12",
         "train.batch_size=32", *QUIET]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread (as conftest's single_thread, for the whole module): with two on this busy
    2-core machine training the two runs took 65 s, with one 8 s (the same numbers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- the sampling probabilities ------------------------------------------------------------------------

def lab_probabilities(mu: np.ndarray, bins: int = 10, smoothing_fac: float = 0.001) -> np.ndarray:
    """The lab's get_training_sample_probabilities, on the latent means ``mu`` (N, latent_dim)."""
    training_sample_p = np.zeros(mu.shape[0])
    for i in range(mu.shape[1]):
        latent_distribution = mu[:, i]
        hist_density, bin_edges = np.histogram(latent_distribution, density=True, bins=bins)
        bin_edges[0] = -float("inf")
        bin_edges[-1] = float("inf")
        bin_idx = np.digitize(latent_distribution, bin_edges)
        hist_smoothed_density = hist_density + smoothing_fac
        hist_smoothed_density = hist_smoothed_density / np.sum(hist_smoothed_density)
        p = 1.0 / (hist_smoothed_density[bin_idx - 1])
        p = p / np.sum(p)
        training_sample_p = np.maximum(p, training_sample_p)
    return training_sample_p / np.sum(training_sample_p)


def test_sampling_probabilities_are_the_labs():
    """The smoothing is added to the histogram's density (mass / bin width), as the lab's: dimensions
    of very different spreads (bin widths 0.001 to 2) make the two differ, and a constant dimension
    takes numpy's range."""
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(300, 12)) * np.geomspace(0.005, 10, 12)
    mu[:40, 3] += 40 * mu[:, 3].std()  # a second mode: an empty stretch of bins between
    mu[:, 7] = 0.25  # an unused dimension
    for bins, alpha in ((10, 0.001), (10, 0.1), (5, 1.0)):
        ours = resampling(torch.from_numpy(mu), bins, alpha).p.double().numpy()
        np.testing.assert_allclose(ours, lab_probabilities(mu, bins, alpha), rtol=1e-6)


def test_the_rarest_positives_get_the_highest_probabilities():
    """100 codes spread evenly over [0, 0.9) in each of 4 dimensions, and 6 more far out in the first:
    one alone (10.0), two together (7.0), three together (4.0). The probabilities rank them exactly:
    the lone code first, then the pair, then the three, then the 100; heavier smoothing flattens it."""
    g = torch.Generator().manual_seed(0)
    common = torch.stack([torch.linspace(0, 0.9, 100)[torch.randperm(100, generator=g)] for _ in range(4)], 1)
    far = torch.full((6, 4), 0.45)
    far[:, 0] = torch.tensor([10.0, 7.0, 7.01, 4.0, 4.01, 4.02])
    codes = torch.cat([common, far])
    r = resampling(codes, bins=10, alpha=0.001)
    assert torch.isclose(r.p.sum(), torch.tensor(1.0))
    order = torch.argsort(r.p, descending=True).tolist()
    assert order[0] == 100 and set(order[1:3]) == {101, 102} and set(order[3:6]) == {103, 104, 105}, order[:6]
    p = r.p.tolist()
    assert p[100] > max(p[101:103]) and min(p[101:103]) > max(p[103:106]) and min(p[103:106]) > max(p[:100])
    assert r.density[100] < r.density[101] < r.density[103] < r.density[:100].min()
    flat = resampling(codes, bins=10, alpha=100.0)  # smoothing far above any density: near uniform
    assert flat.max_min < 1.01 < r.max_min and flat.entropy > r.entropy


# --- the loss ---------------------------------------------------------------------------------------------

def test_the_loss_is_the_labs():
    """Sigmoid cross-entropy for every image; for faces only, the mean absolute error per pixel of
    [0, 1] images (ours are in [-1, 1]: mapped here) plus 0.0005 x the KL; latent size 100."""
    import copy

    from translate.core.devices import Precision
    from translate.methods import get_method
    from translate.methods.vae import kl_per_image

    recipe = load_recipe("dbvae", ["data.path=unused", *DBVAE])
    cpu = torch.device("cpu")
    method = get_method("dbvae")(recipe, cpu, Precision("fp32", cpu), {"classes": ["face", "nonface"]})
    assert method.cfg.z_dim == 100 and method.loss_cfg.kl_weight == 0.0005
    torch.manual_seed(0)
    batch = {"A": torch.rand(6, 1, 32, 32) * 2 - 1, "label": torch.tensor([0, 0, 0, 1, 1, 1])}
    net = copy.deepcopy(method.nets["AE"])
    torch.manual_seed(1)
    x_hat, mu, logvar, logit = net(batch["A"], sample=True)
    face = (batch["label"] == 0).float()
    recon = ((x_hat + 1) / 2 - (batch["A"] + 1) / 2).abs().mean((1, 2, 3))
    classification = torch.nn.functional.binary_cross_entropy_with_logits(logit, face, reduction="none")
    expected = (classification + face * (recon + 0.0005 * kl_per_image(mu, logvar))).mean()
    torch.manual_seed(1)
    losses = method.train_step(batch)
    assert torch.isclose(losses["loss"], expected, rtol=1e-5), (losses["loss"], expected)
    assert torch.isclose(losses["recon"], recon[:3].mean(), rtol=1e-5)

    with pytest.raises(TranslateError, match="train.batch_size must be 2 or more"):
        get_method("dbvae")(load_recipe("dbvae", ["data.path=unused", *DBVAE, "train.batch_size=1"]), cpu,
                            Precision("fp32", cpu), {"classes": ["face", "nonface"]})


# --- half faces, half non-faces --------------------------------------------------------------------------

def test_every_batch_is_half_positives_half_negatives():
    """The sampler fills the first half of every batch from the positives by their weights, the second
    from the negatives uniformly, on every rank, for any folder ratio (30 positives, 70 negatives
    here); a resumed epoch continues the same batches."""
    n, pos = 100, torch.arange(100) < 30
    weights = torch.where(pos, torch.linspace(1, 30, 100), torch.ones(100)).double()
    weights[95] = 0.0  # an unreadable negative: never drawn
    for world, batch in ((1, 8), (2, 8), (1, 7)):
        drawn = []
        for rank in range(world):
            s = ResumableSampler(n, rank, world, seed=3, batch_size=batch)
            s.weights, s.halves = weights, pos
            s.set_epoch(2)
            order = list(s)
            assert len(order) == len(s) and len(order) % batch == 0
            drawn += [order[k : k + batch] for k in range(0, len(order), batch)]
        for b in drawn:
            assert [bool(pos[i]) for i in b] == [True] * (batch // 2) + [False] * (batch - batch // 2), b
            assert len(set(b)) == len(b)  # without replacement within a batch, as the lab's np.random.choice
            assert 95 not in b
        assert len(drawn) * batch >= n and len(drawn) % world == 0
    s = ResumableSampler(n, seed=3, batch_size=8)
    s.weights, s.halves = weights, pos
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, consumed=24)
    assert list(s) == full[24:]
    # the positives follow their weights: over many epochs the heaviest is drawn most
    counts = torch.zeros(n)
    for epoch in range(30):
        s.set_epoch(epoch)
        counts += torch.bincount(torch.tensor(list(s)), minlength=n)
    assert counts[29] > 3 * counts[0] and counts[30:95].std() < counts[30:95].mean() / 2


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """LFW faces (positives, one in ten darkened: the rare kind) and non-faces; 80 of each for training.
    Held out: the last 20 faces and 20 non-faces (test/), and the same 20 faces darkened (rare/)."""
    root = tmp_path_factory.mktemp("lfw")
    face, nonface = sorted(shared("lfw", "face").iterdir()), sorted(shared("lfw", "nonface").iterdir())
    for sub in ("train/face", "train/nonface", "test/face", "test/nonface", "rare"):
        (root / sub).mkdir(parents=True)
    for k, f in enumerate(face):
        img = np.asarray(Image.open(f).convert("L"))
        if k >= 80:
            Image.fromarray(img).save(root / "test" / "face" / f.name)
            Image.fromarray((img * 0.3).astype(np.uint8)).save(root / "rare" / f.name)
        elif k % 10 == 0:
            Image.fromarray((img * 0.3).astype(np.uint8)).save(root / "train" / "face" / f"dark_{f.name}")
        else:
            Image.fromarray(img).save(root / "train" / "face" / f.name)
    for k, f in enumerate(nonface):
        Image.open(f).convert("L").save(root / ("train" if k < 80 else "test") / "nonface" / f.name)
    return root


def test_training_batches_are_half_faces_whatever_the_folder_ratio(faces, tmp_path):
    """80 faces beside 16 non-faces: every step of training (debiased and plain) sees 4 of each."""
    data = tmp_path / "data"
    copy_first(faces / "train" / "face", data / "face", 80)
    copy_first(faces / "train" / "nonface", data / "nonface", 16)
    for enabled in ("true", "false"):
        over = [f"data.path={data}", f"debias.enabled={enabled}", "train.epochs=1", "model.z_dim=8", "model.nf=4",
                *DBVAE[:3], *QUIET, "train.batch_size=8"]
        trainer = Trainer(load_recipe("dbvae", over), tmp_path / enabled, quiet=True)
        step, seen = trainer.method.train_step, []
        trainer.method.train_step = lambda batch, step=step, seen=seen: (seen.append(batch["label"].tolist()),
                                                                         step(batch))[1]
        trainer.fit()
        assert len(seen) == 12 and all(sorted(labels) == [0] * 4 + [1] * 4 for labels in seen), seen


# --- training on LFW -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(faces, tmp_path_factory) -> dict[str, Path]:
    """The recipe (z_dim 100) trained 12 epochs on 80 + 80 LFW crops, debiased and plain (the same
    balanced batches, drawn uniformly). At 6 epochs one seed in four, and AVX2's fp32 kernels, left the
    rare kind drawn less than the common one."""
    out = tmp_path_factory.mktemp("dbvae-runs")
    return {name: Trainer(load_recipe("dbvae", [f"data.path={faces / 'train'}", f"debias.enabled={enabled}",
                                                *DBVAE]), out / name, quiet=True).fit().weights
            for name, enabled in (("debiased", "true"), ("plain", "false"))}


def test_both_classes_are_classified_well_above_chance(faces, runs, tmp_path):
    """Held-out faces and non-faces are each mostly right, debiased and plain (a classifier calling
    everything a face scores 0 on the non-faces); the darkened held-out faces, the training set's
    rare kind, are found by the debiased classifier at least as often as by the plain one.
    Measured: debiased face 1.00, non-face 0.95, dark faces 1.00; plain 1.00, 0.95, 0.85."""
    accuracy, rare = {}, {}
    for name, w in runs.items():
        summary = classify(w, faces / "test", tmp_path / f"{name}.csv", device="cpu", engine="torch")
        accuracy[name] = {c: right / total for c, (right, total) in summary.by_folder.items()}
        res = runner.invoke(app, ["classify", str(faces / "rare"), "-w", str(w), "-o", str(tmp_path / "r.csv"), "-q",
                                  "--engine", "torch"])
        assert res.exit_code == 0, res.output
        rare[name] = np.mean([r["predicted"] == "face" for r in rows(tmp_path / "r.csv")])
    for name, acc in accuracy.items():
        assert set(acc) == {"face", "nonface"} and min(acc.values()) >= 0.8, (name, accuracy)
    assert rare["debiased"] >= rare["plain"], rare


def test_the_rare_kind_is_drawn_more(faces, runs, tmp_path):
    log = [json.loads(line) for line in (runs["debiased"].parent / "log.jsonl").read_text().splitlines()]
    assert log[-1]["p_max_min"] > 1.5 and log[-1]["p_entropy"] < 1.0  # the sampling moved away from uniform
    plain = [json.loads(line) for line in (runs["plain"].parent / "log.jsonl").read_text().splitlines()]
    assert plain[-1]["p_max_min"] == 1.0
    meta = json.loads(read_weights(runs["debiased"]).meta["info"])
    assert meta["positive"] == "face" and meta["classes"] == ["face", "nonface"]
    assert read_weights(runs["debiased"]).arch["AE"]["kwargs"]["z_dim"] == 100  # the lab's latent_dim

    # the rare kind (darkened faces) gets a higher mean sampling probability than the common kind
    out = tmp_path / "weights.csv"
    res = runner.invoke(app, ["debias", str(faces / "train" / "face"), "-w", str(runs["debiased"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    table = rows(out)
    dark = [float(r["probability"]) for r in table if r["file"].startswith("dark_")]
    common = [float(r["probability"]) for r in table if not r["file"].startswith("dark_")]
    assert np.mean(dark) > np.mean(common), (np.mean(dark), np.mean(common))
    assert Image.open(out.with_suffix(".png")).width > 0

    # a bad file is named and skipped; the rest is weighed; exit 3
    bad = tmp_path / "bad"
    copy_first(faces / "rare", bad, 3)
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    res = runner.invoke(app, ["debias", str(bad), "-w", str(runs["debiased"]), "-o", str(tmp_path / "b.csv")])
    assert res.exit_code == 3 and "broken.png" in res.output and "3 images (1 failed)" in res.output, res.output
    assert len(rows(tmp_path / "b.csv")) == 3


def test_classify_counts_per_class_folder_and_either_engine_agrees(faces, runs, tmp_path):
    res = runner.invoke(app, ["classify", str(faces / "test"), "-w", str(runs["debiased"]), "-o",
                              str(tmp_path / "all.csv")])
    assert res.exit_code == 0 and "face: accuracy" in res.output and "nonface: accuracy" in res.output

    # the same probabilities from either engine (translate/inference/engines.py), in fp32
    by_engine = {}
    for engine in ("torch", "openvino"):
        csv_path = tmp_path / f"{engine}.csv"
        res = runner.invoke(app, ["classify", str(faces / "rare"), "-w", str(runs["debiased"]), "-o", str(csv_path),
                                  "--engine", engine, "--precision", "fp32", "-q"])
        assert res.exit_code == 0, res.output
        by_engine[engine] = {r["file"]: float(r["probability"]) for r in rows(csv_path)}
    assert by_engine["torch"].keys() == by_engine["openvino"].keys()
    assert all(abs(p - by_engine["openvino"][f]) < 1e-4 for f, p in by_engine["torch"].items())


def test_dbvae_trains_with_two_processes(faces, tmp_path):
    """Under DDP every rank draws the epoch from rank 0's sampling weights."""
    log = train_two_processes("dbvae", faces / "train", tmp_path / "run",
                              [*DBVAE, "model.z_dim=16", "train.epochs=1", "train.batch_size=16"], steps=5)
    assert log[-1]["p_max_min"] > 1.0
