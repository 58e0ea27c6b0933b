"""Shared pieces of the report's figures: the canvas, one panel per device, the slice of rows a
curve may join, series in the fixed style, axes in tokens, and the two-part legend.

Figures are built with ``matplotlib.figure.Figure`` on an explicit Agg canvas, never through
``pyplot``: no global figure registry to leak into or close, no backend switched for the process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from harness.report import escape
from harness.report.data import CASE_COLUMNS, DEVICE, SHAPE_COLUMNS
from harness.report.figures import Drawn
from harness.report.style import impl_sort_key, impl_style, series_style, variant_color, variant_sort_key
from harness.report.units import human_bytes, number, tokens

PANEL_HEIGHT_IN = {"single": 2.3, "double": 2.5}
LEGEND_HEIGHT_IN = {"single": 0.8, "double": 0.45}  # single: three legend columns, more rows
# Columns held fixed along one curve; the figure's own x-axis column is taken out of this list.
SETTINGS = tuple(c for c in (*CASE_COLUMNS, *SHAPE_COLUMNS) if c not in ("variant", "impl", "compile"))


def new_figure(width: str, width_in: float, *, panels: int, ncols: int | None = None) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` axes: stacked at single-column width, side by side (up to 3) at double,
    or ``ncols`` to a row at either width."""
    ncols = ncols or (1 if width == "single" else min(panels, 3))
    nrows = math.ceil(panels / ncols)
    height = nrows * PANEL_HEIGHT_IN[width] + LEGEND_HEIGHT_IN[width]
    fig = Figure(figsize=(width_in, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for extra in axes[panels:]:
        extra.remove()
    return fig, axes[:panels]


@dataclass(frozen=True)
class Panel:
    device: str
    rows: pd.DataFrame  # one slice: every setting but the x-axis fixed
    setting: str  # that slice in words, for the caption
    others: int  # how many other slices this device has (not drawn)


def panels(ok: pd.DataFrame, *, x: str, y: Sequence[str], min_points: int = 2) -> list[Panel]:
    """Per device, the slice with the most distinct ``x`` values among rows that have every ``y``.

    One curve must hold everything but ``x`` fixed. Of a device's slices (phase, batch, dtype,
    shape, ...) the one with the most ``x`` values is drawn; ties go to decode, then the smaller
    batch and context. Devices whose best slice has fewer than ``min_points`` x values are left out.
    """
    hold = [c for c in SETTINGS if c != x and c in ok.columns]
    usable = ok.dropna(subset=[x, *y])
    out = []
    for device, rows in usable.groupby(DEVICE, sort=True):
        groups = list(rows.groupby(hold, dropna=False, sort=False))
        if not groups:
            continue

        def rank(item: tuple[object, pd.DataFrame]) -> tuple:
            _, g = item
            return (-g[x].nunique(), -len(g), g["phase"].iloc[0] != "decode", g["batch"].iloc[0], g["seq"].iloc[0])

        groups.sort(key=rank)
        best = groups[0][1]
        if best[x].nunique() >= min_points:
            out.append(Panel(str(device), best, _describe(best, x), len(groups) - 1))
    return out


def _describe(rows: pd.DataFrame, x: str) -> str:
    first = rows.iloc[0]
    parts = [str(first["phase"])]
    if x != "batch":
        parts.append(f"batch {int(first['batch'])}")
    if x != "seq":
        parts.append(f"context {tokens(first['seq'])}")
    parts += [str(first["dtype"]), f"model {first['model']}"]
    return ", ".join(parts)


def caption_for(drawn: Sequence[Panel]) -> str:
    parts = []
    for panel in drawn:
        extra = (f" ({panel.others} other setting(s) in the tables; choose one with --filter)"
                 if panel.others else "")
        parts.append(f"{panel.device}: {panel.setting}{extra}")
    return "; ".join(parts) + "."


def series(rows: pd.DataFrame) -> Iterator[tuple[tuple[str, str, str], pd.DataFrame]]:
    """(variant, impl, compile) groups in the report's fixed order."""
    keys = sorted(rows.groupby(["variant", "impl", "compile"]).groups,
                  key=lambda k: (variant_sort_key(k[0]), impl_sort_key(k[1]), str(k[2])))
    for key in keys:
        variant, impl, compile_mode = key
        yield (variant, impl, compile_mode), rows[(rows["variant"] == variant) & (rows["impl"] == impl)
                                                  & (rows["compile"] == compile_mode)]


def plot_series(ax: Axes, rows: pd.DataFrame, x: str, y: str, *, band: tuple[str, str] | None = None,
                scale: float = 1.0) -> None:
    """One line per (variant, impl, compile), optionally with a shaded band (a confidence interval)."""
    for (variant, impl, compile_mode), group in series(rows):
        group = group.sort_values(x)
        style = series_style(variant, impl, compile_mode)
        ax.plot(group[x], group[y].astype(float) * scale, label=escape.mathtext(f"{variant}/{impl}"), **style.line_kwargs())
        if band is not None and all(c in group.columns for c in band):
            # A CI the loop could not bound (too few repetitions) is infinite: no band there.
            low, high = (group[c].astype(float).replace([np.inf, -np.inf], np.nan) * scale for c in band)
            ax.fill_between(group[x], low, high, color=style.color, alpha=0.18, linewidth=0)


def drawn_rows(drawn: Sequence[Panel]) -> pd.DataFrame:
    return pd.concat([p.rows for p in drawn])


def context_axis(ax: Axes, label: str = "context length (tokens)") -> None:
    """A log2 x-axis of token counts labelled as contexts are named (1k, 4k, 32k)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: tokens(round(v)) if v >= 1 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def bytes_axis(ax: Axes, label: str) -> None:
    """A log y-axis of bytes with ticks at powers of 4 (1 KiB, 4 KiB, ..., 1 MiB), read in binary units."""
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_locator(LogLocator(base=4, numticks=8))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v).replace(".00", "")))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(label)


def log_axis(ax: Axes, which: str = "y") -> None:
    """A log axis labelled in plain numbers (0.2, 5, 60,000), with 1-2-5 ticks over short spans;
    call after plotting, as the span decides the ticks."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    low, high = ax.get_ylim() if which == "y" else ax.get_xlim()
    span = math.log10(high / low) if low > 0 and high > low else 0
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span <= 2 else (1.0,), numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda v, _: number(v)))
    axis.set_minor_formatter(NullFormatter())


