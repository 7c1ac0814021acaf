"""The one progress display of long work (training, `translate run`, score, eval, ...), on stderr.

On a terminal: a rich bar with the count, rate, elapsed time, ETA and a note (training's losses).
Elsewhere (a batch job's log): the plain lines the caller gives, at most one every ``every_s``
seconds and always the last. ``quiet``: nothing but failures. A library call without a display
gets :meth:`Progress.silent`, so the work itself never asks whether one was given.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console


def is_main_process() -> bool:
    """Rank 0 of a launched job, or a plain process: the one that reports."""
    return int(os.environ.get("RANK", "0")) == 0


class Progress:
    def __init__(self, console: Console, verb: str = "translating", *, quiet: bool = False,
                 every_s: float = 10.0) -> None:
        self.console, self.verb, self.quiet, self.every_s = console, verb, quiet, every_s
        self.bar: Any = None
        self.start(0)  # counts from here until start() is called with the total

    @classmethod
    def silent(cls) -> Progress:
        return cls(Console(stderr=True, quiet=True), quiet=True)

    def start(self, total: int, done: int = 0) -> Progress:
        self.total, self.done, self.first = total, done, done
        self.t0, self.last = time.perf_counter(), 0.0
        if not total or self.quiet or self.console.quiet or not self.console.is_terminal:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(TextColumn(f"[bold]{self.verb}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
                       TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=self.console)
        self.bar.start()
        self.task = self.bar.add_task(self.verb, total=total, completed=done, rate="", note="")
        return self

    def update(self, done: int, rate: str | None = None, note: str | None = None, line: str | None = None) -> None:
        """``done`` of ``total``; ``rate`` and ``note`` for the bar; ``line`` for a log instead of a bar."""
        self.done = done
        if self.bar is not None:
            fields = {k: v for k, v in (("rate", rate), ("note", note)) if v is not None}
            self.bar.update(self.task, completed=done, **fields)
            return
        elapsed = time.perf_counter() - self.t0
        if line and not self.quiet and (elapsed - self.last >= self.every_s or done == self.total):
            self.last = elapsed
            self.console.print(line, highlight=False, soft_wrap=True)

    def advance(self) -> None:
        """One more image done (item work: run, score, eval)."""
        elapsed = time.perf_counter() - self.t0
        rate = (self.done + 1 - self.first) / elapsed if elapsed > 0 else 0.0
        self.update(self.done + 1, f"{rate:.2f} img/s",
                    line=f"{self.done + 1}/{self.total} images, {rate:.2f} img/s")

    def fail(self, path: str, reason: str) -> None:
        """A file that failed: always shown, and counted as done."""
        self.console.print(f"[yellow]failed:[/] {path}: {reason}", highlight=False, soft_wrap=True)
        self.update(self.done + 1)

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
