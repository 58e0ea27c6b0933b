"""Build a report folder from result rows: tables, figures, a markdown summary and an HTML page.

    out/
      report.html               self-contained page (figures embedded): open it in any browser
      report.md                 the same in markdown, figures linked
      tables/<name>.{md,tex,csv}   cases, not_measured, capacity, throughput_budget, sources
      figures/<name>_<single|double>.{pdf,png}   one per registered figure with data
      manifest.txt              every file above; a rebuild into the folder removes the old ones first
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.report import figures as figure_registry
from harness.report.baseline import Baseline, with_ratios
from harness.report.budget import throughput_table
from harness.report.capacity import RESERVE, capacity_table
from harness.report.data import ReportData, load_rows, prepare
from harness.report.figures import FigureInput
from harness.report.html import PageFigure, page
from harness.report.lowrank import lowrank_part
from harness.report.part import Part
from harness.report.style import WIDTH_IN, width_inches
from harness.report.tablefmt import markdown_grid, write_table
from harness.report.tables import (Table, capacity_view, cases_table, not_measured_table, sources_table,
                                   throughput_view)

MANIFEST = "manifest.txt"
DEFAULT_BASELINE = Baseline()  # MHA with the eager implementation
TITLE = "attnbench report"


@dataclass(frozen=True)
class Report:
    out: Path
    files: tuple[Path, ...]  # every file written, the manifest included
    notes: tuple[str, ...]
    figures: Mapping[str, str]  # figure name -> caption if drawn
    left_out: Mapping[str, str]  # figure name -> why it was left out
    devices: tuple[str, ...]


def build_report(rows: pd.DataFrame | str | Path | Iterable[str | Path], out: str | Path, *,
                 filters: Mapping[str, Iterable[str]] | None = None, baseline: Baseline = DEFAULT_BASELINE,
                 budget_bytes: int | None = None, batches: Sequence[int] | None = None, reserve: float = RESERVE,
                 widths: Sequence[str] = tuple(WIDTH_IN), figures: Sequence[str] | None = None,
                 command: str = "python -m harness.report", lowrank: pd.DataFrame | None = None) -> Report:
    """Write the report of ``rows`` (a DataFrame from ``harness.results.load``, or paths and globs),
    and of a low-rank study's rows (``harness.studies.lowrank``) when ``lowrank`` is given."""
    for width in widths:
        width_inches(width)  # a ValueError naming the valid widths
    known = [spec.name for spec in figure_registry.specs()]
    for name in figures or ():
        if name not in known:
            raise ValueError(f"figure {name!r} is not one of: {', '.join(known)}")
    if isinstance(rows, pd.DataFrame):
        frame = rows
    elif lowrank is not None and not list(rows if not isinstance(rows, (str, Path)) else [rows]):
        frame = pd.DataFrame()  # a low-rank study alone
    else:
        frame = load_rows(rows)
    out = Path(out)
    # Every setting is checked before the folder is touched: a bad one leaves an earlier report whole.
    if not 0 <= reserve < 1:
        raise ValueError(f"reserve={reserve!r} is not allowed: it must be in [0, 1)")
    for width in widths:
        width_inches(width)
    if not frame.empty:
        prepare(frame, filters)
    _clear_previous(out)
    part = Part()
    if not frame.empty:
        part = _benchmark_part(frame, out, filters=filters, baseline=baseline, budget_bytes=budget_bytes,
                               batches=batches, reserve=reserve, widths=widths, figures=figures)
    if lowrank is not None:
        part = part.plus(lowrank_part(lowrank, out, widths=widths, figures=figures))
    files = list(part.files)
    sources = part.sources or Table("sources", "Where the rows came from", pd.DataFrame(), pd.DataFrame(), "")
    files.append(_write(out / "report.md", _markdown(command, sources, part.notes, part.tables, part.figures, out)))
    files.append(_write(out / "report.html", page(title=TITLE, command=command, sources=sources, notes=part.notes,
                                                  tables=part.tables, figures=part.figures)))
    manifest = out / MANIFEST
    files.append(manifest)
    manifest.write_text("".join(f"{p.relative_to(out)}\n" for p in files), encoding="utf-8")
    return Report(out, tuple(files), tuple(part.notes), part.drawn, part.left_out, part.devices)


