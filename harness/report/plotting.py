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
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from harness.report import escape, flagged
from harness.report.data import CASE_COLUMNS, DEVICE, SHAPE_COLUMNS
from harness.report.figures import Drawn
from harness.report.style import (MAX_HEIGHT_IN, impl_sort_key, impl_style, series_style, variant_color,
                                  variant_sort_key)
from harness.report.units import human_bytes, number, tokens
from variants.registry import IMPLEMENTATIONS

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
    a flagged row's point is a hollow grey marker on the line (``harness.report.flagged``)."""
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


def _axis_inches(ax: Axes, which: str) -> float:
    box = ax.get_position()
    return box.height * ax.figure.get_figheight() if which == "y" else box.width * ax.figure.get_figwidth()


def _log2_locator(ax: Axes, which: str = "x") -> LogLocator:
    """Ticks at powers of 2, or of 4 or 16 where a narrow panel has no room (about three labels an
    inch) for every power of 2 it spans; every one is labelled (no auto-thinning to two)."""
    low, high = ax.get_ylim() if which == "y" else ax.get_xlim()
    doublings = math.log2(high / low) if low > 0 and high > low else 0
    room = max(3.0, 3.0 * _axis_inches(ax, which))
    base = 2 if doublings <= room else 4 if doublings / 2 <= room else 16
    return LogLocator(base=base, numticks=64)


def context_axis(ax: Axes, label: str = "context length (tokens)") -> None:
    """A log2 x-axis of token counts labelled as contexts are named (1k, 4k, 32k); call after plotting."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(_log2_locator(ax))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: tokens(round(v)) if v >= 1 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def bytes_axis(ax: Axes, label: str, which: str = "y") -> None:
    """A log axis of bytes read in binary units: ticks at powers of 4 (1 KiB, 4 KiB, ..., 1 MiB), or
    at every power of 2 over a span short enough that powers of 4 would label fewer than three;
    call after plotting, as the span decides the ticks."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log", base=2)
    low, high = ax.get_ylim() if which == "y" else ax.get_xlim()
    base = 2 if low > 0 and high / low < 2**8 else 4
    if which == "x" and low > 0:  # "256 KiB" is wide (0.45 in at 7 pt): about two labels an inch fit
        room = max(3.0, 2.0 * _axis_inches(ax, "x"))
        base = next((b for b in (2, 4, 16) if math.log(high / low, b) + 1 <= room), 16)
    axis.set_major_locator(LogLocator(base=base, numticks=10))
    axis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v).replace(".00", "")))
    axis.set_minor_formatter(NullFormatter())
    (ax.set_ylabel if which == "y" else ax.set_xlabel)(label)


