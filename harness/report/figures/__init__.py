"""The report's figures, one module each, registered with ``@figure``.

A figure declares the rows it draws (the harness's measured rows, or a low-rank study's) and the
columns it needs; when the selection has none of them (no NVML on a CPU, ceilings not calibrated)
or its drawing finds too little to show, it is left out with a note, never drawn empty. Adding a
figure is one new module here (or an ``attnbench.figures`` entry point naming a ``FigureSpec``).
``draw_all`` draws and saves every registered figure of one kind of rows: the report and the
low-rank study both call it, so every figure has the same style, widths and file names.

Beside the figures lie the pieces they are built of, none a figure itself: ``canvas`` (the figure,
its panels and series), ``axes`` (ticks, scales and titles), ``legend`` and ``style`` (colours,
markers, fonts and widths).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
from matplotlib.figure import Figure

from attnbench.harness.report.figures.style import DPI, WIDTH_IN, figure_style, width_class, width_inches
from attnbench.variants.registry import Registry


@dataclass(frozen=True)
class FigureInput:
    ok: pd.DataFrame  # measured rows (with speedup and mem_ratio)
    capacity: pd.DataFrame  # harness.report.analysis.capacity.capacity_table
    budget_bytes: int | None  # the budget given, None: each device's memory
    reserve: float  # share of the budget held back for activations and the runtime (capacity.RESERVE)
    lowrank: pd.DataFrame = field(default_factory=pd.DataFrame)  # a low-rank study's rows (harness.studies.lowrank)

    @classmethod
    def of_lowrank(cls, rows: pd.DataFrame) -> FigureInput:
        """A low-rank study's rows alone (no measured rows, so no capacity and no reserve to apply)."""
        return cls(ok=pd.DataFrame(), capacity=pd.DataFrame(), budget_bytes=None, reserve=0.0, lowrank=rows)

    def rows(self, kind: RowsKind) -> pd.DataFrame:
        return self.lowrank if kind == "lowrank" else self.ok


@dataclass(frozen=True)
class Drawn:
    figure: Figure | None  # None: left out
    caption: str  # what is drawn, or why it was left out


DrawFn = Callable[[FigureInput, str, float], Drawn]
RowsKind = Literal["measured", "lowrank"]


@dataclass(frozen=True)
class FigureSpec:
    name: str  # file stem: figures/<name>_<width>.{pdf,png}
    order: int  # position in the report
    title: str
    needs: tuple[str, ...]  # columns that must hold data in at least one of its rows
    why_missing: str  # the usual reason they don't, for the note
    draw: DrawFn  # (data, width name, width in inches) -> Drawn
    rows: RowsKind = "measured"  # which rows of a FigureInput it draws (and ``needs`` is checked in)


FIGURES: Registry = Registry("figure", package="attnbench.harness.report.figures",
                             entry_point_group="attnbench.figures")


def figure(*, name: str, order: int, title: str, needs: Sequence[str], why_missing: str = "",
           rows: RowsKind = "measured") -> Callable[[DrawFn], DrawFn]:
    def register(fn: DrawFn) -> DrawFn:
        FIGURES.add(name, FigureSpec(name, order, title, tuple(needs), why_missing, fn, rows))
        return fn

    return register


def specs() -> list[FigureSpec]:
    return sorted(FIGURES, key=lambda s: (s.order, s.name))


def missing_columns(spec: FigureSpec, rows: pd.DataFrame) -> list[str]:
    return [c for c in spec.needs if c not in rows.columns or pd.to_numeric(rows[c], errors="coerce").isna().all()]


def draw(name: str, data: FigureInput, *, width: str = "single") -> Drawn:
    """Draw one registered figure at a width (``single``, ``double``, a venue such as ``neurips``, or a length
    such as ``5.5in``), in the report's style; the figure lays itself out for its width's class."""
    spec = FIGURES.get(name)
    width_in = width_inches(width)
    rows = data.rows(spec.rows)
    missing = missing_columns(spec, rows)
    if rows.empty or missing:
        why = f" ({spec.why_missing})" if spec.why_missing else ""
        what = ", ".join(missing) if missing else ("any measured row" if spec.rows == "measured"
                                                   else "any low-rank study row")
        return Drawn(None, f"{spec.title}: left out, no data in {what}{why}.")
    with figure_style():
        return spec.draw(data, width_class(width), width_in)


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
            # The layout is in inches and points, the same at every DPI and format: keep the first
            # save's, instead of the constrained-layout solve again for each (a third of a report's time).
            fig.set_layout_engine(None)  # None, not "none": a placeholder engine still costs a dry draw per save
    return paths


def svg(fig: Figure) -> bytes:
    """The figure as SVG (text as paths, so no font is needed to show it), for the HTML page."""
    buffer = io.BytesIO()
    with figure_style():
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "attnbench"})
    return buffer.getvalue()


@dataclass(frozen=True)
class PageFigure:
    """A drawn figure as the report's pages show it (harness.report.page)."""

    name: str  # the registered figure's name: its anchor on the page
    title: str
    caption: str
    png: Path  # linked from the markdown
    svg: bytes  # embedded in the HTML page
    files: tuple[str, ...]  # the figure's files, relative to the report folder


@dataclass(frozen=True)
class Drawings:
    drawn: Mapping[str, str]  # figure name -> caption
    left_out: Mapping[str, str]  # figure name -> why
    figures: tuple[PageFigure, ...]
    files: tuple[Path, ...]


def draw_all(data: FigureInput, out: Path, *, rows: RowsKind, widths: Sequence[str] = tuple(WIDTH_IN),
             names: Sequence[str] | None = None) -> Drawings:
    """Draw every registered figure of ``rows`` (or those in ``names``) at each width and save it as
    ``out/figures/<name>_<width>.{pdf,png}``; a figure left out at one width is left out at all."""
    out = Path(out)
    drawn: dict[str, str] = {}
    left_out: dict[str, str] = {}
    page_figures: list[PageFigure] = []
    files: list[Path] = []
    for spec in specs():
        if spec.rows != rows or (names is not None and spec.name not in names):
            continue
        paths: list[Path] = []
        caption = ""
        widest: Figure | None = None
        for width in widths:
            result = draw(spec.name, data, width=width)
            if result.figure is None:
                left_out[spec.name] = result.caption
                break
            caption, widest = result.caption, result.figure
            paths += save(result.figure, out / "figures" / f"{spec.name}_{width}")
        if spec.name in left_out or widest is None:
            continue
        drawn[spec.name] = caption
        files += paths
        shown = [p for p in paths if p.suffix == ".png"][-1]  # the widest drawn
        page_figures.append(PageFigure(spec.name, spec.title, caption, shown, svg(widest),
                                       tuple(str(p.relative_to(out)) for p in paths)))
    return Drawings(drawn, left_out, tuple(page_figures), tuple(files))
