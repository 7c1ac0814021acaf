"""train.eval_every: scores the weights just saved and keeps the best as best.safetensors.

Paired methods: PSNR/SSIM/L1 on the held-out pairs (translate/analysis/evaluate.py, a CSV in eval/),
best by train.eval_metric. Unpaired methods and generators: FID/KID of their outputs
(translate/analysis/fid.py), which needs train.inception; best by the lowest FID.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from translate.analysis.evaluate import HIGHER_IS_BETTER, METRICS, evaluate
from translate.analysis.fid import FID_WEIGHTS, TrainingFID
from translate.core.errors import TranslateError
from translate.core.files import atomic_path
from translate.core.progress import Progress
from translate.core.recipes import Recipe
from translate.methods import Method
from translate.training.run_folder import RunLog


class Evaluation:
    """What a run is scored on (``split``: "" when train.eval_every is off) and its best score so far."""

    def __init__(self, recipe: Recipe, cls: type[Method], device: torch.device, progress: Progress) -> None:
        self.recipe, self.device, self.progress = recipe, device, progress
        self.best: float | None = None  # the best evaluation so far (saved in the training state)
        self.fid: TrainingFID | None = None
        self.split = ""  # val/ or test/ pairs; test/ or train/ images for FID
        self._noted: set[str] = set()
        if not recipe.train.eval_every:
            return
        if cls.data_kind == "paired":
            self.split = _held_out_split(Path(recipe.data.path))
        elif cls.data_kind != "unpaired" and "G" not in cls.export_names:
            raise TranslateError(f"train.eval_every evaluates translators and generators; {recipe.method} "
                                 f"trains {', '.join(cls.export_names)} on {cls.data_kind} data "
                                 "(set train.eval_every=0)")
        elif not recipe.train.inception:
            progress.say(f"note: train.eval_every is off: {recipe.method} is scored by FID, which needs "
                         f"--set train.inception=FILE (the {FID_WEIGHTS} file)")
        else:
            self.fid = TrainingFID(recipe, cls.data_kind, device)
            self.split = self.fid.split

    def __call__(self, weights: Path, step: int, epoch: int, log: RunLog) -> bool:
        """Score ``weights``; a line in the log and on the console; True when it is the best so far
        (then copied to best.safetensors beside it)."""
        if self.fid is not None:
            means, note = self.fid(weights)
            metric, higher = "fid", False
            if note and note not in self._noted:
                self._noted.add(note)
                self.progress.say(f"note: {note}")
        else:
            # torch, not a compiled engine: these weights are new at every evaluation, compiling them costs more
            result = evaluate(weights, self.recipe.data.path, weights.parent / "eval" / f"epoch_{epoch:03d}.csv",
                              split=self.split, device=str(self.device), engine="torch")
            means = {k: result.mean(k) for k in METRICS}
            metric, higher = self.recipe.train.eval_metric, HIGHER_IS_BETTER[self.recipe.train.eval_metric]
        value = means[metric]
        better = self.best is None or (value > self.best if higher else value < self.best)
        if better:
            self.best = value
            with atomic_path(weights.parent / "best.safetensors") as tmp:
                shutil.copyfile(weights, tmp)
        log.write({"step": step, "epoch": epoch, "split": self.split, **{f"eval_{k}": round(v, 5)
                                                                         for k, v in means.items()}})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in means.items())
        self.progress.say(f"epoch {epoch}: {self.split} {shown}" + (" (best so far: best.safetensors)"
                                                                      if better else ""))
        return better


def _held_out_split(root: Path) -> str:
    """The split a paired method is evaluated on: val/, else test/ (aligned or A/ + B/)."""
    for split in ("val", "test"):
        if (root / split).is_dir() or (root / "A" / split).is_dir():
            return split
    raise TranslateError(f"train.eval_every needs held-out pairs beside the training ones: {root}/val/ or "
                         f"{root}/test/ (or A/val + B/val); none found")
