"""Whether a row's number can be taken at its word: the ``flags`` a row carries, and what they come from.

- ``noisy``: the median's CI is wider than ``measure.target_ci_rel`` (the sampling stopped on its
  budget or ``max_reps``, not on the CI). The job measures such a case once more at its end.
- ``fallback``: the kernel ran another path than its label says. torch says so only in a warning
  (dynamo's "hit config.recompile_limit", flex's "unfused implementation", "falling back"), often
  once per process and on stderr; the case catches every Python warning and every record of the
  ``torch._dynamo``/``torch._inductor`` loggers while it runs, and SDPA's math backend on CUDA
  counts too (no fused kernel took the shapes).
- ``busy``: other processes competed for the CPUs. Two readings, either one flags: the 1-minute load
  average at the case's start and end (``os.getloadavg``; it counts this process's own threads too,
  so the rule subtracts them: ``load - torch threads / CPUs > BUSY_LOAD`` at either end), and the
  share of our CPUs other processes used during the case itself (``harness.measure.cpuload``, from
  ``/proc/stat``): over ``BUSY_SHARE`` beyond what our torch threads leave free. The load average
  lags by about a minute, so a load that starts during a short case shows only in the share; a
  2-thread CPU step on 2 cores with one core taken by another process can run 10-100x slower.
- ``above_ceiling``: faster than a calibrated roof allows (``runner.ABOVE_CEILING``), still after
  the runner measured the ceilings again or found the working set cache-resident.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from attnbench.harness.measure import cpuload
from attnbench.harness.results.schema import FLAG_VALUES

# Load of other processes per CPU above which a case is `busy`: half the machine's CPUs taken by
# others halves what a multi-threaded CPU case gets, and starves a GPU case's launching thread often.
BUSY_LOAD = 0.5
# Share of our CPUs other processes may take during a case beyond those our threads leave free: a
# quarter (half a core of two) is already far above an idle machine's background (~1%).
BUSY_SHARE = 0.25
WARNINGS_MAX_CHARS = 2000
# What torch writes when a kernel leaves its path: dynamo's recompile limit (formerly cache_size_limit),
# flex_attention run without compilation, inductor's and SDPA's "falling back to ...".
FALLBACK = re.compile(r"recompile[_ ]limit|cache_size_limit|unfused|fall(?:s|ing)? ?back", re.IGNORECASE)
WATCHED_LOGGERS = ("torch._dynamo", "torch._inductor")
_FLEX_WARNING_ID = "flex_attention_performance"

LoadFn = Callable[[], "float | None"]


def load_per_cpu() -> float | None:
    """The machine's 1-minute load average over its CPU count; None where the OS has none (Windows)."""
    try:
        one_minute = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return one_minute / (os.cpu_count() or 1)


def is_busy(load: float | None, *, own_threads: int, cpus: int | None = None) -> bool:
    """Other processes' share of the load (this process's ``own_threads`` taken out) over ``BUSY_LOAD``."""
    if load is None:
        return False
    return load - own_threads / (cpus or os.cpu_count() or 1) > BUSY_LOAD


def is_crowded(share: float | None, *, own_threads: int, cpus: int | None = None) -> bool:
    """Others took more of our CPUs during the case than our ``own_threads`` leave free, by ``BUSY_SHARE``."""
    if share is None:
        return False
    free = max(0.0, 1.0 - own_threads / (cpus or len(cpuload.cpus()) or 1))
    return share > free + BUSY_SHARE


@dataclass
class Caught:
    """Distinct warnings seen during a case: ``"Category: first line"`` -> times seen, in order."""

    counts: Counter = field(default_factory=Counter)

    def add(self, text: str) -> None:
        self.counts[text.strip()[:500]] += 1

    def text(self) -> str:
        """One line for the row: distinct warnings with their counts, bounded."""
        parts = [f"{w} (x{n})" if n > 1 else w for w, n in self.counts.items()]
        joined = " | ".join(parts)
        return joined if len(joined) <= WARNINGS_MAX_CHARS else joined[:WARNINGS_MAX_CHARS - 1] + "…"

    def fallback(self) -> str:
        """The first warning that says a kernel fell back, or ''."""
        return next((w for w in self.counts if FALLBACK.search(w)), "")


class _ToCaught(logging.Handler):
    def __init__(self, caught: Caught) -> None:
        super().__init__(logging.WARNING)
        self.caught = caught

    def emit(self, record: logging.LogRecord) -> None:
        try:
            first = record.getMessage().strip().splitlines()
        except Exception:  # noqa: BLE001 - a bad log record must not fail the case
            first = [str(record.msg)]
        self.caught.add(f"{record.name} {record.levelname}: {first[0] if first else ''}")


def _rearm_flex_warning() -> None:
    """flex_attention warns of its unfused fallback once per process: let each case see it again.
    Only if flex was imported already (never imported from here)."""
    flex = sys.modules.get("torch.nn.attention.flex_attention")
    shown = getattr(flex, "_WARNINGS_SHOWN", None)
    if isinstance(shown, set):
        shown.discard(_FLEX_WARNING_ID)


@contextmanager
def catching() -> Iterator[Caught]:
    """Every Python warning but deprecations (each time, not once per place) and every WARNING record of torch's
    compiler loggers during the block, into a ``Caught``; nothing is printed."""
    caught = Caught()
    handler = _ToCaught(caught)
    loggers = [logging.getLogger(name) for name in WATCHED_LOGGERS]
    _rearm_flex_warning()
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        # As Python's default filters do outside __main__: torch's own deprecations (torch.jit inside
        # compile, 14 times a flex case) say nothing about the path that was timed.
        for category in (DeprecationWarning, PendingDeprecationWarning):
            warnings.simplefilter("ignore", category)
        for logger in loggers:
            logger.addHandler(handler)
        try:
            yield caught
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
            for record in records:
                lines = str(record.message).strip().splitlines()
                caught.add(f"{record.category.__name__}: {lines[0] if lines else ''}")


def flags(row: Mapping[str, Any], *, target_ci_rel: float, fallback: bool, busy: bool, above_ceiling: bool) -> str:
    """The row's flags as the schema's comma-separated string, in ``FLAG_VALUES`` order."""
    ci = row.get("latency_ci_rel")
    noisy = row.get("status") == "ok" and target_ci_rel > 0 and ci is not None and not ci <= target_ci_rel
    on = {"noisy": noisy, "fallback": fallback, "busy": busy, "above_ceiling": above_ceiling}
    return ",".join(f for f in FLAG_VALUES if on[f])


def parse(value: object) -> tuple[str, ...]:
    """A ``flags`` cell as its flags; () for an empty or null cell (rows written before the column)."""
    if not isinstance(value, str) or not value:
        return ()
    return tuple(f for f in value.split(",") if f)


def without(value: str, flag: str) -> str:
    return ",".join(f for f in parse(value) if f != flag)


def count_line(cells: Iterator[object] | list[object]) -> str:
    """``"3 rows flagged: 2 noisy, 1 busy."`` over ``flags`` cells (a row counts once, each flag it
    has counts); '' when none is flagged."""
    per_row = [parse(c) for c in cells]
    flagged = sum(1 for f in per_row if f)
    if not flagged:
        return ""
    counts = Counter(f for row in per_row for f in row)
    listed = ", ".join(f"{counts[f]} {f}" for f in FLAG_VALUES if counts[f])
    return f"{flagged} row{'s' if flagged > 1 else ''} flagged: {listed}."
