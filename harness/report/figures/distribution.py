"""Figure 10: the raw timed samples behind the medians, as empirical CDFs (every row keeps ``samples_ms``).

A median and its confidence interval hide the shape of a case's timings: a bimodal case (a preempted
thread, a frequency step) or one long tail reads the same as a tight one with a wide interval. Per
device, the figure takes the latency figure's slice (the setting with the most contexts) at its
shortest and longest context, and there, per variant, the implementation fastest at that context
(at most ``MAX_SERIES`` cases a panel, the report's fixed order): one step line per case, the share of
its samples at or below each latency, the median marked on it. A flagged case (noisy, busy, ...) keeps
its line and gets the hollow grey marker every figure gives a flagged row; the caption lists it.
Choose other cases with the report's ``--filter``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from attnbench.harness.report import flagged
from attnbench.harness.report.figures import Drawn, FigureInput, figure
from attnbench.harness.report.figures.axes import device_title, log_axis, subtitle
from attnbench.harness.report.figures.canvas import MAX_SERIES, Panel, new_figure, panels, series
from attnbench.harness.report.figures.legend import legend
from attnbench.harness.report.figures.style import series_style, variant_sort_key
from attnbench.harness.text import escape
from attnbench.harness.text.units import tokens

TITLE = "Distribution of the timed samples"


def has_samples(rows: pd.DataFrame) -> pd.Series:
    """True where a row holds at least one timed sample (rows written before the column hold none)."""
    if "samples_ms" not in rows.columns:
        return pd.Series(False, index=rows.index)
    return rows["samples_ms"].map(lambda s: s is not None and not isinstance(s, float) and len(s) > 0).astype(bool)


def fastest_per_variant(rows: pd.DataFrame) -> pd.DataFrame:
    """Of rows at one context: per variant the (implementation, compile) with the lowest median,
    at most ``MAX_SERIES`` in the report's variant order."""
    best = rows.sort_values("latency_ms").drop_duplicates(subset=["variant"], keep="first")
    order = sorted(best["variant"], key=variant_sort_key)[:MAX_SERIES]
    return best.set_index("variant").loc[order].reset_index()


def chosen(ok: pd.DataFrame) -> list[tuple[Panel, int, pd.DataFrame]]:
    """Per device, (its slice, a context, the cases drawn there) at the slice's shortest and longest context."""
    out = []
    for panel in panels(ok, x="seq", y=("latency_ms",), min_points=1):
        contexts = sorted(int(s) for s in panel.rows["seq"].unique())
        for context in dict.fromkeys((contexts[0], contexts[-1])):  # one panel when a single context
            out.append((panel, context, fastest_per_variant(panel.rows[panel.rows["seq"] == context])))
    return out


def ecdf(samples_ms: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted samples and the share of samples at or below each (a right-continuous step function)."""
    xs = np.sort(np.asarray(samples_ms, dtype=float))
    return xs, np.arange(1, len(xs) + 1) / len(xs)


def plot_ecdfs(ax: Axes, rows: pd.DataFrame) -> None:
    """One step line per case in its series style, its median marked (hollow grey when the row is flagged)."""
    for (variant, impl, compile_mode), group in series(rows):
        row = group.iloc[0]
        style = series_style(variant, impl, compile_mode)
        xs, ys = ecdf(row["samples_ms"])
        ax.step(np.r_[xs[0], xs], np.r_[0.0, ys], where="post", color=style.color, linestyle=style.linestyle,
                label=escape.mathtext(f"{variant}/{impl}"))
        doubt = bool(flagged.mask(group).iloc[0])
        face = "none" if doubt else (style.color if style.filled else "white")
        edge = flagged.FLAGGED_EDGE if doubt else style.color
        ax.plot([float(row["latency_ms"])], [0.5], linestyle="", marker=style.marker, markerfacecolor=face,
                markeredgecolor=edge, zorder=4, gid=flagged.FLAGGED_GID if doubt else None)


@figure(name="latency_distribution", order=10, title=TITLE, needs=("latency_ms", "seq"),
        why_missing="rows written before samples_ms was recorded")
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    drawn = chosen(data.ok[has_samples(data.ok)])
    if not drawn:
        return Drawn(None, f"{TITLE}: left out, no measured row holds its timed samples (samples_ms).")
    devices = sorted({p.device for p, _, _ in drawn})
    fig, axes = new_figure(width, width_in, panels=len(drawn), ncols=None if width == "single" else 2)
    for ax, (panel, context, rows) in zip(axes, drawn, strict=True):
        plot_ecdfs(ax, rows)
        log_axis(ax, "x")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("step latency (ms)")
        ax.set_ylabel("share of samples")
        device_title(ax, f"context {tokens(context)}" + (f", {panel.device}" if len(devices) > 1 else ""), width)
    rows = pd.concat([r for _, _, r in drawn], ignore_index=True)
    subtitle(fig, rows, device=devices[0] if len(devices) == 1 else None, held=("seq",))
    legend(fig, rows)
    counts = rows["samples_ms"].map(len)
    words = (f"Every timed sample of each case (one layer's step), as the share of samples at or below a latency, "
             f"log x; markers: the median. Per device, the setting of the latency figure at its shortest and "
             f"longest context, per variant its fastest implementation there ({counts.min()}-{counts.max()} samples "
             f"a case); choose other cases with --filter.")
    settings = "; ".join(dict.fromkeys(f"{p.device}: {p.setting}" for p, _, _ in drawn)) + "."
    return Drawn(fig, " ".join(filter(None, (words, settings, flagged.listing(rows)))))
