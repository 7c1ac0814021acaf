"""Outlier detection (`translate score`) on real images: MNIST digits against other sources (the
DB-VAE's `translate debias` and `translate classify`: tests/test_dbvae.py)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_first, shared
from PIL import Image
from typer.testing import CliRunner

from translate.cli.commands import app
from translate.core.checkpoints import read_weights, save_weights
from translate.core.recipes import load_recipe
from translate.core.registry import create_net
from translate.training.train import Trainer

runner = CliRunner()
QUIET = ["data.num_workers=0", "train.sample_every=0", "train.log_every=1", "train.save_every=0", "train.device=cpu"]


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- translate score ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digit_vae(tmp_path_factory) -> Path:
    """A VAE trained briefly (160 steps) on 24 training images of each MNIST digit."""
    root = tmp_path_factory.mktemp("digits")
    for d in range(10):
        copy_first(shared("mnist", "train", str(d)), root / "train" / str(d), 24)
    over = [f"data.path={root}", "train.max_steps=160", "train.epochs=100", "train.batch_size=32", *QUIET]
    return Trainer(load_recipe("vae", over), root / "run", quiet=True).fit().weights


@pytest.fixture
def mix(tmp_path) -> tuple[Path, Path]:
    """Held-out digits (inliers) among fashion items, LFW faces and photos (outliers), and a labels CSV."""
    root = tmp_path / "mix"
    for d in range(10):
        copy_first(shared("mnist", "test", str(d)), root / "digits" / str(d), 3)
    for c in ("0", "7"):
        for p in copy_first(shared("fashion_mnist", "test", c), root / "other", 4):
            p.rename(p.with_name(f"fashion{c}_{p.name}"))
    for p in copy_first(shared("lfw", "face"), root / "other", 4):
        p.rename(p.with_name(f"lfw_{p.name}"))
    copy_first(shared("photos"), root / "other" / "photos", 4)
    labels = tmp_path / "labels.csv"
    with open(labels, "w") as f:
        f.write("file,is_outlier\n")
        for p in sorted(root.rglob("*.*")):
            f.write(f"{p.relative_to(root)},{int('digits' not in p.relative_to(root).parts)}\n")
    return root, labels


def test_score_ranks_other_sources_above_held_out_digits(digit_vae, mix, tmp_path):
    root, labels = mix
    out = tmp_path / "scores.csv"
    res = runner.invoke(app, ["score", str(root), "-w", str(digit_vae), "-o", str(out), "--labels", str(labels),
                              "--samples", "4", "--top", "8", "--copy-to", str(tmp_path / "outliers")])
    assert res.exit_code == 0, res.output
    auc = float(res.output.split("ROC-AUC ")[1].split(",")[0])
    assert auc >= 0.9, res.output
    table = rows(out)
    assert len(table) == 30 + 12 + 4 and list(table[0]) == ["file", "score", "recon", "kl", "outlier"]
    scores = [float(r["score"]) for r in table]
    assert scores == sorted(scores, reverse=True)  # worst first
    assert all(float(r["kl"]) > 0 for r in table)  # a VAE: the KL column is filled
    marked = [r["file"] for r in table if r["outlier"] == "1"]
    assert marked == [r["file"] for r in table[:8]]
    copied = sorted(str(p.relative_to(tmp_path / "outliers")) for p in (tmp_path / "outliers").rglob("*.*"))
    assert copied == sorted(marked)  # the tree mirrored
    with Image.open(out.with_suffix(".png")) as sheet:  # the worst images beside their reconstructions
        assert sheet.width > 4 * 96 and sheet.height > 96

    # the same seed gives the same estimates; K samples only tighten them
    again = tmp_path / "again.csv"
    assert runner.invoke(app, ["score", str(root), "-w", str(digit_vae), "-o", str(again), "--samples", "4",
                               "-q"]).exit_code == 0
    assert [(r["file"], r["score"]) for r in rows(again)] == [(r["file"], r["score"]) for r in table]


def test_score_is_the_same_with_either_engine(digit_vae, mix, tmp_path):
    """`translate score` by OpenVINO (its encoder and decoder compiled; translate/inference/engines.py) gives
    torch's scores in fp32: the same importance samples, the sums to within 1e-4 of their size."""
    root, _ = mix
    found = {}
    for engine in ("torch", "openvino"):
        out = tmp_path / f"{engine}.csv"
        res = runner.invoke(app, ["score", str(root), "-w", str(digit_vae), "-o", str(out), "--samples", "4",
                                  "--engine", engine, "--precision", "fp32", "-q"])
        assert res.exit_code == 0, res.output
        found[engine] = {r["file"]: (float(r["score"]), float(r["kl"])) for r in rows(out)}
    assert found["torch"].keys() == found["openvino"].keys()
    for f, (score, kl) in found["torch"].items():
        assert found["openvino"][f] == pytest.approx((score, kl), rel=1e-4, abs=1e-3), f


