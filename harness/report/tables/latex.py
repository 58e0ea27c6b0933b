"""A report ``Table`` as a LaTeX float through pandas' Styler: booktabs rules, siunitx ``S`` columns.

Needs ``\\usepackage{booktabs,siunitx}`` and nothing else. Each column whose every cell is a plain
number becomes ``S[table-format=...]`` (aligned on the decimal point; siunitx groups the
thousands, so the cells carry no commas); other columns are text, right-aligned when they read as
numbers (``4k``, ``[0.240, 0.260]``), wrapped in a fixed-width box when a cell is long (a reason, a
list of runs). Headers are set on as many lines as their cells are wide. The table is set in
``\\footnotesize``, or ``\\scriptsize`` when that alone fits it across the page; one wider than a
column of a two-column page (``COLUMN_PT``, estimated from its characters) is a ``table*`` across
both. A table taller than a page (the cases table of a sweep: 112 rows) is split into several floats
of about equal height, each with its header and a "continued" caption: ``longtable`` refuses
two-column mode and ``supertabular``/``xtab`` are not in texlive-latex-recommended, while floats of
at most ``ROWS_PT`` of rows compile in any two-column class and keep the float placement authors
expect. tests/test_report_latex.py typesets every table with pdflatex and checks the real widths and
that the log has no "Float too large" and no overfull box.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from attnbench.harness.report.tables.views import Table

# Type sizes of a 10 pt paper, the space each side of a column (LaTeX's default is 6 pt; below 3 pt
# an interval column touches its neighbour) and the baseline skip of a row.
SIZES = (("footnotesize", 8.0, 3.0, 9.5), ("scriptsize", 7.0, 3.0, 8.0))
# Height left for a float's rows: LaTeX's two-column article has a 550 pt text height (letter paper;
# ACM and IEEE pages are taller), less the header, a caption of a few lines and the note below.
ROWS_PT = 340.0
# siunitx groups thousands only (1 024 576), never the decimals ("0.004 48" reads as two numbers).
S_OPTIONS = "group-digits=integer"
GROUP_COLUMNS = ("phase", "batch")  # leading columns a too-tall table is split by
# Widths at 8 pt Computer Modern (cmr8), a little above the real ones so an estimate errs towards wide.
DIGIT_PT = 4.3  # digits and the decimal point: 4.25 pt
_CHAR_PT = {"upper": 6.4, "lower": 4.5, "space": 2.9, "other": 3.6}


def text_pt(text: str) -> float:
    """The width of ``text`` at 8 pt, by kind of character."""
    return sum(DIGIT_PT if ch.isdigit() else _CHAR_PT["upper"] if ch.isupper() else _CHAR_PT["lower"]
               if ch.isalpha() else _CHAR_PT["space"] if ch == " " else _CHAR_PT["other"] for ch in text)


# One column of a two-column page: ACM sigconf 241 pt, ICML 234 pt, IEEEtran 252 pt, LaTeX's own
# two-column article 229.5 pt; both columns: 469 pt (article) to 516 pt (IEEEtran).
COLUMN_PT = 229.5
TEXT_PT = 469.0
LONG_TEXT = 30  # characters: a text column with a longer cell is a wrapped box this wide
_PLAIN = re.compile(r"^(-?)(\d+)(?:\.(\d+))?(?:e([-+])(\d+))?$")


@dataclass(frozen=True)
class Layout:
    spec: str  # the column's tabular specifier: S[table-format=2.3], l, r
    cells: list[str]
    header: str
    width_pt: float  # estimated at 8 pt
    lines: tuple[int, ...] = ()  # lines per cell of a wrapped column (empty: one each)


def table(table: Table, *, escape: Callable[[object], str]) -> str:
    frame = table.shown.reset_index(drop=True)
    layouts = [_layout(str(column), frame[column], escape) for column in frame.columns]
    # A table taller than a page is split by its leading group columns (phase, batch), named in each
    # float's caption instead of in a column of repeated values: the room they free lets the widest table
    # keep 3 pt between columns.
    tall = sum(_row_lines(layouts, len(frame))) > ROWS_PT // SIZES[-1][3]
    keys = [c for c in frame.columns[:len(GROUP_COLUMNS)] if tall and c in GROUP_COLUMNS]
    groups = ([(dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)), rows.index)
               for key, rows in frame.groupby(keys, sort=False)] if keys else [({}, frame.index)])
    layouts = [lay for column, lay in zip(frame.columns, layouts, strict=True) if column not in keys]
    at_8pt = sum(lay.width_pt for lay in layouts)

    def width(points: float, sep: float) -> float:
        return at_8pt * points / 8 + 2 * sep * len(layouts)

    # The first size whose table fits across the page (else the smallest); one column if it fits there.
    size, points, sep, skip = next((s for s in SIZES if width(s[1], s[2]) <= TEXT_PT), SIZES[-1])
    environment = "table*" if width(points, sep) > COLUMN_PT else "table"
    body = pd.DataFrame({i: lay.cells for i, lay in enumerate(layouts)}, index=frame.index)
    lines = _row_lines(layouts, len(frame))
    parts = [(named, [rows[i] for i in part]) for named, rows in groups
             for part in _parts([lines[i] for i in rows], int(ROWS_PT // skip))]
    floats = []
    for number, (named, rows) in enumerate(parts, start=1):
        which = "; ".join(f"{k} {v}" for k, v in named.items())
        caption = (escape(table.caption) + (f" Here: {escape(which)}." if which else "") if number == 1 else
                   f"{escape(table.title)} (continued, part {number} of {len(parts)})"
                   + (f": {escape(which)}." if which else "."))
        tex = _float(body.loc[rows], layouts, size=size, sep=sep, environment=environment, caption=caption,
                     label=f"tab:{table.name}" + (f"-{number}" if number > 1 else ""))
        if table.below and number == len(parts):  # under the rules, inside the float, in the table's type size
            tex = tex.replace(rf"\end{{{environment}}}",
                              rf"\par\smallskip{{\{size}\raggedright {escape(table.below)}\par}}" "\n"
                              rf"\end{{{environment}}}")
        floats.append(tex)
    return ("% Needs \\usepackage{booktabs,siunitx}. Generated by python -m attnbench.harness.report.\n"
            + "".join(floats))


def _float(body: pd.DataFrame, layouts: list[Layout], *, size: str, sep: float, environment: str, caption: str,
           label: str) -> str:
    styler = body.style.hide(axis="index")
    # relabel_index reads each label as a format string: braces are doubled to stay braces.
    styler.relabel_index([lay.header.replace("{", "{{").replace("}", "}}") for lay in layouts], axis="columns")
    styler.set_table_styles([{"selector": size, "props": ":;"},
                             {"selector": "setlength", "props": rf":{{\tabcolsep}}{{{sep:g}pt}};"}],
                            overwrite=False)
    return styler.to_latex(column_format="".join(lay.spec for lay in layouts), environment=environment,
                           position="t", position_float="centering", hrules=True, siunitx=True,
                           caption=caption, label=label)


def _row_lines(layouts: list[Layout], num_rows: int) -> list[int]:
    """Lines each row takes: the most of its wrapped cells, else one."""
    return [max((lay.lines[i] for lay in layouts if lay.lines), default=1) for i in range(num_rows)]


def _parts(lines: list[int], per_float: int) -> list[list[int]]:
    """Rows split into the fewest floats of at most ``per_float`` lines, of about equal height."""
    num_parts = max(1, -(-sum(lines) // per_float))
    while True:
        target = sum(lines) / num_parts
        parts: list[list[int]] = [[]]
        height = 0
        for i, n in enumerate(lines):
            if parts[-1] and (height + n > per_float or height >= target):
                parts.append([])
                height = 0
            parts[-1].append(i)
            height += n
        if len(parts) <= num_parts:
            return parts
        num_parts += 1


def _layout(header: str, column: pd.Series, escape: Callable[[object], str]) -> Layout:
    texts = ["" if v is None or pd.isna(v) else str(v) for v in column]
    plain = [t.replace(",", "") for t in texts]
    matches = [_PLAIN.match(t) for t in plain if t]
    if matches and all(matches):
        form = _table_format(matches)
        # Characters siunitx reserves: sign, integer digits, point and decimals; x10^ about two digits more.
        decimals = max(len(m.group(3) or "") for m in matches)
        room = (any(m.group(1) for m in matches) + max(len(m.group(2)) for m in matches) + decimals + (decimals > 0)
                + max((len(m.group(5)) + 2 for m in matches if m.group(5)), default=0))
        widest = max(len(t) for t in plain if t) + 2 * ("e" in form)
        if room - widest >= 2:  # 3 significant digits from 0.00448 to 62.7: aligning the points costs 2+ digits
            return Layout(f"S[table-alignment-mode=none,table-number-alignment=right,{S_OPTIONS}]", plain,
                          _header(header, widest, "c", escape), max(widest * DIGIT_PT, _header_pt(header, widest)))
        return Layout(f"S[table-format={form},{S_OPTIONS}]", plain, _header(header, room, "c", escape),
                      max(room * DIGIT_PT, _header_pt(header, room)))
    widest = max((len(t) for t in texts), default=0)
    if widest > LONG_TEXT:
        chars = max(LONG_TEXT, *(len(word) for t in texts for word in t.split()))  # a hash does not break
        box = max(text_pt(t) for t in texts) * chars / widest  # about ``chars`` characters of this text
        # In em, so the box shrinks with the type size as the text does.
        cells = [rf"\parbox[t]{{{box / 8:.1f}em}}{{\raggedright {escape(t)}}}" if t else "" for t in texts]
        lines = tuple(max(1, -(-len(t) // chars)) for t in texts)
        return Layout("l", cells, _header(header, chars, "l", escape), round(box / 8, 1) * 8, lines)
    align = "r" if texts and all(re.match(r"^[-\d\[]", t) for t in texts if t) else "l"
    return Layout(align, [escape(t) for t in texts], _header(header, widest, align, escape),
                  max(max((text_pt(t) for t in texts), default=0), _header_pt(header, widest)))


def _table_format(matches: list[re.Match[str]]) -> str:
    """siunitx's room for the column: sign, integer digits, decimals, exponent (``-3.2e-2``)."""
    sign = "-" if any(m.group(1) for m in matches) else ""
    integer = max(len(m.group(2)) for m in matches)
    decimals = max(len(m.group(3) or "") for m in matches)
    form = f"{sign}{integer}" + (f".{decimals}" if decimals else "")
    exponents = [m for m in matches if m.group(5)]
    if exponents:
        form += ("e-" if any(m.group(4) == "-" for m in exponents) else "e") + str(max(len(m.group(5))
                                                                                   for m in exponents))
    return form


def _lines(header: str, width: int) -> list[str]:
    """The header's words packed into lines of at most ``width`` characters (at least 10); a
    hyphenated word may break after its hyphen (``speed-`` / ``up``)."""
    lines: list[str] = []
    for word in re.sub(r"(\w)-(\w)", r"\1- \2", header).split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= max(width, 10):
            lines[-1] += word if lines[-1].endswith("-") else f" {word}"
        else:
            lines.append(word)
    return lines


def _header_pt(header: str, width: int) -> float:
    return max(text_pt(line) for line in _lines(header, width))


def _header(header: str, width: int, align: str, escape: Callable[[object], str]) -> str:
    lines = _lines(header, width)
    if len(lines) == 1:
        return escape(header)
    stacked = r" \\ ".join(escape(line) for line in lines)
    return rf"\shortstack[{align}]{{{stacked}}}"
