"""Writers of a ``Table``: markdown, LaTeX (booktabs, siunitx) and CSV files, and an HTML fragment.

Each file format is one registered function; the report writes every registered format. LaTeX and
HTML go through pandas' ``Styler`` (``attnbench.harness.report.tables.latex`` lays out the LaTeX columns).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from attnbench.harness.report.tables import latex
from attnbench.harness.report.tables.views import Table
from attnbench.harness.text import escape

Writer = Callable[[Table], str]
WRITERS: dict[str, Writer] = {}


def writer(extension: str) -> Callable[[Writer], Writer]:
    def register(fn: Writer) -> Writer:
        WRITERS[extension] = fn
        return fn

    return register


def write_table(table: Table, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for extension, fn in WRITERS.items():
        path = folder / f"{table.name}.{extension}"
        path.write_text(fn(table), encoding="utf-8")
        paths.append(path)
    return paths


@writer("csv")
def to_csv(table: Table) -> str:
    # Full precision: the CSV is for re-analysis, not for reading.
    return table.raw.to_csv(index=False)


@writer("md")
def to_markdown(table: Table) -> str:
    below = f"\n{escape.markdown(table.below)}\n" if table.below else ""
    return (f"**{escape.markdown(table.title)}.** {escape.markdown(table.caption)}\n\n{markdown_grid(table.shown)}"
            f"{below}")


def markdown_grid(frame: pd.DataFrame) -> str:
    cell = escape.markdown  # device names, labels and notes are the user's text

    numeric = [_is_numeric(frame[c]) for c in frame.columns]
    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "×": r"$\times$", "†": r"\textdagger{}"}


def latex_escape(text: object) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


@writer("tex")
def to_latex(table: Table) -> str:
    """A booktabs table through pandas' Styler (``\\usepackage{booktabs,siunitx}``): numbers in siunitx
    ``S`` columns aligned on the decimal point, long text in wrapped columns, and a ``table*`` float (both
    columns of a two-column page) when the table is wider than one column."""
    return latex.table(table, escape=latex_escape)


def to_html(table: Table) -> str:
    """The table through pandas' Styler, sortable by a click on a header (``html.SORT_SCRIPT``), each
    number and interval on one line; long text (a reason, a list of runs) wraps."""
    frame = table.shown
    kinds = {c: "num" if _is_numeric(frame[c]) else "long" if _longest(frame[c]) > LONG_TEXT else "" for c in frame}
    styler = frame.style.hide(axis="index").format(escape="html")
    styler.set_td_classes(pd.DataFrame({c: [kinds[c]] * len(frame) for c in frame}, index=frame.index))
    styler.relabel_index([html.escape(str(c)) for c in frame.columns], axis="columns")
    out = styler.to_html(table_uuid=table.name, table_attributes='class="sortable"', cell_ids=False)
    # The caption above the table rather than in it: a <caption> is as wide as its table, and a wide
    # table's would run off the page.
    caption = f'<p class="caption"><b>{html.escape(table.title)}.</b> {html.escape(table.caption)}</p>'
    return caption + f'<div class="scroll">{out}</div>' + (
        f'<p class="below">{html.escape(table.below)}</p>' if table.below else "")


_NUMBER = re.compile(r"^-?[\d,]*\.?\d+(e[-+]?\d+)?(%|×| [KMGT]?i?B)?( \[.*\])?$|^\[.*\]$|^inf$|^\d+[kM]$")
LONG_TEXT = 40  # characters: a text column with a longer cell wraps (a reason, a list of runs)


def _longest(column: pd.Series) -> int:
    return max((len(str(v)) for v in column), default=0)


def _is_numeric(column: pd.Series) -> bool:
    """Text cells that read as numbers (``1,234``, ``[0.4, 0.6]``, ``12%``, ``1.2×``, ``4k``) align right."""
    values = [str(v) for v in column if str(v)]
    return bool(values) and all(_NUMBER.match(v) for v in values)
