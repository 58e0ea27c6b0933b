"""Build a report folder from result rows: tables, figures, a markdown summary and an HTML page.

    out/
      report.html               self-contained page (figures embedded): open it in any browser
      report.md                 the same in markdown, figures linked
      tables/<name>.{md,tex,csv}   cases, not_measured, capacity, throughput_budget, sources
      figures/<name>_<single|double>.{pdf,png}   one per registered figure with data
      manifest.txt              every file above with its SHA-256: what a rebuild may replace

The report is written into a hidden sibling folder and renamed into place when it is complete: a
build that fails or is killed leaves the previous report whole (and no half-written file under
``out``), and a rebuild leaves no stale file. A rebuild replaces only files the manifest lists with
their content unchanged; a folder that holds anything else (a file of the user's, a file edited
since, a manifest this report did not write) is refused, naming the file, and left as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from attnbench.harness.errors import UserError
from attnbench.harness.report import figures as figure_registry
from attnbench.harness.report.analysis.baseline import Baseline, with_ratios
from attnbench.harness.report.analysis.budget import throughput_table
from attnbench.harness.report.analysis.capacity import RESERVE, capacity_table
from attnbench.harness.report.data import ReportData, load_rows, prepare
from attnbench.harness.report.figures import FigureInput, PageFigure
from attnbench.harness.report.figures.style import WIDTH_IN, width_inches
from attnbench.harness.report.page import against
from attnbench.harness.report.page.against import Against
from attnbench.harness.report.page.html import page
from attnbench.harness.report.page.lowrank import lowrank_part
from attnbench.harness.report.page.part import Part
from attnbench.harness.report.tables.formats import markdown_grid, write_table
from attnbench.harness.report.tables.views import (Table, capacity_view, cases_table, not_measured_table, sources_table,
                                         throughput_view)
from attnbench.harness.text.repro import markdown_lines
from attnbench.harness.text import escape

MANIFEST = "manifest.txt"
# The manifest's first line: a manifest without it was not written by this report, and lists nothing it may replace.
MANIFEST_HEADER = "# attnbench report manifest v2: sha256  path, one line per file this report wrote"
_log = logging.getLogger(__name__)
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
    against: Against | None = None  # the comparison with earlier rows, when asked for


def build_report(rows: pd.DataFrame | str | Path | Iterable[str | Path], out: str | Path, *,
                 filters: Mapping[str, Iterable[str]] | None = None, baseline: Baseline = DEFAULT_BASELINE,
                 budget_bytes: int | None = None, batches: Sequence[int] | None = None, reserve: float = RESERVE,
                 widths: Sequence[str] = tuple(WIDTH_IN), figures: Sequence[str] | None = None,
                 command: str = "python -m attnbench.harness.report", lowrank: pd.DataFrame | None = None,
                 against_old: pd.DataFrame | None = None) -> Report:
    """Write the report of ``rows`` (a DataFrame from ``attnbench.harness.results.load``, or paths and globs),
    and of a low-rank study's rows (``attnbench.harness.studies.lowrank``) when ``lowrank`` is given;
    ``against_old``: earlier rows to compare with (``against/``, in the manifest like every file here)."""
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
    if out.is_symlink():  # the folder the user named, not the link: the link stays
        out = out.resolve()
    _check_only_report_files(out)  # before any work: a refusal costs nothing
    building = _beside(out, "building")
    try:
        building.mkdir(parents=True)
        compared = None
        if against_old is not None:  # written before the manifest, so a rebuild may replace them
            new_ok, old_ok = (prepare(r, filters).ok for r in (frame, against_old))
            against_files, compared = against.write(new_ok, old_ok, building)
        part = _write_all(frame, building, command=command, filters=filters, baseline=baseline,
                          budget_bytes=budget_bytes, batches=batches, reserve=reserve, widths=widths, figures=figures,
                          lowrank=lowrank,
                          extra=() if compared is None else tuple(f.relative_to(building) for f in against_files))
        _swap_in(building, out)
    except OSError as error:  # named by the folder the user gave, not the hidden one beside it
        if error.filename is None or not str(error.filename).startswith(str(building)):
            raise
        raise OSError(error.errno, error.strerror, str(out)) from error
    finally:
        shutil.rmtree(building, ignore_errors=True)  # only left when the build failed: all of it ours
    files = [out / p for p in part.files]
    return Report(out, tuple(files), tuple(part.notes), part.drawn, part.left_out, part.devices, compared)


def _write_all(frame: pd.DataFrame, out: Path, *, command: str, filters: Mapping[str, Iterable[str]] | None,
               baseline: Baseline, budget_bytes: int | None, batches: Sequence[int] | None, reserve: float,
               widths: Sequence[str], figures: Sequence[str] | None, lowrank: pd.DataFrame | None,
               extra: tuple[Path, ...] = ()) -> Part:
    """Every file of the report under ``out`` (a fresh folder), the manifest last; the part's files
    are returned relative to ``out``. ``extra``: files already written there (``against/``), listed too."""
    part = Part()
    if not frame.empty:
        part = _benchmark_part(frame, out, filters=filters, baseline=baseline, budget_bytes=budget_bytes,
                               batches=batches, reserve=reserve, widths=widths, figures=figures)
    if lowrank is not None:
        part = part.plus(lowrank_part(lowrank, out, widths=widths, figures=figures))
    files = [*part.files, *(out / p for p in extra)]
    sources = part.sources or Table("sources", "Where the rows came from", pd.DataFrame(), pd.DataFrame(), "")
    files.append(_write(out / "report.md", _markdown(command, sources, part.notes, part.tables, part.figures, out)))
    files.append(_write(out / "report.html", page(title=TITLE, command=command, sources=sources, notes=part.notes,
                                                  tables=part.tables, figures=part.figures)))
    relative = [p.relative_to(out) for p in files]
    lines = [MANIFEST_HEADER, *(f"{_sha256(out / p)}  {p.as_posix()}" for p in relative)]
    _write(out / MANIFEST, "\n".join(lines) + "\n")
    return dataclasses.replace(part, files=(*relative, Path(MANIFEST)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listed(out: Path) -> dict[str, str] | None:
    """``{path: sha256}`` of the report manifest in ``out``; None when there is none written by this report."""
    manifest = out / MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        return None
    lines = manifest.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or lines[0] != MANIFEST_HEADER:
        return None
    listed = {}
    for line in lines[1:]:
        digest, sep, name = line.partition("  ")
        if sep and len(digest) == 64:
            listed[name] = digest
    return listed


def _check_only_report_files(out: Path) -> None:
    """``UserError`` naming the first file in ``out`` that this report did not write (or that changed
    since): a rebuild replaces the folder, so it must hold nothing else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; give a folder to write the report to")
    listed = _listed(out) or {}
    for path in sorted(out.rglob("*")):
        name = path.relative_to(out).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        ours = (name == MANIFEST and _listed(out) is not None) or (
            not path.is_symlink() and name in listed and _sha256(path) == listed[name])
        if not ours:
            raise UserError(f"--out {out} holds {path}, which no attnbench report wrote there (or it changed "
                            "since): give an empty or new folder, or move that file away; nothing was changed")


