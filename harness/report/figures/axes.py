"""The axes of the report's figures: log2 axes in tokens and batch sizes, log axes in bytes and
plain numbers (ticks chosen for the room the panel has), and the titles of panels and figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from attnbench.harness.report.figures.style import variant_color
from attnbench.harness.text import escape
from attnbench.harness.text.units import human_bytes, number, tokens


def axis_inches(ax: Axes, which: str) -> float:
    box = ax.get_position()
    return box.height * ax.figure.get_figheight() if which == "y" else box.width * ax.figure.get_figwidth()


def _log2_locator(ax: Axes, which: str = "x") -> LogLocator:
    """Ticks at powers of 2, or of 4 or 16 where a narrow panel has no room (about three labels an
    inch) for every power of 2 it spans; every one is labelled (no auto-thinning to two)."""
    low, high = ax.get_ylim() if which == "y" else ax.get_xlim()
    doublings = math.log2(high / low) if low > 0 and high > low else 0
    room = max(3.0, 3.0 * axis_inches(ax, which))
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
        room = max(3.0, 2.0 * axis_inches(ax, "x"))
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
    room = max(3.0, 3.0 * axis_inches(ax, which))
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
    ax.set_xlabel("batch size (sequences)" if axis_inches(ax, "x") > 1.8 else "batch (sequences)")


def device_title(ax: Axes, device: str, width: str) -> None:
    # Long CPU names would overflow a single-column panel.
    limit = 45 if width == "single" else 60
    shown = device if len(device) <= limit else device[: limit - 1] + "…"
    ax.set_title(escape.mathtext(shown), loc="left")  # a "$" in a device name is text, not mathtext


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


def facet_title(ax: Axes, variant: str, device: str | None = None) -> None:
    """A facet is named by its variant (in its colour; ``mla, absorbed`` in MLA's), and by its
    device when the figure has several."""
    text = variant if device is None else f"{variant}, {device if len(device) <= 30 else device[:29] + '…'}"
    color = variant_color(variant.split(", ")[0])
    ax.set_title(escape.mathtext(text), loc="left", color=color, fontweight="bold")
