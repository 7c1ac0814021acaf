"""Folders read through the VAE family: outlier scores (`translate score`), DB-VAE sampling weights
(`translate debias`) and class probabilities (`translate classify`).

Each image is read as training reads it (RGB, ITU-R 601 luma for 1-channel models, bicubic to the
model's resolution whatever its size or mode), in batches; a file that cannot be read is named,
counted and skipped (exit 3), and every file written goes through a temp name and a rename.

Scores, in the units the model was trained in (per image, summed over pixels; ``l2``: Gaussian
with variance 1/2, ``l1``: Laplace with scale 1, constants dropped, as methods/ae.py):

- ``recon``: the error of the reconstruction from the mean code;
- ``kl``: KL(q(z|x) || N(0, I)), VAEs only;
- ``score``: the negative log-likelihood -log p(x) estimated with K importance samples from q(z|x),
  -log (1/K sum_k p(x|z_k) p(z_k) / q(z_k|x)) (Burda et al.'s bound; K = 1 is a one-sample negative
  ELBO); for an autoencoder, ``recon``.
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from translate.core.checkpoints import WeightsFile, read_weights, with_article
from translate.core.debias import resampling
from translate.core.devices import DTYPES, fitting, pick_device, resolve_precision
from translate.core.errors import PartialFailures, TranslateError
from translate.core.files import atomic_path
from translate.core.images import Reading, model_batches, model_input, read_folder, read_rgb, to_signed, to_u8
from translate.core.losses import kl_per_image, recon_error
from translate.core.progress import Progress
from translate.inference.engines import OpenVinoMethods, net_id, pick_engine
from translate.inference.generate import encode_folder

if TYPE_CHECKING:
    from translate.nets import ExportedNet

def open_model(weights: str | Path, command: str, need: Callable[[nn.Module], bool], what: str,
               device: torch.device) -> tuple[WeightsFile, ExportedNet]:
    """The exported autoencoder ``AE`` of a weights file, if it can do what ``command`` needs."""
    wf = read_weights(weights)
    kind = wf.kind
    net = wf.build("AE", device) if kind == "autoencoder" else None
    if net is None or not need(net):
        method = wf.meta.get("method") or "imported"
        raise TranslateError(f"`translate {command}` works with {what}; {Path(weights).name} holds "
                             f"{with_article(method)} {kind}")
    return wf, cast("ExportedNet", net)


def _prepared(net: ExportedNet, device: torch.device, precision: str, engine: str, encode: str, decode: bool = True
              ) -> tuple[Any, torch.dtype]:
    """The model as ``engine`` runs it (engines.pick_engine), and the dtype its inputs take: torch's
    in ``precision``; or OpenVINO's, its ``encode`` method (and ``decode``, fed ``encode``'s first
    output) compiled, fed fp32 and computing in ``precision``."""
    if pick_engine(engine, device, precision, net=net) == "torch":
        return net.to(DTYPES[precision]), DTYPES[precision]
    x = torch.zeros(1, net.channels, net.resolution, net.resolution)
    examples: dict[str, tuple[Tensor, ...]] = {encode: (x,)}
    if decode:
        with torch.no_grad():
            code = getattr(net, encode)(x)
        examples["decode"] = (code[0] if isinstance(code, tuple) else code,)
    try:
        return OpenVinoMethods(net, examples, net_id(net), precision), torch.float32
    except Exception as e:  # (OpenVINO's converter raises many kinds) picked by auto: torch runs it
        if engine != "auto":
            raise TranslateError(f"OpenVINO cannot compile this model ({type(e).__name__}); use --engine torch") \
                from None
        return net.to(DTYPES[precision]), DTYPES[precision]


def recon_kind(wf: WeightsFile) -> str:
    return wf.recipe.get("loss", {}).get("recon", "l2")


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# --- the math ---------------------------------------------------------------------------------------

@torch.no_grad()
def scores(net: ExportedNet | OpenVinoMethods, x: Tensor, kind: str, samples: int,
           generator: torch.Generator) -> dict[str, Tensor]:
    """Per image: ``score`` (estimated -log p(x), or the AE's error), ``recon`` and ``kl``."""
    if not hasattr(net, "encode_dist"):
        recon = recon_error(net.decode(net.encode(x)), x, kind)
        return {"score": recon, "recon": recon, "kl": torch.zeros_like(recon)}
    mu, logvar = (t.float() for t in net.encode_dist(x))
    dtype = x.dtype  # the net's (bf16 where native); the sums stay in fp32
    recon = recon_error(net.decode(mu.to(dtype)), x, kind)
    std = torch.exp(0.5 * logvar)
    log_w = []
    for _ in range(samples):
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        z = mu + std * eps
        log_px = -recon_error(net.decode(z.to(dtype)), x, kind)
        log_pz = -0.5 * z.square().sum(1)
        log_qz = -0.5 * (eps.square() + logvar).sum(1)  # the 2 pi constants cancel with log p(z)'s
        log_w.append(log_px + log_pz - log_qz)
    nll = -(torch.logsumexp(torch.stack(log_w), 0) - math.log(samples))
    return {"score": nll, "recon": recon, "kl": kl_per_image(mu, logvar)}


def rank_metrics(scores_: list[float], labels: list[int]) -> tuple[float, float]:
    """(ROC-AUC, average precision) of scores for binary labels (1: outlier), with torchmetrics."""
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    s, y = torch.tensor(scores_, dtype=torch.float64), torch.tensor(labels)
    # torchmetrics takes values outside [0, 1] for logits and squashes them with a sigmoid, which ties
    # every large score at 1; both metrics depend on the order alone, which scaling into [0, 1] keeps
    s = (s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)
    return float(binary_auroc(s, y)), float(binary_average_precision(s, y))


# --- translate score --------------------------------------------------------------------------------

@dataclass
class ScoreSummary(PartialFailures):
    csv: Path
    scored: int
    outliers: list[Path]
    failed: list[tuple[str, str]]
    sheet: Path | None = None
    auc: tuple[float, float, int] | None = None  # ROC-AUC, average precision, labelled images
    unlabelled: int = 0


def score(weights: str | Path, in_dir: str | Path, out_csv: str | Path, *, samples: int = 16, top: int | None = None,
          quantile: float | None = None, copy_to: str | Path | None = None, sheet: str | Path | None = None,
          labels: str | Path | None = None, batch_size: int = 64, device: str = "auto", precision: str = "auto",
          engine: str = "auto", seed: int = 0, progress: Progress | None = None) -> ScoreSummary:
    """Score every image under ``in_dir``; the CSV lists them worst first. Outliers: the ``top`` N, or
    those above the ``quantile`` of the scores (0.99 when neither is given). ``engine``: engines.py."""
    if top is not None and quantile is not None:
        raise TranslateError("give --top or --quantile, not both")
    if quantile is not None and not 0 < quantile < 1:
        raise TranslateError(f"--quantile must be between 0 and 1, not {quantile}")
    dev = pick_device(device)
    wf, net = open_model(weights, "score", lambda n: hasattr(n, "encode"), "ae, vae and beta-vae weights", dev)
    kind = recon_kind(wf)
    reading = read_folder(in_dir)
    truth = _labels(labels, reading) if labels else None
    prec = resolve_precision(precision, dev)
    net, dtype = _prepared(net, dev, prec, engine, "encode_dist" if hasattr(net, "encode_dist") else "encode")
    gen = torch.Generator().manual_seed(seed)
    progress = (progress or Progress.silent()).start(total=len(reading.files))
    found: dict[int, dict[str, float]] = {}
    for idx, x in model_batches(reading, net.channels, net.resolution, batch_size, dev, progress):
        s = fitting(lambda x: scores(net, x, kind, samples, gen), x.to(dtype), progress.say)
        for j, i in enumerate(idx):
            found[i] = {k: float(v[j]) for k, v in s.items()}
    order = sorted(found, key=lambda i: -found[i]["score"])
    marked = _outliers([found[i]["score"] for i in order], top, quantile, order)
    rel = {i: reading.files[i].relative_to(reading.root) for i in order}
    rows = [[str(rel[i]), f"{found[i]['score']:.4f}", f"{found[i]['recon']:.4f}", f"{found[i]['kl']:.4f}",
             int(i in marked)] for i in order]
    summary = ScoreSummary(write_csv(out_csv, ["file", "score", "recon", "kl", "outlier"], rows), len(order),
                           [reading.files[i] for i in order if i in marked], reading.failed)
    if copy_to is not None:
        for path in summary.outliers:
            dst = Path(copy_to) / path.relative_to(reading.root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dst) as tmp:
                shutil.copyfile(path, tmp)
    worst = order[:16]
    if worst:
        images = torch.stack([model_input(read_rgb(reading.files[i]), net.channels, net.resolution) for i in worst])
        x = to_signed(images.to(dev)).to(dtype)
        with torch.no_grad():
            code = net.encode_dist(x)[0] if hasattr(net, "encode_dist") else net.encode(x)
            recon = net.decode(code).float()
        captions = [f"{rel[i]}  {found[i]['score']:.1f}" for i in worst]
        summary.sheet = contact_sheet(sheet or Path(out_csv).with_suffix(".png"), images, to_u8(recon).cpu(), captions)
    if truth is not None:
        known = [i for i in order if str(rel[i]) in truth]
        summary.unlabelled = len(order) - len(known)
        if len({truth[str(rel[i])] for i in known}) < 2:
            raise TranslateError(f"--labels {labels}: the labelled images need both outliers and inliers")
        auc, ap = rank_metrics([found[i]["score"] for i in known], [truth[str(rel[i])] for i in known])
        summary.auc = (auc, ap, len(known))
    return summary


def _outliers(scores: list[float], top: int | None, quantile: float | None, order: list[int]) -> set[int]:
    """The items of ``order`` (sorted by ``scores``, highest first) marked as outliers: the ``top`` N,
    or those above the ``quantile`` of the scores (0.99 when neither is given)."""
    if top is not None:
        return set(order[:top])
    q = 0.99 if quantile is None else quantile
    cut = torch.quantile(torch.tensor(scores, dtype=torch.float64), q).item() if order else math.inf
    return {i for i, s in zip(order, scores, strict=True) if s > cut}


def _labels(path: str | Path, reading: Reading) -> dict[str, int]:
    """file (relative to the input folder) -> 0/1 from a CSV with columns file,is_outlier."""
    path = Path(path)
    if not path.is_file():
        raise TranslateError(f"--labels file not found: {path}")
    out = {}
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        if not rows.fieldnames or not {"file", "is_outlier"} <= set(rows.fieldnames):
            raise TranslateError(f"--labels {path}: needs the columns file,is_outlier (found: "
                                 f"{','.join(rows.fieldnames or [])})")
        for n, row in enumerate(rows, 2):
            value = str(row["is_outlier"]).strip().lower()
            if value not in ("0", "1", "true", "false"):
                raise TranslateError(f"--labels {path}:{n}: is_outlier must be 0/1 or true/false, not {value!r}")
            name = Path(row["file"])
            if name.is_absolute() and name.is_relative_to(reading.root.resolve()):
                name = name.relative_to(reading.root.resolve())
            out[str(name)] = int(value in ("1", "true"))
    return out


def contact_sheet(path: str | Path, left: Tensor, right: Tensor | None, captions: list[str], cols: int = 4,
                  cell: int = 96) -> Path:
    """A PNG of images (uint8 (N, C, h, w)), each beside its partner in ``right`` if given, a caption under
    each; small images are enlarged (nearest) to ``cell`` pixels so they can be seen."""
    from PIL import Image, ImageDraw

    def pil(t: Tensor) -> Image.Image:
        arr = t.expand(3, -1, -1).permute(1, 2, 0).contiguous().numpy()
        img = Image.fromarray(arr)
        scale = max(1, cell // max(img.size))
        return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img

    tiles = []
    for k, caption in enumerate(captions):
        parts = [pil(left[k])] + ([pil(right[k])] if right is not None else [])
        w, h = sum(p.width for p in parts) + 4 * (len(parts) - 1), max(p.height for p in parts)
        tile = Image.new("RGB", (max(w, 8 * len(caption) // 2), h + 14), "white")
        x = 0
        for p in parts:
            tile.paste(p, (x, 0))
            x += p.width + 4
        ImageDraw.Draw(tile).text((1, h + 1), caption, fill="black")
        tiles.append(tile)
    cols = min(cols, len(tiles))
    tw, th = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * (tw + 6), rows * (th + 6)), "white")
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % cols) * (tw + 6), (k // cols) * (th + 6)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


# --- translate classify and translate debias (DB-VAE weights) --------------------------------------

def _classifier(weights: str | Path, command: str, device: torch.device) -> tuple[WeightsFile, ExportedNet]:
    return open_model(weights, command, lambda n: hasattr(n, "classify"), "dbvae weights (a classifier)", device)


@dataclass
class ClassifySummary(PartialFailures):
    csv: Path
    classified: int
    positive: str
    failed: list[tuple[str, str]]
    by_folder: dict[str, tuple[int, int]] = field(default_factory=dict)  # class folder -> (right, images)


def classify(weights: str | Path, in_dir: str | Path, out_csv: str | Path, *, batch_size: int = 64,
             device: str = "auto", precision: str = "auto", engine: str = "auto",
             progress: Progress | None = None) -> ClassifySummary:
    """The positive class's probability for every image under ``in_dir``. Where the first folder of a
    path names one of the model's classes, that is its truth, and accuracy is counted per folder.
    ``engine``: engines.py."""
    dev = pick_device(device)
    wf, net = _classifier(weights, "classify", dev)
    net, dtype = _prepared(net, dev, resolve_precision(precision, dev), engine, "classify", decode=False)
    positive, classes = wf.info.get("positive", "positive"), list(wf.info.get("classes", []))
    reading = read_folder(in_dir)
    progress = (progress or Progress.silent()).start(total=len(reading.files))
    probs: dict[int, float] = {}
    for idx, x in model_batches(reading, net.channels, net.resolution, batch_size, dev, progress):
        with torch.no_grad():
            p = torch.sigmoid(fitting(net.classify, x.to(dtype), progress.say).float()).cpu()
        probs.update({i: float(v) for i, v in zip(idx, p, strict=True)})
    rows: list[list[Any]] = []
    by_folder: dict[str, tuple[int, int]] = {}
    for i in sorted(probs):
        rel = reading.files[i].relative_to(reading.root)
        rows.append([str(rel), f"{probs[i]:.5f}", positive if probs[i] >= 0.5 else f"not {positive}"])
        group = rel.parts[0] if len(rel.parts) > 1 else ""
        if group in classes:
            right, total = by_folder.get(group, (0, 0))
            by_folder[group] = (right + int((probs[i] >= 0.5) == (group == positive)), total + 1)
    path = write_csv(out_csv, ["file", "probability", "predicted"], rows)
    return ClassifySummary(path, len(rows), positive, reading.failed, by_folder)


@dataclass
class DebiasSummary(PartialFailures):
    csv: Path
    sheet: Path
    images: int
    max_min: float
    entropy: float
    failed: list[tuple[str, str]]


def debias(weights: str | Path, in_dir: str | Path, out_csv: str | Path, *, bins: int | None = None,
           alpha: float | None = None, sheet: str | Path | None = None, batch_size: int = 64,
           device: str = "auto", progress: Progress | None = None) -> DebiasSummary:
    """The DB-VAE's sampling probability and latent density of every image under ``in_dir`` (as
    training computes them for its positives; ``bins``/``alpha`` default to the model's recipe), and
    a PNG of the most (top row) and least often drawn images."""
    dev = pick_device(device)
    wf, net = _classifier(weights, "debias", dev)
    section = wf.recipe.get("debias", {})
    bins = bins if bins is not None else int(section.get("bins", 10))
    alpha = alpha if alpha is not None else float(section.get("alpha", 0.001))
    if bins < 2 or alpha < 0:
        raise TranslateError(f"--bins must be >= 2 and --alpha >= 0 (got {bins}, {alpha})")
    reading = read_folder(in_dir)
    idx_all, mus = encode_folder(net, reading, batch_size, dev, progress)
    r = resampling(mus, bins, alpha)
    order = sorted(range(len(idx_all)), key=lambda k: -float(r.p[k]))
    rel = [reading.files[i].relative_to(reading.root) for i in idx_all]
    rows = [[str(rel[k]), f"{float(r.p[k]):.6g}", f"{float(r.density[k]):.6g}"] for k in order]
    path = write_csv(out_csv, ["file", "probability", "density"], rows)
    show = order[:8] + [k for k in order[-8:] if k not in order[:8]]
    images = torch.stack([model_input(read_rgb(reading.files[idx_all[k]]), net.channels, net.resolution) for k in show])
    captions = [f"{'most' if j < min(8, len(order)) else 'least'} p={float(r.p[k]) * len(order):.2f}/N"
                for j, k in enumerate(show)]
    png = contact_sheet(sheet or Path(out_csv).with_suffix(".png"), images, None, captions, cols=8)
    return DebiasSummary(path, png, len(order), r.max_min, r.entropy, reading.failed)