def test_score_is_burdas_estimate_one_sample_is_the_elbo_and_more_samples_tighten_it(digit_vae, single_thread):
    """`scores` on the trained VAE and held-out digits: K = 1 is a one-sample negative ELBO (its mean
    over draws matches E_q[-log p(x|z)] + KL computed here with the analytic KL), and K samples are
    the log-mean-exp of the K one-sample estimates on the same draws (Burda et al.), so the K = 64
    estimate lies below their mean (Jensen). recon + kl is not the ELBO (recon is at the mean code,
    below E_q's error: 106.5 against 115.2 nats here), so it bounds nothing."""
    from translate.analysis.analyze import recon_kind, scores
    from translate.core.images import model_input, read_rgb, to_signed

    wf = read_weights(digit_vae)
    net = wf.build("AE", torch.device("cpu")).float().eval()
    assert recon_kind(wf) == "l2" and hasattr(net, "encode_dist")
    files = [p for d in range(10) for p in sorted(shared("mnist", "test", str(d)).iterdir())[:3]]
    x = to_signed(torch.stack([model_input(read_rgb(f), net.channels, net.resolution) for f in files]))
    K = 64
    many = scores(net, x, "l2", K, torch.Generator().manual_seed(0))["score"]
    g = torch.Generator().manual_seed(0)  # the same draws, one at a time
    ones = torch.stack([scores(net, x, "l2", 1, g)["score"] for _ in range(K)])  # (K, N)
    assert ones.std(0).min() > 0.1  # the draws differ
    iwae = -(torch.logsumexp(-ones, 0) - math.log(K))
    assert torch.allclose(many, iwae, rtol=1e-5, atol=1e-3)
    assert (many <= ones.mean(0) + 1e-3).all()
    assert many.mean() < ones.mean(0).mean() - 2  # measured: 103.9 against 115.5 nats

    with torch.no_grad():  # the negative ELBO, independently: Monte Carlo error, analytic KL
        mu, logvar = net.encode_dist(x)
        std, gen = torch.exp(0.5 * logvar), torch.Generator().manual_seed(1)
        err = torch.stack([(net.decode(mu + std * torch.randn(mu.shape, generator=gen)) - x).square().flatten(1).sum(1)
                           for _ in range(K)]).mean(0)
        neg_elbo = err + 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)
    assert ones.mean() == pytest.approx(neg_elbo.mean().item(), rel=0.02)  # measured: 115.2 and 115.5


