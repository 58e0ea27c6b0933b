"""Trend plots: one PNG per tracked case, its median latency and 95% CI over the history of a fingerprint.

Drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas), so no pyplot state or backend is
touched: safe on a headless runner and inside other programs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from attnbench.harness.nightly.store import History, Run
from attnbench.harness.text import escape

MAX_POINTS = 60  # the newest runs shown per plot


def plot_trends(history: History, run: Run, out_dir: str | Path, *, kinds: Mapping[str, str] | None = None,
                baseline: Run | None = None, threshold: float | None = None,
                max_points: int = MAX_POINTS) -> list[Path]:
    """A plot per case that ran (``ok``) in ``run``, over the complete runs on its fingerprint up to it.

    ``kinds`` (``{case_id: verdict}``) colours the last point: red for a regression, green for an
    improvement; with ``baseline`` and ``threshold`` the band of +-threshold around the baseline's
    median is shaded. Returns the files written; ``index.md`` beside them lists case labels and files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kinds = kinds or {}
    written: list[Path] = []
    index = ["| case | verdict | plot |", "|---|---|---|"]
    for case_id, case in history.cases(run.run_id).items():
        if case.status != "ok":
            continue
        series = [(r, c) for r, c in history.case_series(run.fingerprint, case_id)
                  if r.seq <= run.seq and c.status == "ok"][-max_points:]
        path = out / f"{_slug(case.label)}-{case_id[:8]}.png"
        _plot(series, case.label, run, baseline, threshold, kinds.get(case_id, ""), path)
        written.append(path)
        index.append(f"| {escape.markdown(case.label)} | {kinds.get(case_id, '')} | [{path.name}]({path.name}) |")
    (out / "index.md").write_text("\n".join(index) + "\n")
    return written


def _plot(series, label: str, run: Run, baseline: Run | None, threshold: float | None, kind: str,
          path: Path) -> None:
    fig = Figure(figsize=(max(6.0, 0.25 * len(series) + 3.0), 3.2), layout="constrained")
    ax = fig.add_subplot()
    xs = list(range(len(series)))
    medians = [c.median_ms for _, c in series]
    # Clamped at 0: a CI edited by hand (or missing) must not stop the plot.
    low = [max(0.0, c.median_ms - (c.ci_low_ms if c.ci_low_ms is not None else c.median_ms)) for _, c in series]
    high = [max(0.0, (c.ci_high_ms if c.ci_high_ms is not None else c.median_ms) - c.median_ms) for _, c in series]
    ax.errorbar(xs, medians, yerr=[low, high], fmt="o-", color="tab:blue", ms=3, lw=1, capsize=2,
                label="median, 95% CI")
    for x, (r, _) in zip(xs, series, strict=True):
        if baseline is not None and r.run_id == baseline.run_id:
            ax.plot([x], [medians[x]], "s", mfc="none", mec="black", ms=9, label="baseline")
            if threshold is not None:
                ax.axhspan(medians[x] / (1 + threshold), medians[x] * (1 + threshold), color="0.85", zorder=0,
                           label=f"baseline ±{threshold:.0%}")
        if r.run_id == run.run_id:
            color = {"regression": "tab:red", "improvement": "tab:green"}.get(kind, "tab:blue")
            ax.plot([x], [medians[x]], "o", color=color, ms=8, label=f"this run{f' ({kind})' if kind else ''}")
    ax.set_xticks(xs, [r.commit[:7] for r, _ in series], rotation=60, fontsize=7)
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(escape.mathtext(label), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.savefig(path, dpi=100)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")[:80]
