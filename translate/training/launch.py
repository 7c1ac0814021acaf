"""`translate train --devices N`: N processes on this machine, one per GPU (gloo on CPUs).

What ``torchrun --standalone --nproc-per-node N`` does, minus what hurts a batch job: on SIGTERM
torchrun gives the processes 30 s, then kills them (a CPU step plus a save can take longer), and
ends with a traceback and exit status 1. Here the signal is passed on to every process once, the
launcher waits for all of them to save, and exits 130 / 143 like a single process would.

Each process gets the environment torchrun would give it (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), so ``init_distributed`` treats both launchers alike.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from translate.core.errors import exit_code
from translate.core.signals import STOP_SIGNALS

FAILED_PEER_GRACE_S = 30.0  # after one process fails, how long the others get to stop on SIGTERM


def free_port() -> int:
    """A TCP port nobody listens on now (the rendezvous of rank 0 binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, nproc: int, port: int) -> dict[str, str]:
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
           "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "TRANSLATE_LAUNCHER": "1"}
    # torchrun's default is 1 thread a process; sharing the cores out is as safe and faster on CPUs.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def launch(nproc: int, args: list[str]) -> int:
    """Run ``python -m translate ARGS`` in ``nproc`` processes; return the exit status for the shell.

    0 when all succeed; 128 + signal when stopped by SIGINT/SIGTERM (after every process has
    saved); otherwise the first failing process's status (the others are asked to stop, then killed).
    """
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "translate", *args], env=_env(r, nproc, port))
             for r in range(nproc)]
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        if received:  # a second Ctrl-C: stop now, without saving
            _to_running(procs, subprocess.Popen.kill)
            return
        received.append(signum)
        _to_running(procs, lambda p: p.send_signal(signum))

    old = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        failed_at, first_failure = None, 0
        while any(p.poll() is None for p in procs):
            failures = _failures(procs, received)
            if failures and failed_at is None:
                # A failed process leaves its peers waiting in a collective: ask them to stop, and
                # kill them after a grace period (after a signal they ignore a repeated one).
                failed_at, first_failure = time.monotonic(), failures[0]
                _to_running(procs, subprocess.Popen.terminate)
            if failed_at is not None and time.monotonic() - failed_at > FAILED_PEER_GRACE_S:
                _to_running(procs, subprocess.Popen.kill)
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    failures = [first_failure] if first_failure else _failures(procs, received)
    return failures[0] if failures else exit_code(received[0]) if received else 0


def _to_running(procs: list[subprocess.Popen], act: Callable[[subprocess.Popen], Any]) -> None:
    for p in procs:
        if p.poll() is None:
            act(p)


def _failures(procs: list[subprocess.Popen], received: list[int]) -> list[int]:
    """The statuses of processes that failed: after a stop signal, 130/143 is how one ends well."""
    ok = (0, exit_code(received[0])) if received else (0,)
    return [c for c in (_status(p.returncode) for p in procs if p.returncode is not None) if c not in ok]


def _status(returncode: int) -> int:
    """Popen's returncode (negative: killed by that signal) as a shell exit status."""
    return returncode if returncode >= 0 else exit_code(-returncode)
