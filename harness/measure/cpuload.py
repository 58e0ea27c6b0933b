"""How much of this process's CPUs other processes used during a block of work.

``/proc/stat`` gives the busy clock ticks of each CPU; the CPUs in our affinity mask, less this
process's own CPU time (``os.times``: every thread of ours), are what others took from us. Unlike the
1-minute load average this covers exactly the block, with no lag: a load that started a second ago
counts, one that ended a minute ago does not. ``None`` where there is no ``/proc/stat`` (macOS,
Windows) or the block was too short for the clock ticks to say.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


class Share:
    """Filled in when the block ends: others' share of our CPUs over it, 0..1 (None: unknown)."""

    value: float | None = None


def cpus() -> set[int]:
    """The CPUs this process may run on."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def cpu_ticks(among: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks of the CPUs ``among`` from /proc/stat; None where there is no /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in among):
            continue
        ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


@contextlib.contextmanager
def others_share() -> Iterator[Share]:
    """Others' share of this process's CPUs during the block (``share.value`` after it)."""
    among = cpus()
    share = Share()
    start, own_start = cpu_ticks(among), os.times()
    yield share
    end, own_end = cpu_ticks(among), os.times()
    if start is None or end is None or end[1] <= start[1]:
        return
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    own_s = (own_end.user + own_end.system) - (own_start.user + own_start.system)
    others_s = (end[0] - start[0]) * tick_s - own_s
    share.value = min(1.0, max(0.0, others_s / ((end[1] - start[1]) * tick_s)))
