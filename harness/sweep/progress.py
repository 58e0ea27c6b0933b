"""Progress: one log line per finished case, a live sweep-level status line, and a job's summary table.

The log lines (``[done/total] label: outcome  ETA``) go to the ``harness`` logger as before. On a
terminal, one more line is rewritten in place (carriage return, on stderr) while a case runs:

    sweep job 3/20 · case 2/4 mla/absorbed decode b=1 seq=4k · compiling 12s · ETA 00:03:10

``job k/N`` comes from ``SweepProgress``, a Hydra callback that counts the sweep's jobs when it starts
(the basic launcher runs jobs in its process; other launchers' jobs show the job alone). The ETA is
over the whole sweep: the mean time of a finished case times the cases left in this job and, for
the jobs not started, this job's case count each. Off a terminal (a log file, CI, a pipe) the line
is not written at all.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import pandas as pd
from hydra.experimental.callback import Callback

from attnbench.harness.results import schema
from attnbench.harness.text.units import ci_text

# The schema's summary columns; the one free-text column goes last so that the figures line up.
SUMMARY_COLUMNS = (*(c for c in schema.SUMMARY if c != "reason"), "reason")
_log = logging.getLogger(__name__)


@dataclass
class SweepState:
    """Where a multirun is: set by ``SweepProgress`` (jobs), read by each job's ``Progress``."""

    num_jobs: int | None = None
    job: int | None = None  # 0-based Hydra job number of the running job
    started: float = 0.0
    cases_done: int = 0  # finished cases of finished jobs and of this one
    case_seconds: float = 0.0  # their wall time


# The running sweep of this process, if any: set when a multirun starts, never at import.
_SWEEP: list[SweepState] = []


def sweep_state() -> SweepState | None:
    return _SWEEP[-1] if _SWEEP else None


def _hms(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(max(seconds, 0.0)))


class StatusLine:
    """One line rewritten in place with ``\\r``; writes nothing unless ``stream`` is a terminal.

    While it shows, any log record (from any logger: the runner's, Hydra's, torch's) first erases it, so
    a log line never lands on the end of the status line; the next ``show`` draws it again below.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._width = 0
        self._guard = _EraseFirst(self)
        self._guarded: list[logging.Handler] = []

    def show(self, text: str) -> None:
        if not self.live:
            return
        if not self._guarded:  # the root's handlers: every propagated record passes through them
            self._guarded = list(logging.getLogger().handlers)
            for handler in self._guarded:
                handler.addFilter(self._guard)
        # Pad over the previous text, so a shorter line leaves no tail of the longer one.
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def erase(self) -> None:
        if self.live and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def clear(self) -> None:
        self.erase()
        for handler in self._guarded:
            handler.removeFilter(self._guard)
        self._guarded = []


class _EraseFirst(logging.Filter):
    """A handler filter that erases the status line before the record is written; it passes every record."""

    def __init__(self, line: StatusLine) -> None:
        super().__init__()
        self.line = line

    def filter(self, record: logging.LogRecord) -> bool:
        self.line.erase()
        return True


class Progress:
    """A job's progress: one log line per finished case, ``[done/total] label: outcome  ETA``, and the
    live status line (``start`` a case, ``stage`` as it moves: building, compiling, gate, timing)."""

    def __init__(self, total: int, *, line: StatusLine | None = None) -> None:
        self.total = total
        self.done = 0
        self.started = time.perf_counter()
        self.line = line if line is not None else StatusLine()
        self.sweep = sweep_state()
        self._label = ""
        self._stage = ""
        self._case_started = self._stage_started = self.started

    # --- ETA ---------------------------------------------------------------------------------------
    def _mean_case_s(self) -> float | None:
        done = self.done + (self.sweep.cases_done if self.sweep else 0)
        spent = time.perf_counter() - self.started + (self.sweep.case_seconds if self.sweep else 0.0)
        return spent / done if done else None

    def _cases_left(self) -> int:
        left = self.total - self.done
        if self.sweep and self.sweep.num_jobs is not None and self.sweep.job is not None:
            left += self.total * max(self.sweep.num_jobs - self.sweep.job - 1, 0)
        return left

    def eta_s(self) -> float | None:
        """Seconds left in the sweep (this job alone outside a multirun); None before a case finishes."""
        mean = self._mean_case_s()
        return None if mean is None else mean * self._cases_left()

    def _eta(self) -> str:
        eta = self.eta_s()
        return "?" if eta is None else _hms(eta)

    # --- the live line -----------------------------------------------------------------------------
    def status(self) -> str:
        parts = ["sweep"]
        if self.sweep and self.sweep.job is not None:
            parts.append(f"job {self.sweep.job + 1}/{self.sweep.num_jobs or '?'}")
        parts.append(f"case {min(self.done + 1, self.total)}/{self.total} {self._label}".rstrip())
        if self._stage:
            parts.append(f"{self._stage} {time.perf_counter() - self._stage_started:.0f}s")
        parts.append(f"ETA {self._eta()}")
        return " · ".join(parts)

    def start(self, label: str) -> None:
        self._label, self._stage = label, ""
        self._case_started = self._stage_started = time.perf_counter()
        self.line.show(self.status())

    def stage(self, name: str) -> None:
        """The case's current stage (the runner calls this through ``RunContext.stage``)."""
        self._stage, self._stage_started = name, time.perf_counter()
        self.line.show(self.status())

    # --- finished cases (the log lines) ------------------------------------------------------------
    def update(self, label: str, row: Mapping[str, Any]) -> None:
        self.done += 1
        if row["status"] == "ok":
            spread = ci_text(row["latency_ci_rel"], unbounded="no CI: too few repetitions")
            outcome = f"{row['latency_ms']:.4g} ms ({spread}, n={row['n_reps']})"
        else:
            outcome = f"{row['status']}: {row['reason']}"
        self.line.clear()  # the log line goes where the status line was
        _log.info("[%d/%d] %s: %s  ETA %s", self.done, self.total, label, outcome, self._eta())
        self._after_case()

    def skip(self, label: str, why: str) -> None:
        self.done += 1
        self.line.clear()
        _log.info("[%d/%d] %s: %s", self.done, self.total, label, why)
        self._after_case()

    def _after_case(self) -> None:
        self._label, self._stage = "", ""
        if self.done == self.total:
            self.line.clear()
            if self.sweep is not None:  # this job's cases count toward the next job's ETA
                self.sweep.cases_done += self.done
                self.sweep.case_seconds += time.perf_counter() - self.started


class SweepProgress(Callback):
    """Hydra callback: counts a multirun's jobs at its start and tells each job its number."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        from attnbench.harness.sweep.overrides import BASIC_SWEEPER, sweep_overrides

        num_jobs = None
        if config.hydra.sweeper.get("_target_") == BASIC_SWEEPER:  # other sweepers choose jobs as they go
            num_jobs = len(sweep_overrides({"hydra": OmegaConf.to_container(config.hydra, resolve=False)}))
        _SWEEP.append(SweepState(num_jobs=num_jobs, started=time.perf_counter()))

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        state = sweep_state()
        if state is not None:
            state.job = int(config.hydra.job.num)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if _SWEEP:
            _SWEEP.pop()


def summary_table(rows: list[Mapping[str, Any]]) -> str:
    if not rows:
        return "(no cases)"
    frame = pd.DataFrame(rows)
    frame = frame[[c for c in SUMMARY_COLUMNS if c in frame.columns and frame[c].notna().any()]]
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_colwidth", 60,
                           "display.float_format", "{:.4g}".format):
        return frame.to_string(index=False)
