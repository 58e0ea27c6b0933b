"""Judge a run against a baseline, case by case: timings by their confidence intervals, deterministic
figures exactly.

**Timing rule.** For a case that ran (``ok``) in both runs, ``ratio = median(new) / median(base)``
with a 95% percentile-bootstrap interval over both runs' raw samples (``attnbench.harness.nightly.ratio``),
widened by the case's run-to-run spread: the robust spread of its median over the recent runs on
the fingerprint, this one included (``history_ms``), once there are at least ``MIN_HISTORY_RUNS``
of them. With ``t`` the threshold (default 0.05):

- ``suspect`` when ``low > 1 + t``: even the interval's lower end is a slowdown beyond the
  threshold. One run alone is never enough to fail: a shared machine has states (a co-tenant, a
  clock) that make a whole run 1.2-2x slower with a tight interval, and no single pair of runs can
  tell such a state from a slower code path;
- ``regression`` when the case is also suspect, against the same baseline and with the same
  spread, in each of the ``confirm - 1`` runs right before this one (default ``confirm = 2``: two
  nights in a row), and those runs agree with each other: no one of them is beyond the threshold
  slower or faster than the next (a code path is slower by one factor; a machine state lasting
  over back-to-back runs makes them slower by different factors). Otherwise it is reported as
  ``suspect`` ("suspected, not confirmed"), which does not fail; the run is then not a baseline,
  so the next night is judged against the same one;
- ``improvement`` when ``high < 1 / (1 + t)``: the mirror image (a speed-up beyond the threshold);
- ``noisy``       otherwise, when the interval's half-width in log space exceeds ``log(1 + t)``:
  the measurement cannot resolve a change of the threshold's size, so it is not judged;
- ``unchanged``   otherwise (any change is within the threshold, or not significant).

**Status.** A case ``ok`` in the baseline that is now ``error``, ``oom`` or ``incorrect`` is
``broken`` (a regression); now ``skipped`` is ``skipped``; the reverse is ``fixed``; a case in one
run only is ``new`` or ``missing``; neither run timed it: ``not_timed``.

**Flagged rows** (``attnbench.harness.measure.trust``: noisy, fallback, busy, above_ceiling) are never a
baseline: a case whose baseline row is flagged is ``flagged_baseline``, not judged, and says why. A
flagged row in the new run is judged, and its verdict's detail names its flags.

**Deterministic figures** (``attnbench.harness.nightly.store.FIGURES``) are compared exactly and every
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
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Literal

from attnbench.harness.nightly.flags import flags_of
from attnbench.harness.nightly.ingest import describe_difference
from attnbench.harness.nightly.ratio import RatioCI, ratio_ci, run_to_run_sd_log, widen
from attnbench.harness.nightly.store import FIGURES, CaseRecord, Run

Kind = Literal["regression", "suspect", "improvement", "unchanged", "noisy", "broken", "skipped", "fixed", "new",
               "missing", "not_timed", "flagged_baseline"]
KINDS: tuple[str, ...] = ("regression", "broken", "suspect", "improvement", "fixed", "noisy", "unchanged", "skipped",
                          "new", "missing", "not_timed", "flagged_baseline")
FAILING_KINDS: tuple[str, ...] = ("regression", "broken")
MEMORY_FIGURES: tuple[str, ...] = ("peak_mem_bytes", "kv_cache_bytes", "kv_bytes_per_token")
COST_FIGURES: tuple[str, ...] = tuple(f for f in FIGURES if f not in MEMORY_FIGURES)
DEFAULT_THRESHOLD = 0.05
DEFAULT_CONFIRM = 2  # consecutive suspect runs that make a regression
# Runs (this one included) whose medians give the run-to-run spread: 3 is the fewest with two
# successive differences, so that one odd run (the first night of a new history, often) cannot
# set the spread alone.
MIN_HISTORY_RUNS = 3
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
    def suspected(self) -> bool:
        """A slowdown seen in this run and not (yet) confirmed: the run is not a baseline."""
        return bool(self.of("suspect"))

    @property
    def failed(self) -> bool:
        """A timing regression, a broken case, or a figure change that fails."""
        return bool(self.of(*FAILING_KINDS)) or any(f.fails for f in self.figures)


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold!r} is not allowed: it must be a fraction between 0 and 1 (0.05 = 5%)")
    return float(threshold)


def check_confirm(confirm: int) -> int:
    if isinstance(confirm, bool) or not isinstance(confirm, int) or confirm < 1:
        raise ValueError(f"confirm={confirm!r} is not allowed: it must be an integer >= 1 (runs in a row)")
    return confirm


def check_comparable(run: Run, baseline: Run) -> None:
    if run.fingerprint != baseline.fingerprint:
        raise FingerprintMismatch(
            f"run {run.run_id} (fingerprint {run.fingerprint}) and run {baseline.run_id} (fingerprint "
            f"{baseline.fingerprint}) are not comparable: they differ in "
            f"{describe_difference(run.fingerprint_fields, baseline.fingerprint_fields)}")


def compare(run: Run, baseline: Run, run_cases: Mapping[str, CaseRecord], base_cases: Mapping[str, CaseRecord], *,
            history_ms: Mapping[str, Sequence[float]] | None = None, threshold: float = DEFAULT_THRESHOLD,
            strict_figures: bool = False, previous: Sequence[Mapping[str, CaseRecord]] = (),
            confirm: int = DEFAULT_CONFIRM) -> Comparison:
    """Every case of ``run`` and ``baseline`` judged.

    ``history_ms[case_id]`` holds the case's median in the recent runs on the fingerprint that were
    not judged a regression, oldest first, ``run`` last. ``previous`` holds the cases of the runs
    between ``baseline`` and ``run``, newest first: a suspect case is a regression when it is suspect
    in the first ``confirm - 1`` of them too.
    """
    check_comparable(run, baseline)
    threshold = check_threshold(threshold)
    confirm = check_confirm(confirm)
    chain = list(previous[:confirm - 1]) if len(previous) >= confirm - 1 else None
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
        verdict = _judge(base, new, history_ms.get(case_id, ()), threshold)
        if verdict.kind == "suspect" and chain is not None and _persists(
                [new, *(cases.get(case_id) for cases in chain)], base, history_ms.get(case_id, ()), threshold):
            verdict = replace(verdict, kind="regression", detail=f"slower in {confirm} runs in a row")
        verdicts.append(verdict)
        figures += _figure_changes(base, new, threshold, strict_figures)
    return Comparison(run, baseline, threshold, tuple(verdicts), tuple(figures))


def judge_timing(base_ms: Sequence[float], new_ms: Sequence[float], *, threshold: float = DEFAULT_THRESHOLD,
                 history_ms: Sequence[float] = ()) -> tuple[Kind, RatioCI, float]:
    """The timing rule of this module on two sets of raw samples: (kind, interval, run-to-run sd).

    One pair of runs can show a slowdown only as ``suspect``; ``compare`` confirms it over runs."""
    threshold = check_threshold(threshold)
    sd = run_to_run_sd_log(history_ms, min_runs=MIN_HISTORY_RUNS)
    ci = widen(ratio_ci(base_ms, new_ms), sd)
    if ci.low > 1.0 + threshold:
        return "suspect", ci, sd
    if ci.high < 1.0 / (1.0 + threshold):
        return "improvement", ci, sd
    if ci.half_width_log > math.log1p(threshold):
        return "noisy", ci, sd
    return "unchanged", ci, sd


def _judge(base: CaseRecord, new: CaseRecord, history: Sequence[float], threshold: float) -> CaseVerdict:
    if base.status == "ok" and new.status == "ok":
        doubt = tuple(f for f in flags_of(base.status, base.reason) if f != "busy")  # load alone: the CI judges noise
        if doubt:  # a noisy, busy or fallen-back number is no yardstick: said, not judged
            return CaseVerdict(new.case_id, new.label, "flagged_baseline", base_ms=base.median_ms,
                               new_ms=new.median_ms, detail=f"the baseline's row is flagged {','.join(doubt)}: "
                               "not used as a baseline, not judged")
        kind, ci, sd = judge_timing(base.samples_ms, new.samples_ms, threshold=threshold, history_ms=history)
        mine = flags_of(new.status, new.reason)
        return CaseVerdict(new.case_id, new.label, kind, ci, base.median_ms, new.median_ms, sd,
                           detail=f"this run's row is flagged {','.join(mine)}" if mine else "")
    change = f"{base.status} -> {new.status}" + (f": {new.reason}" if new.reason else "")
    if base.status == "ok":
        kind: Kind = "broken" if new.status in _FAILED else "skipped"
        return CaseVerdict(new.case_id, new.label, kind, base_ms=base.median_ms, detail=change)
    if new.status == "ok":
        return CaseVerdict(new.case_id, new.label, "fixed", new_ms=new.median_ms, detail=change)
    return CaseVerdict(new.case_id, new.label, "not_timed", detail=change)


def _persists(runs: Sequence[CaseRecord | None], base: CaseRecord, history: Sequence[float], threshold: float) -> bool:
    """``runs`` (this one first, then the ones before it) are each suspect against ``base`` *and* agree
    with each other: no run is beyond the threshold slower or faster than the next one. A slower code
    path moves the case by one factor; a machine state (a co-tenant's job that lasts a few minutes,
    spanning back-to-back runs) moves it by a different one each run."""
    if any(r is None or r.status != "ok" for r in runs):
        return False
    if any(judge_timing(base.samples_ms, r.samples_ms, threshold=threshold, history_ms=history)[0] != "suspect"
           for r in runs[1:]):
        return False
    return all(judge_timing(older.samples_ms, newer.samples_ms, threshold=threshold, history_ms=history)[0]
               in ("unchanged", "noisy") for newer, older in pairwise(runs))


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
