"""Stopping long work cleanly on SIGINT / SIGTERM, whoever sends them and to whom.

Batch systems stop a job by signalling every process of it: ``timeout``, Slurm, Kubernetes,
``docker stop`` and Ctrl-C in a terminal reach DataLoader workers as well as the main process.
So the rules are:

- DataLoader workers ignore both signals (:func:`ignore_in_worker`, their ``worker_init_fn``);
  the main process decides, and shuts the workers down itself. The signals are blocked while the
  workers are forked (:func:`blocked`), or one arriving then would kill a worker before its
  ``worker_init_fn`` runs: torch's own SIGTERM handler, set first, ends a worker signalled by
  anyone but its parent. (With the ``fork`` start method, Linux's default before Python 3.14.)
- The main process notes the first signal (:class:`StopSignals`) and the work loop stops at a safe
  point (training: after the current step, then it saves; ``translate run``: after the writes in
  flight). The exit status is 128 + the signal's number: 130 for SIGINT, 143 for SIGTERM.
- A process started by a launcher (``translate train --devices N``, torchrun) gets each signal
  twice when the whole group is signalled: once directly, once passed on by the launcher. There
  a repeat is ignored. A process on its own takes a second signal as "stop now, without saving".
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def under_launcher() -> bool:
    """True in a process that a launcher started (it passes signals on, so repeats are expected)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "TRANSLATE_LAUNCHER" in os.environ


def ignore_in_worker(worker_id: int = 0) -> None:
    """``worker_init_fn`` for DataLoaders: leave SIGINT/SIGTERM to the main process.

    Without it a signal to the process group kills the workers, and the main process stops with
    "DataLoader worker (pid N) is killed by signal: Terminated" instead of saving.
    """
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)  # also drops one that waited while blocked
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while DataLoader workers start (wrap the ``iter(loader)``).

    A forked worker inherits the block and so cannot be killed before ``ignore_in_worker``; this
    process gets a signal that came meanwhile as soon as the block lifts. Seen without it: a group
    SIGTERM at an epoch's start failed training with "DataLoader worker exited unexpectedly"."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class StopSignals:
    """Context manager: record the first SIGINT/SIGTERM instead of dying of it.

    ``stop`` is the signal's number once one arrived (else None). ``on_signal(signum)`` is called
    once, from the handler, e.g. to print what happens next. Outside the main thread (signal
    handlers cannot be set there) it does nothing.
    """

    def __init__(self, on_signal: Callable[[int], Any] | None = None) -> None:
        self.stop: int | None = None
        self._on_signal = on_signal
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.stop is not None:
            if under_launcher():
                return  # the same stop, delivered again by the launcher
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.stop = signum
        if self._on_signal is not None:
            self._on_signal(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
