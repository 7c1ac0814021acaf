"""Helpers the bench scripts share: how busy the machine was while a timing ran."""

from __future__ import annotations

import os


def cpu_busy_s() -> float | None:
    """Seconds of CPU time all processes have used so far (Linux /proc/stat), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds this process has used."""
    t = os.times()
    return t.user + t.system
