"""``train.tensorboard``: the run's log as TensorBoard event files, beside log.jsonl.

Written through torch's own ``SummaryWriter``, so StyleGAN2-ADA and mmagic users point
``tensorboard --logdir`` at a run folder as they do at theirs. The tensorboard package is an optional
extra: without it the run stops before its first step with one line saying what to install.

What goes in: every log line (``loss/<name>``, ``train/lr``, ``train/images_per_s``), every eval
line (``eval/<metric>``) and every sample grid (``samples``), at their step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from translate.core.errors import TranslateError

INSTALL = "pip install 'translate[tensorboard]' (or pip install tensorboard)"
AS_IS = {"lr": "train/lr", "images_per_s": "train/images_per_s"}  # log keys that are not losses
NOT_SCALARS = ("step", "epoch", "split")


class Board:
    """One run's event files. ``step`` is where the run starts: on --resume, events a killed run wrote
    after its last save are dropped, as the Trainer drops those log lines (TensorBoard purges from
    ``purge_step`` on; the saved step's own events stay)."""

    def __init__(self, root: Path, step: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises this when the tensorboard package is missing
            raise TranslateError(f"train.tensorboard=true needs the tensorboard package: {INSTALL}") from None
        # flush_secs: a TensorBoard watching the run sees a new point within half a minute, not two
        self.writer = SummaryWriter(log_dir=str(root), purge_step=step + 1 if step else None, flush_secs=30)
        self.image_step = -1

    def log(self, line: dict[str, Any]) -> None:
        """A log.jsonl line: a training line's losses, lr and rate, or an eval line's ``eval_*`` metrics."""
        step = int(line["step"])
        for key, value in line.items():
            if key in NOT_SCALARS or not isinstance(value, (int, float)):
                continue
            tag = AS_IS.get(key) or (f"eval/{key[5:]}" if key.startswith("eval_") else f"loss/{key}")
            self.writer.add_scalar(tag, value, step)

    def image(self, step: int, grid: torch.Tensor) -> None:
        """A sample grid, (3, H, W) in [0, 1]. One per step, as samples/ holds: the end's grid, drawn
        again at a step that just had one, replaces its file there and is not added twice here."""
        if step == self.image_step:
            return
        self.image_step = step
        self.writer.add_image("samples", grid.float().cpu(), step)

    def close(self) -> None:
        self.writer.close()
