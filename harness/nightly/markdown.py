"""A comparison as markdown, fit for a CI job summary or a pull-request comment."""

from __future__ import annotations

import math
from collections.abc import Iterable

from attnbench.harness.nightly.compare import MEMORY_FIGURES, CaseVerdict, Comparison, FigureChange
from attnbench.harness.nightly.store import Run
from attnbench.harness.text import escape

_ALWAYS_COUNTED = ("regression", "improvement", "unchanged", "noisy")
_PLURAL = {"flagged_baseline": "flagged baselines", "regression": "regressions", "improvement": "improvements", "not_timed": "not timed",
           "suspect": "suspected, not confirmed"}
_SINGULAR = {"suspect": "suspected, not confirmed"}
_ENV_NAMES = {"env_device_name": "device", "env_driver": "driver", "env_cuda": "CUDA", "env_torch": "torch",
              "env_cpu": "CPU", "env_cpu_count": "CPUs"}


def render(comparison: Comparison, *, baseline_how: str = "") -> str:
    c = comparison
    counts = c.counts()
    hungrier = sum(f.fails and f.figure in MEMORY_FIGURES for f in c.figures)
    changed = sum(f.fails and f.figure not in MEMORY_FIGURES for f in c.figures)  # --strict-figures
    parts = [f"{counts['regression']} slower", f"{counts['broken']} broken", f"{hungrier} hungrier",
             f"{changed} changed figures"]
    verdict = "FAIL: " + " · ".join(p for p in parts if not p.startswith("0 ")) if c.failed else "PASS: no regression"
    if not c.failed and counts["suspect"]:
        verdict += f" ({counts['suspect']} suspected, not confirmed)"
    pct = f"{c.threshold:.0%}" if round(c.threshold * 100, 6).is_integer() else f"{c.threshold:.1%}"
    lines = [f"## attnbench nightly: {verdict}", "",
             "| | run | commit | started (UTC) | fingerprint |", "|---|---|---|---|---|",
             _run_row("new", c.run), _run_row(f"baseline{f' ({baseline_how})' if baseline_how else ''}", c.baseline),
             "", machine(c.run), "",
             f"Rule: a case is suspect when the whole 95% interval of new/baseline median latency (bootstrap over "
             f"the raw samples, widened by the recent runs' run-to-run spread) lies above +{pct}, and a "
             f"regression when it was also suspect in the run before (against the same baseline); an improvement "
             f"when it lies below -{1 - 1 / (1 + c.threshold):.1%}; *noisy* when the interval is wider than "
             f"+-{pct} (not judged). Memory figures growing by more than {pct} also fail.", "",
             "**" + " · ".join(f"{n} {_PLURAL.get(k, k) if n != 1 else _SINGULAR.get(k, k.replace('_', ' '))}"
                               for k, n in counts.items() if n or k in _ALWAYS_COUNTED) + "**", ""]
    if c.figures:
        lines += ["### Deterministic figures changed", "",
                  "A changed FLOP count, minimum bytes or KV size on a fixed case means the code path changed.", "",
                  "| case | figure | baseline | new | change | fails |", "|---|---|---:|---:|---:|---|",
                  *(_figure_row(f) for f in c.figures), ""]
    lines += _timing_table("Regressions", c.of("regression"))
    lines += _status_table("Broken (ran in the baseline, fails now)", c.of("broken"))
    lines += _timing_table("Suspected, not confirmed (slower in this run only: does not fail; the next run is "
                           "judged against the same baseline)", c.of("suspect"))
    lines += _timing_table("Improvements", c.of("improvement"))
    noisy = c.of("noisy")
    if noisy:
        lines += ["<details><summary>Noisy, not judged: " + str(len(noisy)) + "</summary>", "",
                  *_timing_table("", noisy), "</details>", ""]
    unchanged = c.of("unchanged")
    if unchanged:
        lines += ["<details><summary>Unchanged: " + str(len(unchanged)) + "</summary>", "",
                  *_timing_table("", unchanged), "</details>", ""]
    other = c.of("fixed", "skipped", "new", "missing", "not_timed", "flagged_baseline")
    if other:
        lines += ["<details><summary>Other changes: " + str(len(other)) + "</summary>", "",
                  "| case | what | detail |", "|---|---|---|",
                  *(f"| {_cell(v.label)} | {v.kind.replace('_', ' ')} | {_cell(v.detail)} |" for v in other), "",
                  "</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def render_no_baseline(run: Run, why: str) -> str:
    return "\n".join(["## attnbench nightly: no baseline yet", "", f"{why}", "",
                      "| | run | commit | started (UTC) | fingerprint |", "|---|---|---|---|---|",
                      _run_row("new", run), "", machine(run), ""])


def machine(run: Run) -> str:
    fields = run.fingerprint_fields
    env = fields.get("env", {})
    # On a CPU run the device name is the CPU model: say it once.
    parts = [f"{_ENV_NAMES.get(k, k)} {v}" for k, v in env.items()
             if v is not None and not (k == "env_cpu" and v == env.get("env_device_name"))]
    parts += [f"{k} {v}" for k, v in fields.get("settings", {}).items() if v is not None]
    return "Machine and settings: " + escape.markdown(" · ".join(parts))


def _run_row(role: str, run: Run) -> str:
    return f"| {role} | {run.run_id} | {escape.code(run.commit[:12])} | {run.time_utc} | {escape.code(run.fingerprint[:8])} |"


def _timing_table(title: str, verdicts: Iterable[CaseVerdict]) -> list[str]:
    rows = list(verdicts)
    if not rows:
        return []
    head = [f"### {title}", ""] if title else []
    # The verdict's detail (a flagged row in this run: noisy, busy; how many runs confirmed it) beside
    # its numbers, so a slower row measured on a busy machine reads as such.
    return [*head, "| case | baseline ms | new ms | change | 95% interval | note |", "|---|---:|---:|---:|---|---|",
            *(f"| {_cell(v.label)} | {_ms(v.base_ms)} | {_ms(v.new_ms)} | {_pct(v.ci.ratio - 1)} | "
              f"[{_pct(v.ci.low - 1)}, {_pct(v.ci.high - 1)}] | {_cell(v.detail)} |" for v in rows if v.ci is not None),
            ""]


def _status_table(title: str, verdicts: Iterable[CaseVerdict]) -> list[str]:
    rows = list(verdicts)
    if not rows:
        return []
    return [f"### {title}", "", "| case | change |", "|---|---|", *(f"| {_cell(v.label)} | {_cell(v.detail)} |" for v in rows),
            ""]


def _figure_row(f: FigureChange) -> str:
    return (f"| {_cell(f.label)} | {escape.code(f.figure)} | {f.base:,} | {f.new:,} | {_pct(f.rel)} | "
            f"{'**yes**' if f.fails else 'no'} |")


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _pct(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:+.1%}"


def _cell(text: str) -> str:
    return escape.markdown(text)  # labels and details hold the user's names