def _swap_in(building: Path, out: Path) -> None:
    """Rename the finished report to ``out``; the previous report (checked again: only report files)
    is renamed aside first and removed file by file, as its manifest lists them."""
    if not out.exists():
        os.rename(building, out)
        return
    _check_only_report_files(out)
    old = _beside(out, "old")
    os.rename(out, old)
    os.rename(building, out)
    _remove_report(old)


def _beside(out: Path, kind: str) -> Path:
    """A hidden, unique sibling of ``out`` (same file system, so a rename moves it in one step)."""
    absolute = Path(os.path.abspath(out))  # "." and "sub/.." have no name of their own
    return absolute.parent / f".{absolute.name}.{kind}-{uuid.uuid4().hex[:12]}"


def _remove_report(folder: Path) -> None:
    """Delete the files the report's manifest lists with their content unchanged, then the empty
    folders; anything else stays (and the folder with it, named in a warning)."""
    listed = _listed(folder) or {}
    for name, digest in listed.items():
        path = folder / name
        if path.is_file() and not path.is_symlink() and _sha256(path) == digest:
            path.unlink()
    if listed:
        (folder / MANIFEST).unlink(missing_ok=True)
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
    if any(folder.iterdir()):
        _log.warning("the previous report's folder %s holds files it did not write; it is kept", folder)
    else:
        folder.rmdir()


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


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _markdown(command: str, sources: Table, notes: Sequence[str], tables: Sequence[Table],
              figures: Sequence[PageFigure], out: Path) -> str:
    """The page's order: figures, notes, tables, sources."""
    md = escape.markdown  # titles, captions and notes carry device, model and host names: the user's text
    lines = [f"# {TITLE}", "", f"Made by {escape.code(command)}.", ""]
    if figures:
        lines += ["## Figures", ""]
        for fig in figures:
            lines += [f"![{md(fig.title)}]({fig.png.relative_to(out).as_posix()})", "",
                      f"**{md(fig.title)}.** {md(fig.caption)} Files: {', '.join(escape.code(f) for f in fig.files)}",
                      ""]
    if notes:
        lines += ["## Notes", "", *(f"- {md(note)}" for note in notes), ""]
    for table in (*tables, sources):
        lines += [f"## {md(table.title)}", "", f"{md(table.caption)}", "", markdown_grid(table.shown)]
        lines += [md(table.below), ""] if table.below else []
        if table.name == "cases" and "repro" in table.raw.columns:  # cases.csv holds them too
            lines += markdown_lines(table.raw["repro"], what="case")
    return "\n".join(lines)
