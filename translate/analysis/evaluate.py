"""`translate eval`: how close a translator's outputs are to the targets of paired test data.

Each test pair is read as training reads it at test time (resized to the recipe's ``crop_size``, no
crop or flip, the recipe's channels and direction), the input is translated as `translate run`
translates it, and the output, rounded to 8 bits as a written image is, is compared with the target
in [0, 1]: PSNR and SSIM (torchmetrics: a Gaussian window of 11 pixels, sigma 1.5, as the SSIM
paper) and the mean absolute error (L1). LPIPS (Zhang et al. 2018, the AlexNet variant) when the user
passes the AlexNet weights file (torchvision's ``alexnet-owt-7be5be79.pth``; nothing is downloaded):
torchmetrics' LPIPS network with the linear layers it ships, that backbone loaded from the file.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from translate.analysis.analyze import write_csv
from translate.core.checkpoints import read_weights
from translate.core.devices import pick_device, resolve_precision
from translate.core.errors import PartialFailures, TranslateError
from translate.core.files import NOT_A_FILE
from translate.core.images import to_signed
from translate.core.losses import load_lpips
from translate.core.progress import Progress
from translate.core.recipes import DataConfig
from translate.inference.tiling import launch_fitting
from translate.inference.translator import load_translator

METRICS = ("psnr", "ssim", "l1")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "l1": False, "lpips": False, "fid": False, "kid": False}


@dataclass
class EvalSummary(PartialFailures):
    csv: Path
    split: str
    rows: list[tuple[str, dict[str, float]]]  # (file, metrics), in file order
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def metrics(self) -> list[str]:
        return list(self.rows[0][1]) if self.rows else list(METRICS)

    def mean(self, metric: str) -> float:
        return statistics.fmean(metrics[metric] for _, metrics in self.rows)

    def median(self, metric: str) -> float:
        return statistics.median(metrics[metric] for _, metrics in self.rows)

    def worst(self, n: int = 5, metric: str = "psnr") -> list[tuple[str, dict[str, float]]]:
        return sorted(self.rows, key=lambda r: r[1][metric] if HIGHER_IS_BETTER[metric] else -r[1][metric])[:n]


def pair_metrics(output: Tensor, target: Tensor) -> dict[str, float]:
    """PSNR, SSIM and L1 of two uint8 (C, H, W) images, on [0, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    x, y = output.float()[None] / 255, target.float()[None] / 255
    ssim = structural_similarity_index_measure(x, y, data_range=1.0)
    assert isinstance(ssim, Tensor)  # a tuple only with return_full_image/return_contrast_sensitivity
    return {"psnr": float(peak_signal_noise_ratio(x, y, data_range=1.0)), "ssim": float(ssim),
            "l1": float((x - y).abs().mean())}


def test_config(wf: Any, data: Path, direction: str) -> Any:
    """The data section evaluation reads with: the weights' recipe at test time (crop_size, no
    augmentation); ``direction`` BtoA (CycleGAN's other generator) swaps the pairs."""
    saved = wf.recipe.get("data", {})
    size = int(saved.get("crop_size", 256))
    trained = saved.get("direction", "AtoB")
    flipped = {"AtoB": "BtoA", "BtoA": "AtoB"}[trained] if direction == "BtoA" else trained
    return DataConfig(path=str(data), layout="auto", load_size=size, crop_size=size, preprocess="resize_and_crop",
                      direction=flipped, flip=False, channels=int(saved.get("channels", 3)), num_workers=0)


def evaluate(weights: str | Path, data: str | Path, out_csv: str | Path, *, split: str = "test",
             direction: str = "AtoB", device: str = "auto", precision: str = "auto", progress: Progress | None = None,
             translator: Any = None, lpips: str | Path | None = None, engine: str = "auto") -> EvalSummary:
    """Metrics of every pair in ``data``'s ``split`` (aligned ``test/`` or ``A/test`` + ``B/test``), one CSV row
    per pair. ``translator``: an already prepared (Translator, multiple), e.g. the net being trained.
    ``engine``: engines.py."""
    from translate.data import open_dataset

    data = Path(data)
    if not data.is_dir():
        raise TranslateError(f"data folder not found: {data}")
    wf = read_weights(weights)
    if translator is None:
        dev = pick_device(device)
        prec = resolve_precision(precision, dev)
        tr, multiple, _ = load_translator(Path(weights), direction, dev, prec, engine=engine)
    else:
        tr, multiple = translator
    dataset = open_dataset(test_config(wf, data, direction), "paired", split=split)
    lpips_net = load_lpips(lpips, tr.device) if lpips else None
    progress = (progress or Progress.silent()).start(total=len(dataset))
    rows, failed = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if "error" in item and NOT_A_FILE in item["error"]:  # a FIFO named x.png: skipped unopened
            progress.say(f"skipped {item['error']}")
            progress.advance()
            continue
        if "error" in item:
            failed.append((item["path"], item["error"]))
            progress.fail(item["path"], item["error"])
            continue
        a, b = item["A"], item["B"]
        y = launch_fitting(tr, [a.expand(3, -1, -1) if a.shape[0] == 1 else a], multiple, note=progress.say).result()[0]
        y = y[:1] if b.shape[0] == 1 else y
        name = str(Path(item["path"]).relative_to(data)) if Path(item["path"]).is_relative_to(data) else item["path"]
        metrics = pair_metrics(y, b)
        if lpips_net is not None:
            pair = [to_signed((t.expand(3, -1, -1) if t.shape[0] == 1 else t).to(tr.device))[None]
                    for t in (y, b)]
            with torch.no_grad():
                metrics["lpips"] = float(lpips_net(*pair).mean())
        rows.append((name, metrics))
        progress.advance()
    if not rows:
        raise TranslateError(f"no readable pairs in {data} ({split})")
    names = [*METRICS, *(["lpips"] if lpips_net is not None else [])]
    path = write_csv(out_csv, ["file", *names], [[f, *(f"{metrics[k]:.5f}" for k in names)] for f, metrics in rows])
    return EvalSummary(path, split, rows, failed)