def log_axis(ax: Axes, which: str = "y") -> None:
    """A log axis labelled in plain numbers (0.2, 5, 60,000): every decade and its 2 and 5 labelled
    over up to three decades, every integer multiple under one (so a short span still shows three
    readable values), decades alone beyond; call after plotting, as the span decides the ticks."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    low, high = ax.get_ylim() if which == "y" else ax.get_xlim()
    span = math.log10(high / low) if low > 0 and high > low else 0
    # At most about three labels per inch of axis, so narrow panels do not overlap their labels.
    room = max(3.0, 3.0 * _axis_inches(ax, which))
    subs = (tuple(float(k) for k in range(1, 10)) if span < 0.7
            else (1.0, 2.0, 5.0) if 3 * span <= room else (1.0, 3.0) if 2 * span <= room else (1.0,))
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
    axis.set_major_formatter(FuncFormatter(lambda v, _: number(v)))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(float(k) for k in range(1, 10)), numticks=30))
    axis.set_minor_formatter(NullFormatter())


def batch_axis(ax: Axes) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(_log2_locator(ax))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("batch size (sequences)" if _axis_inches(ax, "x") > 1.8 else "batch (sequences)")


def device_title(ax: Axes, device: str, width: str) -> None:
    # Long CPU names would overflow a single-column panel.
    limit = 45 if width == "single" else 60
    shown = device if len(device) <= limit else device[: limit - 1] + "…"
    ax.set_title(escape.mathtext(shown), loc="left")  # a "$" in a device name is text, not mathtext


HEADER_GID = "legend-header"  # marks a heading entry in a legend's handles


def header(text: str) -> Line2D:
    """A legend entry with no line, set in bold by ``place_legend``: the heading of the entries after it."""
    return Line2D([], [], linestyle="", marker="", label=text, gid=HEADER_GID)


def legend(fig: Figure, rows: pd.DataFrame, *, extra: Sequence[Line2D] = (), colour_key: bool = True) -> None:
    """Colour keys the variants, marker and line style the implementations; hollow: torch.compile.
    Each group of entries has a bold heading; ``extra`` (model lines, budget, reserve) comes last under
    "lines". ``colour_key=False`` leaves out the variant colours (panels already named by variant)."""
    handles: list[Line2D] = []
    if colour_key:
        handles.append(header("variant"))
        handles += [Line2D([], [], color=variant_color(v), linewidth=2.5, label=v)
                    for v in sorted(rows["variant"].unique(), key=variant_sort_key)]
    handles.append(header("implementation"))
    for impl in sorted(rows["impl"].unique(), key=impl_sort_key):
        marker, linestyle = impl_style(impl)
        handles.append(Line2D([], [], color="0.35", marker=marker, linestyle=linestyle, label=impl))
    if (rows["compile"] != "none").any():
        handles.append(Line2D([], [], color="0.35", marker="o", markerfacecolor="white", linestyle="",
                              label="compiled"))
    if flagged.mask(rows).any():
        handles.append(Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor=flagged.FLAGGED_EDGE,
                              linestyle="", label="flagged"))
    if extra:
        handles.append(header("lines"))
        handles += list(extra)
    place_legend(fig, handles)


def place_legend(fig: Figure, handles: Sequence[Line2D]) -> None:
    """The legend below the panels, in as many columns as fit inside the canvas: the widest that fits
    is kept, so no entry is clipped at either column width."""
    # One group of entries: its heading is the legend's title; several: a bold heading entry each.
    title = None
    if sum(1 for h in handles if h.get_gid() == HEADER_GID) == 1 and handles[0].get_gid() == HEADER_GID:
        title, handles = handles[0].get_label(), list(handles[1:])
    headings = {h.get_label() for h in handles if h.get_gid() == HEADER_GID}
    for ncol in range(min(len(handles), 3 if fig.get_figwidth() < 5 else 6), 0, -1):
        for old in list(fig.legends):
            old.remove()
        laid, used = _in_columns(handles, ncol)
        leg = fig.legend(handles=laid, loc="outside lower center", ncol=used,
                         handlelength=2.6, columnspacing=1.0, handletextpad=0.5, title=title,
                         title_fontproperties={"weight": "bold", "size": 7})
        for text in leg.get_texts():
            if text.get_text() in headings:
                text.set_fontweight("bold")
        if _fits(fig, leg):
            return


def _in_columns(handles: Sequence[Line2D], ncol: int) -> tuple[list[Line2D], int]:
    """Legends fill column by column: pad each headed group with blank entries to whole columns, with
    the fewest rows that fit ``ncol`` columns, so every heading tops a column above its own entries.
    Returns the entries and the columns they fill: matplotlib spreads entries evenly over the columns
    it is given, so it must be given exactly those, or the groups slide out of line."""
    groups: list[list[Line2D]] = []
    for handle in handles:
        if handle.get_gid() == HEADER_GID or not groups:
            groups.append([])
        groups[-1].append(handle)
    if len(groups) == 1:
        return list(handles), ncol
    nrows = next((n for n in range(1, len(handles) + 1) if sum(-(-len(g) // n) for g in groups) <= ncol), None)
    if nrows is None:  # more groups than columns: whole groups share a column, none split across two
        for nrows in range(max(len(g) for g in groups), len(handles) + 1):
            columns: list[list[Line2D]] = [[]]
            for group in groups:
                if columns[-1] and len(columns[-1]) + len(group) > nrows:
                    columns.append([])
                columns[-1] += group
            if len(columns) <= ncol:
                groups = columns
                break
    out: list[Line2D] = []
    for group in groups:
        out += group + [Line2D([], [], linestyle="", marker="", label=" ")
                        for _ in range(-len(group) % nrows)]
    return out, len(out) // nrows


def _fits(fig: Figure, leg: Legend, *, margin: float = 0.02) -> bool:
    """Whether ``leg`` is narrower than the canvas, ``margin`` clear of each side, and shorter than it.
    A legend's size depends on its entries and columns only, not on where the layout puts it, so this
    measures it without drawing the figure (a draw per tried column count was a quarter of a report's time);
    ``legend_inside`` checks the placed result."""
    box = leg.get_window_extent(fig.canvas.get_renderer())
    return box.width <= fig.bbox.width * (1 - 2 * margin) and box.height <= fig.bbox.height


def legend_inside(fig: Figure, *, margin: float = 0.02) -> bool:
    """Whether every legend's bounding box lies inside the canvas, ``margin`` (a share of the width)
    clear of each side: text is measured at screen resolution, and a print DPI's hinting widens it."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    pad = margin * canvas.width
    for leg in fig.legends:
        box = leg.get_window_extent(renderer)
        if box.x0 < canvas.x0 + pad or box.x1 > canvas.x1 - pad or box.y0 < canvas.y0 or box.y1 > canvas.y1:
            return False
    return True


def subtitle(fig: Figure, rows: pd.DataFrame, *, device: str | None = None, held: Sequence[str] = (),
             varied: str = "x-axis") -> None:
    """The figure says what it shows on its own (a PDF without its caption): model, dtype, batch,
    phase, device. ``held`` names what the figure varies instead, left out here; ``varied`` says how
    (its x-axis, or what sets it)."""
    first = rows.iloc[0]
    parts = [f"model {first['model']}", str(first["dtype"])]
    batches = sorted(int(b) for b in rows["batch"].unique())
    if "batch" in held:  # varied: its range, and the context it is held at
        parts.append(f"batch {batches[0]}-{batches[-1]} ({varied})")
        contexts = sorted(int(c) for c in rows["seq"].unique())
        parts.append("context " + ", ".join(tokens(c) for c in contexts))
    else:
        parts.append(f"batch {', '.join(map(str, batches))}")
    if "phase" in rows.columns and "phase" not in held:
        parts.append(", ".join(sorted(rows["phase"].astype(str).unique())))
    if device is not None:
        limit = 48 if fig.get_figwidth() < 5 else 100
        parts.append(device if len(device) <= limit else device[: limit - 1] + "…")
    # About 60 characters of 7 pt fit a 3.5 in column: wrap between the parts, never inside one.
    limit = 60 if fig.get_figwidth() < 5 else 125
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 2 + len(part) > limit:
            lines.append(part)
        else:
            lines[-1] += f", {part}"
    fig.suptitle(escape.mathtext("\n".join(lines)), fontsize=7, x=0.5, ha="center")  # "$" in names is text


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


def facet_title(ax: Axes, variant: str, device: str | None = None) -> None:
    """A facet is named by its variant (in its colour; ``mla, absorbed`` in MLA's), and by its
    device when the figure has several."""
    text = variant if device is None else f"{variant}, {device if len(device) <= 30 else device[:29] + '…'}"
    color = variant_color(variant.split(", ")[0])
    ax.set_title(escape.mathtext(text), loc="left", color=color, fontweight="bold")


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
            context_axis(ax, "context length (tokens)" if _axis_inches(ax, "x") > 1.8 else "context (tokens)")
        log_axis(ax, "y")
        ax.set_ylabel(ylabel)
        if variant is not None:
            facet_title(ax, variant, panel.device if len(devices) > 1 else None)
        else:
            device_title(ax, panel.device, width)
    subtitle(fig, drawn_rows(drawn), device=devices[0] if len(devices) == 1 else None, held=(x,))
    legend(fig, drawn_rows(drawn), colour_key=not faceted)
    return Drawn(fig, " ".join(filter(None, (caption, caption_for(drawn), flagged.listing(drawn_rows(drawn))))))
