"""The canvas of the report's figures: the figure and its panels (one per device), the slice of
rows a curve may join, series in the fixed style, small multiples, and ``series_figure``, the
usual figure built of them with the axes (``figures.axes``) and legend (``figures.legend``).

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

from attnbench.harness.report import flagged
from attnbench.harness.report.data import CASE_COLUMNS, DEVICE, SHAPE_COLUMNS
from attnbench.harness.report.figures import Drawn
from attnbench.harness.report.figures.axes import (axis_inches, batch_axis, context_axis, device_title, facet_title,
                                                   log_axis, subtitle)
from attnbench.harness.report.figures.legend import legend
from attnbench.harness.report.figures.style import MAX_HEIGHT_IN, impl_sort_key, series_style, variant_sort_key
from attnbench.harness.text import escape
from attnbench.harness.text.units import tokens
from attnbench.variants.registry import IMPLEMENTATIONS

PANEL_HEIGHT_IN = {"single": 2.3, "double": 2.5}
LEGEND_HEIGHT_IN = {"single": 1.2, "double": 0.7}  # single: three legend columns, more rows (headed)
# Columns held fixed along one curve; the figure's own x-axis column is taken out of this list.
SETTINGS = tuple(c for c in (*CASE_COLUMNS, *SHAPE_COLUMNS) if c not in ("variant", "impl", "compile"))


def new_figure(width: str, width_in: float, *, panels: int, ncols: int | None = None) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` axes: stacked at single-column width, side by side (up to 3) at double,
    or ``ncols`` to a row at either width."""
    ncols = ncols or (1 if width == "single" else min(panels, 3))
    nrows = math.ceil(panels / ncols)
    # Capped at a page's text height less its caption's room: many facets share it, never a whole page.
    height = min(nrows * PANEL_HEIGHT_IN[width] + LEGEND_HEIGHT_IN[width], MAX_HEIGHT_IN)
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
    """One line per (variant, impl, compile), optionally with a shaded band (a confidence interval);
    a flagged row's point is a hollow grey marker on the line (``attnbench.harness.report.flagged``)."""
    for (variant, impl, compile_mode), group in series(rows):
        group = group.sort_values(x)
        style = series_style(variant, impl, compile_mode)
        doubt = flagged.mask(group).to_numpy()
        kwargs = style.line_kwargs()
        if doubt.any():
            kwargs["markevery"] = [i for i, f in enumerate(doubt) if not f]
        ax.plot(group[x], group[y].astype(float) * scale, label=escape.mathtext(f"{variant}/{impl}"), **kwargs)
        if doubt.any():
            ax.plot(group[x][doubt], group[y][doubt].astype(float) * scale, linestyle="", marker=style.marker,
                    markerfacecolor="none", markeredgecolor=flagged.FLAGGED_EDGE, gid=flagged.FLAGGED_GID)
        if band is not None and all(c in group.columns for c in band):
            # A CI the loop could not bound (too few repetitions) is infinite: no band there.
            low, high = (group[c].astype(float).replace([np.inf, -np.inf], np.nan) * scale for c in band)
            ax.fill_between(group[x], low, high, color=style.color, alpha=0.18, linewidth=0)


def drawn_rows(drawn: Sequence[Panel]) -> pd.DataFrame:
    return pd.concat([p.rows for p in drawn])


MAX_SERIES = 6  # more lines than this in one panel merge into a smear: facet instead


def _path(impl: str) -> str:
    """How an implementation reads the cache (``standard``, ``absorbed``, ``expanded``), from its registration."""
    return IMPLEMENTATIONS.get(impl).path if impl in IMPLEMENTATIONS.names() else "other"


def split_variants(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """A panel per variant (its name, its rows); a variant with more than ``MAX_SERIES`` series on its
    own (MLA: eager, sdpa, flex, three absorbed paths and expanded) gets a panel per implementation
    path, named ``mla, absorbed``."""
    out: list[tuple[str, pd.DataFrame]] = []
    for variant in sorted(rows["variant"].unique(), key=variant_sort_key):
        mine = rows[rows["variant"] == variant]
        if mine.groupby(["impl", "compile"]).ngroups <= MAX_SERIES:
            out.append((str(variant), mine))
            continue
        path = mine["impl"].map(_path)
        first = {p: min(impl_sort_key(i) for i in mine.loc[path == p, "impl"]) for p in path.unique()}
        out += [(f"{variant}, {p}", mine[path == p]) for p in sorted(first, key=first.__getitem__)]
    return out


def facet(drawn: Sequence[Panel]) -> list[tuple[Panel, str | None, pd.DataFrame]]:
    """Small multiples: a device's slice with more than ``MAX_SERIES`` series becomes a panel per
    variant, or per variant and implementation path (``split_variants``: its label, its rows); others
    stay one panel (None, all rows)."""
    out: list[tuple[Panel, str | None, pd.DataFrame]] = []
    for panel in drawn:
        if panel.rows.groupby(["variant", "impl", "compile"]).ngroups > MAX_SERIES:
            out += [(panel, label, rows) for label, rows in split_variants(panel.rows)]
        else:
            out.append((panel, None, panel.rows))
    return out


def series_figure(rows: pd.DataFrame, *, x: str, y: str, width: str, width_in: float, ylabel: str, too_few: str,
                  caption: str, scale: float = 1.0, band: tuple[str, str] | None = None,
                  decorate: Callable[[Axes], None] | None = None) -> Drawn:
    """The report's usual figure: a panel per device (one setting each) of ``y`` against ``x`` (context
    or batch, log2) on a log y-axis, a line per series, the headed legend; ``too_few`` when no setting
    has two x values. A device with more than ``MAX_SERIES`` series is faceted, a panel per variant
    (small multiples on a shared y-axis). ``decorate`` adds to each panel (a reference line) before the
    axes are set."""
    drawn = panels(rows, x=x, y=(y,))
    if not drawn:
        return Drawn(None, too_few)
    facets = facet(drawn)
    faceted = any(variant is not None for _, variant, _ in facets)
    # Facets two to a row in a column, three across a page's width (six: two rows, not three).
    ncols = min(len(facets), 3 if width == "double" else 2) if faceted and len(facets) > 1 else None
    fig, axes = new_figure(width, width_in, panels=len(facets), ncols=ncols)
    if faceted:
        for ax in axes[1:]:
            ax.sharey(axes[0])
    for ax, (panel, variant, frows) in zip(axes, facets, strict=True):
        plot_series(ax, frows, x, y, band=band, scale=scale)
        if decorate is not None:
            decorate(ax)
    devices = sorted({p.device for p in drawn})
    for ax, (panel, variant, _) in zip(axes, facets, strict=True):
        if x == "batch":
            batch_axis(ax)
        else:
            context_axis(ax, "context length (tokens)" if axis_inches(ax, "x") > 1.8 else "context (tokens)")
        log_axis(ax, "y")
        ax.set_ylabel(ylabel)
        if variant is not None:
            facet_title(ax, variant, panel.device if len(devices) > 1 else None)
        else:
            device_title(ax, panel.device, width)
    subtitle(fig, drawn_rows(drawn), device=devices[0] if len(devices) == 1 else None, held=(x,))
    legend(fig, drawn_rows(drawn), colour_key=not faceted)
    return Drawn(fig, " ".join(filter(None, (caption, caption_for(drawn), flagged.listing(drawn_rows(drawn))))))
