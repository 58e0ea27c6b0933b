"""The low-rank study's part of a report: its headline table and its figures (registered in
``attnbench.harness.report.figures.lowrank`` and drawn like every other figure).

A study folder (``attnbench.harness.studies.lowrank``) holds ``lowrank-*.parquet`` files rather than harness row
files; ``split_inputs`` tells the two apart so one command reports either, or both together.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa

from attnbench.harness.errors import UserError
from attnbench.harness.report import figures as figure_registry
from attnbench.harness.report.figures.style import WIDTH_IN
from attnbench.harness.report.page.part import Part
from attnbench.harness.report.tables.formats import write_table
from attnbench.harness.report.tables.views import Table
from attnbench.harness.studies.lowrank.summary import summary_table
from attnbench.harness.text.units import number

PATTERN = "lowrank-*.parquet"


def _read_study(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as error:
        why = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UserError(f"unreadable study file {path}: delete it and run the study again; {why}") from None


def split_inputs(paths: Iterable[str | Path]) -> tuple[list[str | Path], pd.DataFrame | None]:
    """(paths holding harness rows, the low-rank study rows found among the inputs, or None)."""
    bench: list[str | Path] = []
    parts: list[pd.DataFrame] = []
    for item in paths:
        matches = [Path(m) for m in glob.glob(str(item), recursive=True)] or [Path(item)]
        study_files = [f for m in matches for f in ([m] if m.is_file() and m.match(PATTERN)
                                                  else sorted(m.glob(PATTERN)) if m.is_dir() else [])]
        parts += [_read_study(f) for f in study_files]
        if not study_files or any(m.is_dir() and any(m.rglob("rows/*.parquet")) for m in matches):
            bench.append(item)
    return bench, (pd.concat(parts, ignore_index=True) if parts else None)


def lowrank_part(rows: pd.DataFrame, out: Path, *, widths: Sequence[str] = tuple(WIDTH_IN),
                 figures: Sequence[str] | None = None) -> Part:
    summary = summary_table(rows)
    shown = summary.copy()
    for column in ("d_r", "d_c", "kv_bytes_per_token", "kv_vs_source", "perplexity", "ppl_vs_source",
                   "act_rel_err", "weight_rel_err"):
        shown[column] = summary[column].map(number)
    table = Table("lowrank_summary", "Low-rank conversion: GQA to MLA", summary, shown.astype(str),
                  "Per method and latent size d_c: KV bytes per token and layer (and the ratio to the source's), "
                  "whole-model perplexity (and its ratio), mean attention-output error on held-out tokens, mean "
                  "weight-space error. The first row is the unconverted source model.")
    files = write_table(table, out / "tables")
    drawings = figure_registry.draw_all(figure_registry.FigureInput.of_lowrank(rows), out, rows="lowrank",
                                        widths=widths, names=figures)
    files += drawings.files
    models = ", ".join(sorted(rows["model"].dropna().astype(str).unique()))
    texts = ", ".join(sorted(rows["text"].dropna().astype(str).unique())) if "text" in rows else ""
    raw = pd.DataFrame([{"study": "low-rank conversion", "model": models, "text": texts,
                         "rows": str(len(rows)), "ok": str(int((rows["status"] == "ok").sum()))}])
    sources = Table("lowrank_sources", "Where the study's rows came from", raw, raw.copy(),
                    "The low-rank study: model, evaluation text and row counts.")
    files += write_table(sources, out / "tables")
    note = f"Low-rank study of {models}: {len(summary) - 1} converted settings beside the source model."
    return Part(tables=(table,), sources=sources, notes=(note, *drawings.left_out.values()),
                figures=drawings.figures, files=tuple(files), drawn=drawings.drawn, left_out=drawings.left_out)
