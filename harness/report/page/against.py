"""``python -m attnbench.harness.report NEW --against OLD``: how much faster each case is than before, and
whether that is more than noise, from the rows alone (no ``nightly ingest``, no SQLite).

Per case (matched by ``case_id``, measured in both), the ratio of median latencies new / old with
its 95% interval from the nightly's moving-block bootstrap over both rows' raw samples
(``attnbench.harness.nightly.ratio.ratio_ci``); a case is significant when the whole interval lies
beyond ``THRESHOLD`` either way, as the nightly judges: the interval covers the sampling within each
run, not how runs differ (two back-to-back runs of the same code on a quiet 2-core CPU differed by up
to 8% on 0.1-ms steps, and two-fold where torch's two threads fell into a slow mode for one job).
A case flagged in either run (noisy, busy, ...) carries a dagger and is listed under the table. Written
to ``<out>/against/``: a ratio table (md, tex, csv, html), a ratio figure (pdf, png), and the cases
measured on one side only, listed under the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from attnbench.harness.nightly.ratio import ratio_ci
from attnbench.harness.measure.trust import parse
from attnbench.harness.report.data import DEVICE
from attnbench.harness.report.flagged import DAGGER
from attnbench.harness.report.figures import save
from attnbench.harness.report.figures.canvas import new_figure
from attnbench.harness.report.figures.style import figure_style, variant_color, width_inches
from attnbench.harness.report.tables.formats import to_html, write_table
from attnbench.harness.report.tables.views import Table
from attnbench.harness.text.units import count, like, significant, tokens

# B batch, S context: the columns that name a case to a reader (case_id names it to the harness).
LABEL_COLUMNS = ("variant", "impl", "phase", "batch", "seq")
CONFIDENCE = 0.95
THRESHOLD = 0.05  # a change the sampling interval puts wholly beyond +-5% (the nightly's default)


@dataclass(frozen=True)
class Against:
    ratios: pd.DataFrame  # one row per case in both: ratio, low, high, significant, the two medians
    only_new: tuple[str, ...]  # cases measured in NEW only, as labels
    only_old: tuple[str, ...]


def compare(new_ok: pd.DataFrame, old_ok: pd.DataFrame) -> Against:
    """Match the measured rows of both sides by case and bootstrap each ratio of medians."""
    new, old = _by_case(new_ok), _by_case(old_ok)
    both = [c for c in new.index if c in old.index]
    out = []
    for case in both:
        ci = ratio_ci(np.asarray(old.at[case, "samples_ms"], dtype=float),
                      np.asarray(new.at[case, "samples_ms"], dtype=float), confidence=CONFIDENCE)
        row = new.loc[case]
        out.append({"case_id": case, DEVICE: row.get(DEVICE), **{c: row.get(c) for c in LABEL_COLUMNS},
                    "old_ms": float(np.median(old.at[case, "samples_ms"])),
                    "new_ms": float(np.median(new.at[case, "samples_ms"])),
                    "ratio": ci.ratio, "ratio_low": ci.low, "ratio_high": ci.high,
                    "significant": ci.low > 1 + THRESHOLD or ci.high < 1 / (1 + THRESHOLD),
                    "flags_new": _flags(new.loc[case]), "flags_old": _flags(old.loc[case])})
    return Against(pd.DataFrame(out), tuple(_label(new.loc[c]) for c in new.index if c not in old.index),
                   tuple(_label(old.loc[c]) for c in old.index if c not in new.index))


def _by_case(ok: pd.DataFrame) -> pd.DataFrame:
    usable = ok[ok["samples_ms"].map(lambda s: s is not None and len(s) > 0)]
    return usable.drop_duplicates("case_id", keep="last").set_index("case_id", drop=False)


def _flags(row: pd.Series) -> str:
    return ",".join(parse(row.get("flags")))


def _label(row: pd.Series) -> str:
    return f"{row['variant']}/{row['impl']} {row['phase']} batch {count(row['batch'])} context {tokens(row['seq'])}"


def table(result: Against) -> Table:
    raw = result.ratios
    ratio = raw["ratio"].map(significant) if len(raw) else pd.Series(dtype=str)
    flagged = [bool(r.get("flags_new") or r.get("flags_old")) for _, r in raw.iterrows()]
    shown = pd.DataFrame({
        "case": [_label(r) + (f" {DAGGER}" if f else "") for (_, r), f in zip(raw.iterrows(), flagged, strict=True)],
        "old (ms)": raw.get("old_ms", pd.Series(dtype=float)).map(significant),
        "new (ms)": raw.get("new_ms", pd.Series(dtype=float)).map(significant),
        "new/old (×)": ratio,
        "95% CI (×)": [f"[{like(lo, m)}, {like(hi, m)}]" for lo, hi, m in
                       zip(raw.get("ratio_low", []), raw.get("ratio_high", []), ratio, strict=True)],
        # * : the interval lies wholly beyond +-THRESHOLD (faster below 1, slower above).
        "sig.": ["*" if s else "" for s in raw.get("significant", [])],
    })
    doubts = [f"{_label(r)}: " + "; ".join(f"{side} {r[f'flags_{side}']}" for side in ("new", "old")
                                           if r[f"flags_{side}"])
              for (_, r), f in zip(raw.iterrows(), flagged, strict=True) if f]
    below = "; ".join([*(f"{DAGGER} flagged in {d}" for d in doubts),
                       *(f"only in NEW: {c}" for c in result.only_new),
                       *(f"only in OLD: {c}" for c in result.only_old)])
    caption = ("Median latency of NEW over OLD per case measured in both, with its 95% interval from a moving-block "
               f"bootstrap of both runs' samples; * the interval lies wholly beyond +-{THRESHOLD:.0%} (below 1: NEW "
               "is faster). The interval covers sampling within each run, not run-to-run variation. "
               f"{DAGGER}: a row flagged in either run (noisy, fallback, busy or above_ceiling), listed below.")
    return Table("against", "NEW against OLD", raw, shown, caption, below)


def figure(result: Against, *, width: str = "single") -> Figure:
    """Each case's ratio with its interval on a log axis, 1 marked; significant cases filled."""
    raw = result.ratios.sort_values("ratio")
    with figure_style():
        fig, (ax,) = new_figure("single" if width == "single" else "double", width_inches(width), panels=1)
        fig.set_figheight(min(7.0, 1.0 + 0.14 * max(len(raw), 4)))
        y = np.arange(len(raw))
        for i, (_, row) in enumerate(raw.iterrows()):
            color = variant_color(str(row["variant"]))
            error = [[row["ratio"] - row["ratio_low"]], [row["ratio_high"] - row["ratio"]]]
            ax.errorbar([row["ratio"]], [i], xerr=error,
                        fmt="o", color=color, markersize=3, linewidth=0.8,
                        markerfacecolor=color if row["significant"] else "white")
        ax.axvline(1.0, color="0.3", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yticks(y, [_label(r) for _, r in raw.iterrows()], fontsize=6)
        ax.set_xlabel(f"new / old median latency (×, log; filled: interval beyond ±{THRESHOLD:.0%})")
    return fig


def write(new_ok: pd.DataFrame, old_ok: pd.DataFrame, out: Path) -> tuple[list[Path], Against]:
    """The ratio table (md, tex, csv, html) and figure (pdf, png) under ``out/against/``."""
    result = compare(new_ok, old_ok)
    folder = out / "against"
    shown = table(result)
    files = write_table(shown, folder)
    html = folder / "against.html"
    html.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{to_html(shown)}</body></html>',
                    encoding="utf-8")
    files.append(html)
    if len(result.ratios):
        files += save(figure(result), folder / "against")
    return files, result
