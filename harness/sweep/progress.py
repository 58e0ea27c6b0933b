"""Progress per case with an ETA, and the summary table at the end of a job."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd

from harness.results import schema

# The schema's summary columns; the one free-text column goes last so that the figures line up.
SUMMARY_COLUMNS = (*(c for c in schema.SUMMARY if c != "reason"), "reason")
_log = logging.getLogger(__name__)


class Progress:
    """One log line per finished case, ``[done/total] label: outcome  ETA``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.perf_counter()

    def _eta(self) -> str:
        if not self.done:
            return "?"
        left = (time.perf_counter() - self.started) / self.done * (self.total - self.done)
        return time.strftime("%H:%M:%S", time.gmtime(left))

    def update(self, label: str, row: Mapping[str, Any]) -> None:
        self.done += 1
        if row["status"] == "ok":
            outcome = f"{row['latency_ms']:.4g} ms (+-{row['latency_ci_rel']:.1%}, n={row['n_reps']})"
        else:
            outcome = f"{row['status']}: {row['reason']}"
        _log.info("[%d/%d] %s: %s  ETA %s", self.done, self.total, label, outcome, self._eta())

    def skip(self, label: str, why: str) -> None:
        self.done += 1
        _log.info("[%d/%d] %s: %s", self.done, self.total, label, why)


def summary_table(rows: list[Mapping[str, Any]]) -> str:
    if not rows:
        return "(no cases)"
    frame = pd.DataFrame(rows)
    frame = frame[[c for c in SUMMARY_COLUMNS if c in frame.columns and frame[c].notna().any()]]
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_colwidth", 60,
                           "display.float_format", "{:.4g}".format):
        return frame.to_string(index=False)