def _benchmark_part(frame: pd.DataFrame, out: Path, *, filters: Mapping[str, Iterable[str]] | None,
                    baseline: Baseline, budget_bytes: int | None, batches: Sequence[int] | None, reserve: float,
                    widths: Sequence[str], figures: Sequence[str] | None) -> Part:
    """Tables and figures of harness rows."""
    data = prepare(frame, filters)
    ok, baseline_notes = with_ratios(data.ok, baseline)
    capacity, capacity_notes = capacity_table(data.all_rows, ok, budget_bytes=budget_bytes, batches=batches,
                                              reserve=reserve)
    throughput, throughput_notes = throughput_table(ok, budget_bytes=budget_bytes, reserve=reserve,
                                                    baseline_variant=baseline.variant)
    notes = [_devices_note(data), *data.notes, *baseline_notes, *capacity_notes, *throughput_notes]
    tables = _tables(data, ok, capacity, baseline, notes)
    if not throughput.empty:
        tables.append(throughput_view(throughput))
    sources = sources_table(data.all_rows)
    files: list[Path] = []
    for table in (*tables, sources):
        files += write_table(table, out / "tables")

    inputs = FigureInput(ok=ok, capacity=capacity, budget_bytes=budget_bytes, reserve=reserve)
    drawings = figure_registry.draw_all(inputs, out, rows="measured", widths=widths, names=figures)
    notes += drawings.left_out.values()
    files += drawings.files
    return Part(tuple(tables), sources, tuple(notes), drawings.figures, tuple(files), drawings.drawn, drawings.left_out,
                tuple(data.devices()))


def _tables(data: ReportData, ok: pd.DataFrame, capacity: pd.DataFrame, baseline: Baseline,
            notes: list[str]) -> list[Table]:
    tables = []
    if not ok.empty:
        tables.append(cases_table(ok, baseline_label=baseline.label()))
    if not data.not_measured.empty:
        tables.append(not_measured_table(data.not_measured))
    else:
        notes.append("Every case in the selection was measured: no 'cases not measured' table.")
    if not capacity.empty:
        tables.append(capacity_view(capacity))
    return tables


def _devices_note(data: ReportData) -> str:
    rows = data.all_rows
    counts = rows.groupby("env_device_name").size()
    listed = "; ".join(f"{device} ({n} row(s))" for device, n in counts.items())
    return (f"Rows from {len(counts)} device(s): {listed}. Figures draw each device on its own panel; "
            "no curve mixes devices.")


def _clear_previous(out: Path) -> None:
    """Remove what an earlier build listed in its manifest, so no stale figure survives; nothing else."""
    manifest = out / MANIFEST
    if not manifest.exists():
        out.mkdir(parents=True, exist_ok=True)
        return
    for line in manifest.read_text(encoding="utf-8").splitlines():
        path = (out / line).resolve()
        if line and path.is_relative_to(out.resolve()) and path.is_file():
            path.unlink()
    manifest.unlink(missing_ok=True)  # it lists itself


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _markdown(command: str, sources: Table, notes: Sequence[str], tables: Sequence[Table],
              figures: Sequence[PageFigure], out: Path) -> str:
    """The page's order: figures, notes, tables, sources."""
    lines = [f"# {TITLE}", "", f"Made by `{command}`.", ""]
    if figures:
        lines += ["## Figures", ""]
        for fig in figures:
            lines += [f"![{fig.title}]({fig.png.relative_to(out)})", "", f"**{fig.title}.** {fig.caption} "
                      f"Files: {', '.join(f'`{f}`' for f in fig.files)}", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    for table in (*tables, sources):
        lines += [f"## {table.title}", "", f"{table.caption}", "", markdown_grid(table.shown)]
        lines += [table.below, ""] if table.below else []
    return "\n".join(lines)
