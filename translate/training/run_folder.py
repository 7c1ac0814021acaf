"""A run folder: where a run keeps its files, and what the training loop writes there beside its
checkpoints: log lines (log.jsonl, and TensorBoard's events when asked), start-up facts
(starts.jsonl), sample grids and report.html. Rank 0 writes; on the other ranks each call does nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from translate.core.errors import TranslateError
from translate.core.images import save_png_atomic, to_unit
from translate.core.progress import Progress
from translate.training.report import STARTS_NAME, start_facts, write_report
from translate.training.tensorboard import Board  # it imports torch's SummaryWriter only when a Board opens


class RunPaths:
    """Where a run keeps its files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.recipe = root / "recipe.toml"
        self.weights = root / "latest.safetensors"  # for inference: exported nets + recipe in the metadata
        self.state = root / "latest.state.pt"  # for --resume
        self.log = root / "log.jsonl"
        self.samples = root / "samples"


class RunLog:
    """log.jsonl (and TensorBoard's events), starts.jsonl, sample grids and report.html of one run."""

    def __init__(self, paths: RunPaths, progress: Progress, main: bool) -> None:
        self.paths, self.progress, self.main = paths, progress, main
        self.board: Board | None = None  # TensorBoard's writer, once opened

    def open_board(self, step: int) -> None:
        """train.tensorboard: event files beside the log, from ``step`` on."""
        if self.main:
            self.board = Board(self.paths.root, step)

    def write(self, line: dict[str, Any]) -> None:
        """One line of log.jsonl (losses at a log step, or an evaluation), and the same to TensorBoard."""
        if not self.main:
            return
        with open(self.paths.log, "a") as f:
            f.write(json.dumps(line) + "\n")
        if self.board:
            self.board.log(line)

    def truncate(self, step: int) -> None:
        """Drop the lines written after ``step``, the checkpoint a resume starts from (they will be redone)."""
        if not self.paths.log.exists() or not self.main:
            return
        keep = [line for line in self.paths.log.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.paths.log.write_text("".join(f"{line}\n" for line in keep))

    def start(self, **facts: Any) -> dict[str, Any]:
        """The start-up facts as a line of starts.jsonl (one per start, resumes too): what `translate
        report` shows of a run whose console output is gone. Returns ``facts``."""
        if self.main:
            with open(self.paths.root / STARTS_NAME, "a") as f:
                f.write(start_facts(**facts))
        return facts

    def grid(self, step: int, rows: torch.Tensor) -> None:
        """A method's sample rows (N, C, H, W in [-1, 1]) stacked into samples/step_NNNNNNN.png."""
        if not self.main:
            return
        grid = torch.cat(list(to_unit(rows).clamp(0, 1)), dim=-2)
        save_png_atomic(grid, self.paths.samples / f"step_{step:07d}.png")
        if self.board:
            self.board.image(step, grid)

    def report(self) -> None:
        """report.html (train.report_every). A page that cannot be written is a warning: it never stops
        the training it reports on."""
        if not self.main:
            return
        try:
            write_report(self.paths.root)
        except (TranslateError, OSError, ImportError) as e:
            self.progress.say(f"[yellow]warning:[/] report.html not written: {e}")

    def close(self) -> None:
        if self.board:
            self.board.close()
