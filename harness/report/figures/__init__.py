"""The report's figures, one module each, registered with ``@figure``.

A figure declares the columns it needs; when the selection has none of them (no NVML on a CPU,
ceilings not calibrated) or its drawing finds too little to show, it is left out with a note,
never drawn empty. Adding a figure is one new module here (or an ``attnbench.figures`` entry point
naming a ``FigureSpec``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from harness.report.style import DPI, figure_style, width_inches
from variants.registry import Registry


@dataclass(frozen=True)
class FigureInput:
    ok: pd.DataFrame  # measured rows (with speedup and mem_ratio)
    capacity: pd.DataFrame  # harness.report.capacity.capacity_table
    budget_bytes: int | None  # the budget given, None: each device's memory
    reserve: float  # share of the budget held back for activations and the runtime (capacity.RESERVE)


@dataclass(frozen=True)
class Drawn:
    figure: Figure | None  # None: left out
    caption: str  # what is drawn, or why it was left out


DrawFn = Callable[[FigureInput, str, float], Drawn]


@dataclass(frozen=True)
class FigureSpec:
    name: str  # file stem: figures/<name>_<width>.{pdf,png}
    order: int  # position in the report
    title: str
    needs: tuple[str, ...]  # columns that must hold data in at least one measured row
    why_missing: str  # the usual reason they don't, for the note
    draw: DrawFn  # (data, width name, width in inches) -> Drawn


FIGURES: Registry = Registry("figure", package="harness.report.figures", entry_point_group="attnbench.figures")


def figure(*, name: str, order: int, title: str, needs: Sequence[str], why_missing: str = "") -> Callable[[DrawFn],
                                                                                                            DrawFn]:
    def register(fn: DrawFn) -> DrawFn:
        FIGURES.add(name, FigureSpec(name, order, title, tuple(needs), why_missing, fn))
        return fn

    return register


def specs() -> list[FigureSpec]:
    return sorted(FIGURES, key=lambda s: (s.order, s.name))


def missing_columns(spec: FigureSpec, ok: pd.DataFrame) -> list[str]:
    return [c for c in spec.needs if c not in ok.columns or pd.to_numeric(ok[c], errors="coerce").isna().all()]


def draw(name: str, data: FigureInput, *, width: str = "single") -> Drawn:
    """Draw one registered figure at ``single`` or ``double`` column width, in the report's style."""
    spec = FIGURES.get(name)
    width_in = width_inches(width)
    missing = missing_columns(spec, data.ok)
    if data.ok.empty or missing:
        why = f" ({spec.why_missing})" if spec.why_missing else ""
        what = ", ".join(missing) if missing else "any measured row"
        return Drawn(None, f"{spec.title}: left out, no data in {what}{why}.")
    with figure_style():
        return spec.draw(data, width, width_in)


def save(fig: Figure, stem: Path) -> list[Path]:
    """Vector PDF (TrueType fonts, from the style's rcParams) and a 300-dpi PNG beside it."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with figure_style():
        for suffix, metadata in ((".pdf", {"CreationDate": None, "Creator": "attnbench"}),
                                 (".png", {"Software": "attnbench"})):
            path = stem.with_suffix(suffix)
            fig.savefig(path, dpi=DPI, metadata=metadata)
            paths.append(path)
    return paths