def batch_axis(ax: Axes) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("batch size (sequences)")


def device_title(ax: Axes, device: str, width: str) -> None:
    # Long CPU names would overflow a single-column panel.
    limit = 45 if width == "single" else 60
    shown = device if len(device) <= limit else device[: limit - 1] + "…"
    ax.set_title(escape.mathtext(shown), loc="left")  # a "$" in a device name is text, not mathtext


def legend(fig: Figure, rows: pd.DataFrame, *, extra: Sequence[Line2D] = ()) -> None:
    """Colour keys the variants, marker and line style the implementations; hollow: torch.compile."""
    handles: list[Line2D] = [Line2D([], [], color=variant_color(v), linewidth=2.5, label=v)
                             for v in sorted(rows["variant"].unique(), key=variant_sort_key)]
    for impl in sorted(rows["impl"].unique(), key=impl_sort_key):
        marker, linestyle = impl_style(impl)
        handles.append(Line2D([], [], color="0.35", marker=marker, linestyle=linestyle, label=impl))
    if (rows["compile"] != "none").any():
        handles.append(Line2D([], [], color="0.35", marker="o", markerfacecolor="white", linestyle="",
                              label="compiled"))
    handles += list(extra)
    # Three columns fit the longest names ("absorbed_fold_o") at 7 pt in a 3.5 in column.
    ncol = min(len(handles), 3 if fig.get_figwidth() < 5 else 8)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, handlelength=2.2, columnspacing=1.0)



def series_figure(rows: pd.DataFrame, *, x: str, y: str, width: str, width_in: float, ylabel: str, too_few: str,
                  caption: str, scale: float = 1.0, band: tuple[str, str] | None = None,
                  decorate: Callable[[Axes], None] | None = None) -> Drawn:
    """The report's usual figure: a panel per device (one setting each) of ``y`` against ``x`` (context
    or batch, log2) on a log y-axis, a line per series, the two-part legend; ``too_few`` when no
    setting has two x values. ``decorate`` adds to each panel (a reference line) before the axes are set."""
    drawn = panels(rows, x=x, y=(y,))
    if not drawn:
        return Drawn(None, too_few)
    fig, axes = new_figure(width, width_in, panels=len(drawn))
    for ax, panel in zip(axes, drawn, strict=True):
        plot_series(ax, panel.rows, x, y, band=band, scale=scale)
        if decorate is not None:
            decorate(ax)
        (batch_axis if x == "batch" else context_axis)(ax)
        log_axis(ax, "y")
        ax.set_ylabel(ylabel)
        device_title(ax, panel.device, width)
    legend(fig, drawn_rows(drawn))
    return Drawn(fig, f"{caption} {caption_for(drawn)}")