def test_score_more_samples_lower_the_estimate_and_quantile_marks_that_share(digit_vae, mix, tmp_path, single_thread):
    """`translate score`: the mean estimate with --samples 64 is below that with --samples 1; the
    per-image columns recon and kl do not depend on K; --quantile 0.9 marks the images above the 0.9
    quantile of the scores (about 10%), the worst rows of the CSV, and copies exactly those."""
    root, _ = mix
    found = {}
    for k in (1, 64):
        out = tmp_path / f"k{k}.csv"
        res = runner.invoke(app, ["score", str(root), "-w", str(digit_vae), "-o", str(out), "--samples", str(k),
                                  "--quantile", "0.9", "--copy-to", str(tmp_path / f"out{k}"), "--engine", "torch",
                                  "--precision", "fp32", "-q"])
        assert res.exit_code == 0, res.output
        found[k] = rows(out)
    for k, table in found.items():
        n = len(table)
        assert n == 46
        scores_ = [float(r["score"]) for r in table]
        marked = [r for r in table if r["outlier"] == "1"]
        assert abs(len(marked) - 0.1 * n) <= 1, (k, len(marked))
        assert marked == table[:len(marked)]  # the worst first
        cut = float(np.quantile(scores_, 0.9))
        assert all(float(r["score"]) > cut for r in marked) and all(s <= cut for s in scores_[len(marked):])
        copied = sorted(str(p.relative_to(tmp_path / f"out{k}")) for p in (tmp_path / f"out{k}").rglob("*.*"))
        assert copied == sorted(r["file"] for r in marked)
    by_file = {k: {r["file"]: r for r in table} for k, table in found.items()}
    assert by_file[1].keys() == by_file[64].keys()
    for f, r in by_file[1].items():
        assert (r["recon"], r["kl"]) == (by_file[64][f]["recon"], by_file[64][f]["kl"]), f
    mean = {k: np.mean([float(r["score"]) for r in table]) for k, table in found.items()}
    assert mean[64] < mean[1] - 2, mean


def test_score_names_and_skips_bad_files(digit_vae, tmp_path):
    root = tmp_path / "in"
    copy_first(shared("mnist", "test", "3"), root, 3)
    (root / "broken.png").write_bytes((root / sorted(p.name for p in root.iterdir())[0]).read_bytes()[:60])
    (root / "notes.jpg").write_text("not an image")
    res = runner.invoke(app, ["score", str(root), "-w", str(digit_vae), "-o", str(tmp_path / "s.csv")])
    assert res.exit_code == 3, res.output
    assert "broken.png" in res.output and "notes.jpg" in res.output and "scored 3 images (2 failed)" in res.output
    assert len(rows(tmp_path / "s.csv")) == 3


def test_score_with_an_autoencoder_and_the_wrong_model(weights, tmp_path):
    ae = save_weights(tmp_path / "ae.safetensors", {"AE": create_net("conv_ae", channels=1, resolution=16, z_dim=4,
                                                                      nf=4)},
                      {"AE": {"net": "conv_ae", "kwargs": {"channels": 1, "resolution": 16, "z_dim": 4, "nf": 4}}},
                      extra={"method": "ae"})
    root = tmp_path / "in"
    copy_first(shared("photos"), root, 2)  # any size and mode: RGB photos into a 16x16 grayscale model
    res = runner.invoke(app, ["score", str(root), "-w", str(ae), "-o", str(tmp_path / "s.csv"), "-q"])
    assert res.exit_code == 0, res.output
    table = rows(tmp_path / "s.csv")
    assert all(r["score"] == r["recon"] and float(r["kl"]) == 0 for r in table)
    res = runner.invoke(app, ["score", str(root), "-w", str(weights), "-o", str(tmp_path / "t.csv")])
    assert res.exit_code == 1 and "works with ae, vae and beta-vae weights" in res.output
    assert "translator" in res.output and "Traceback" not in res.output
    bad = tmp_path / "labels.csv"
    bad.write_text("name,label\nx.png,1\n")
    res = runner.invoke(app, ["score", str(root), "-w", str(ae), "-o", str(tmp_path / "u.csv"), "--labels", str(bad)])
    assert res.exit_code == 1 and "needs the columns file,is_outlier" in res.output


# --- the DB-VAE (its training, sampling and commands: tests/test_dbvae.py) ---------------------------------

def test_classify_and_debias_need_dbvae_weights(digit_vae, tmp_path):
    root = tmp_path / "in"
    copy_first(shared("mnist", "test", "3"), root, 2)
    for command in ("classify", "debias"):
        res = runner.invoke(app, [command, str(root), "-w", str(digit_vae), "-o", str(tmp_path / "x.csv")])
        assert res.exit_code == 1 and "works with dbvae weights" in res.output and "holds a vae" in res.output
