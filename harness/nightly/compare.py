"""Judge a run against a baseline, case by case: timings by their confidence intervals, deterministic
figures exactly.

**Timing rule.** For a case that ran (``ok``) in both runs, ``ratio = median(new) / median(base)``
with a 95% percentile-bootstrap interval over both runs' raw samples (``harness.nightly.ratio``),
widened by the run-to-run spread of the case's median over the earlier good runs on the same
fingerprint (once there are at least 5 of them). With ``t`` the threshold (default 0.05):

- ``regression``  when ``low > 1 + t``: even the interval's lower end is a slowdown beyond the
  threshold, i.e. the slowdown is beyond the threshold *and* significant (the interval excludes
  1 as well as 1 + t);
- ``improvement`` when ``high < 1 / (1 + t)``: the mirror image (a speed-up beyond the threshold);
- ``noisy``       otherwise, when the interval's half-width in log space exceeds ``log(1 + t)``:
  the measurement cannot resolve a change of the threshold's size, so it is not judged;
- ``unchanged``   otherwise (any change is within the threshold, or not significant).

A true slowdown is thus flagged reliably once it exceeds ``(1 + t)`` times the interval's
half-width: about 7% at the default 5% with the ~1% intervals ``measure`` stops at.

**Status.** A case ``ok`` in the baseline that is now ``error``, ``oom`` or ``incorrect`` is
``broken`` (a regression); now ``skipped`` is ``skipped``; the reverse is ``fixed``; a case in one
run only is ``new`` or ``missing``; neither run timed it: ``not_timed``.

**Deterministic figures** (``harness.nightly.store.FIGURES``) are compared exactly and every
change is reported. Growth of a memory figure (``peak_mem_bytes``, ``kv_cache_bytes``,
``kv_bytes_per_token``) by more than ``t`` makes the path *hungrier*: a regression. A change in the
cost model's ``flops`` or ``bytes_min`` means the code path itself changed; it is reported at the
top of the summary but fails only with ``strict_figures``.

Runs with different fingerprints are never compared: ``FingerprintMismatch``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from harness.nightly.ingest import describe_difference
from harness.nightly.ratio import RatioCI, ratio_ci, run_to_run_sd_log, widen
from harness.nightly.store import FIGURES, CaseRecord, Run

Kind = Literal["regression", "improvement", "unchanged", "noisy", "broken", "skipped", "fixed", "new", "missing",
               "not_timed"]
KINDS: tuple[str, ...] = ("regression", "broken", "improvement", "fixed", "noisy", "unchanged", "skipped", "new",
                          "missing", "not_timed")
FAILING_KINDS: tuple[str, ...] = ("regression", "broken")
MEMORY_FIGURES: tuple[str, ...] = ("peak_mem_bytes", "kv_cache_bytes", "kv_bytes_per_token")
COST_FIGURES: tuple[str, ...] = tuple(f for f in FIGURES if f not in MEMORY_FIGURES)
DEFAULT_THRESHOLD = 0.05
MIN_HISTORY_RUNS = 5  # earlier good runs needed before their spread widens the interval
_FAILED = ("error", "oom", "incorrect")


class FingerprintMismatch(ValueError):
    """Two runs from different machines or timing settings: their numbers are not comparable."""


@dataclass(frozen=True)
class CaseVerdict:
    case_id: str
    label: str
    kind: Kind
    ci: RatioCI | None = None  # the (widened) interval of the ratio of medians, when both ran
    base_ms: float | None = None
    new_ms: float | None = None
    run_to_run_sd_log: float = 0.0  # the history's spread that widened ``ci`` (0: not enough history)
    detail: str = ""


@dataclass(frozen=True)
class FigureChange:
    case_id: str
    label: str
    figure: str
    base: int
    new: int
    fails: bool  # a memory figure grown beyond the threshold (or any change, with strict_figures)

    @property
    def rel(self) -> float:
        return math.inf if self.base == 0 else self.new / self.base - 1.0


@dataclass(frozen=True)
class Comparison:
    run: Run
    baseline: Run
    threshold: float
    cases: tuple[CaseVerdict, ...]
    figures: tuple[FigureChange, ...]

    def of(self, *kinds: str) -> list[CaseVerdict]:
        return [c for c in self.cases if c.kind in kinds]

    def counts(self) -> dict[str, int]:
        counted = Counter(c.kind for c in self.cases)
        return {k: counted.get(k, 0) for k in KINDS}

    @property
    def failed(self) -> bool:
        """A timing regression, a broken case, or a figure change that fails."""
        return bool(self.of(*FAILING_KINDS)) or any(f.fails for f in self.figures)


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold!r} is not allowed: it must be a fraction between 0 and 1 (0.05 = 5%)")
    return float(threshold)


def check_comparable(run: Run, baseline: Run) -> None:
    if run.fingerprint != baseline.fingerprint:
        raise FingerprintMismatch(
            f"run {run.run_id} (fingerprint {run.fingerprint}) and run {baseline.run_id} (fingerprint "
            f"{baseline.fingerprint}) are not comparable: they differ in "
            f"{describe_difference(run.fingerprint_fields, baseline.fingerprint_fields)}")


def compare(run: Run, baseline: Run, run_cases: Mapping[str, CaseRecord], base_cases: Mapping[str, CaseRecord], *,
            history_ms: Mapping[str, Sequence[float]] | None = None, threshold: float = DEFAULT_THRESHOLD,
            strict_figures: bool = False) -> Comparison:
    """Every case of ``run`` and ``baseline`` judged; ``history_ms[case_id]`` holds the case's median in
    earlier good runs on the fingerprint, oldest first (the baseline included)."""
    check_comparable(run, baseline)
    threshold = check_threshold(threshold)
    history_ms = history_ms or {}
    verdicts: list[CaseVerdict] = []
    figures: list[FigureChange] = []
    for case_id in sorted(set(run_cases) | set(base_cases), key=lambda c: _label(c, run_cases, base_cases)):
        new, base = run_cases.get(case_id), base_cases.get(case_id)
        if new is None or base is None:
            only = new or base
            assert only is not None
            verdicts.append(CaseVerdict(case_id, only.label, "new" if base is None else "missing"))
            continue
        verdicts.append(_judge(base, new, history_ms.get(case_id, ()), threshold))
        figures += _figure_changes(base, new, threshold, strict_figures)
    return Comparison(run, baseline, threshold, tuple(verdicts), tuple(figures))


def judge_timing(base_ms: Sequence[float], new_ms: Sequence[float], *, threshold: float = DEFAULT_THRESHOLD,
                 history_ms: Sequence[float] = ()) -> tuple[Kind, RatioCI, float]:
    """The timing rule of this module on two sets of raw samples: (kind, interval, run-to-run sd)."""
    threshold = check_threshold(threshold)
    sd = run_to_run_sd_log(history_ms, min_runs=MIN_HISTORY_RUNS)
    ci = widen(ratio_ci(base_ms, new_ms), sd)
    if ci.low > 1.0 + threshold:
        return "regression", ci, sd
    if ci.high < 1.0 / (1.0 + threshold):
        return "improvement", ci, sd
    if ci.half_width_log > math.log1p(threshold):
        return "noisy", ci, sd
    return "unchanged", ci, sd


def _judge(base: CaseRecord, new: CaseRecord, history: Sequence[float], threshold: float) -> CaseVerdict:
    if base.status == "ok" and new.status == "ok":
        kind, ci, sd = judge_timing(base.samples_ms, new.samples_ms, threshold=threshold, history_ms=history)
        return CaseVerdict(new.case_id, new.label, kind, ci, base.median_ms, new.median_ms, sd)
    change = f"{base.status} -> {new.status}" + (f": {new.reason}" if new.reason else "")
    if base.status == "ok":
        kind: Kind = "broken" if new.status in _FAILED else "skipped"
        return CaseVerdict(new.case_id, new.label, kind, base_ms=base.median_ms, detail=change)
    if new.status == "ok":
        return CaseVerdict(new.case_id, new.label, "fixed", new_ms=new.median_ms, detail=change)
    return CaseVerdict(new.case_id, new.label, "not_timed", detail=change)


def _figure_changes(base: CaseRecord, new: CaseRecord, threshold: float, strict: bool) -> list[FigureChange]:
    changes = []
    for figure in FIGURES:
        a, b = base.figures.get(figure), new.figures.get(figure)
        if a is None or b is None or a == b:
            continue  # not measured on one side (the case did not get that far): status covers it
        grew = b > a * (1.0 + threshold)
        fails = strict or (figure in MEMORY_FIGURES and grew)
        changes.append(FigureChange(new.case_id, new.label, figure, int(a), int(b), fails))
    return changes


def _label(case_id: str, *sides: Mapping[str, CaseRecord]) -> str:
    for side in sides:
        if case_id in side:
            return side[case_id].label
    raise AssertionError(case_id)
