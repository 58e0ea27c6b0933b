"""The report's two-part legend: colour keys the variants, marker and line style the
implementations, each group under a bold heading, laid out below the panels in as many columns
as fit the canvas.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D

from attnbench.harness.report import flagged
from attnbench.harness.report.figures.style import impl_sort_key, impl_style, variant_color, variant_sort_key


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
