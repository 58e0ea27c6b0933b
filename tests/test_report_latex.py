"""Every LaTeX table the report writes compiles with pdflatex in a minimal two-column paper
(``\\documentclass[twocolumn]{article}`` with ``\\usepackage{booktabs,siunitx}`` and nothing else) and
fits it: a ``table`` within ``\\columnwidth``, a ``table*`` within ``\\textwidth``, measured from the
typeset box. Skips, with the reason, where pdflatex or siunitx is not installed (Debian:
``apt-get install texlive-latex-recommended texlive-science``; ``.ci/run`` installs them)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from attnbench.harness.report import build_report
from attnbench.harness.report.tables.formats import to_latex
from attnbench.harness.report.tables.views import Table

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report_sweep"
PDFLATEX = shutil.which("pdflatex")


def _missing() -> str | None:
    if PDFLATEX is None:
        return "no pdflatex on PATH (Debian: apt-get install texlive-latex-recommended texlive-science)"
    found = subprocess.run(["kpsewhich", "siunitx.sty", "booktabs.sty"], capture_output=True, text=True)
    if len(found.stdout.split()) < 2:
        return "pdflatex has no siunitx or booktabs (Debian: apt-get install texlive-latex-recommended texlive-science)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")

DOCUMENT = r"""\documentclass[twocolumn]{article}
\usepackage{booktabs,siunitx}
\begin{document}
\typeout{COLUMNWIDTH=\the\columnwidth}
\typeout{TEXTWIDTH=\the\textwidth}
%(measured)s
\input{%(table)s}
\end{document}
"""


def _typeset(tex: str, folder: Path) -> dict[str, float | str]:
    """Compile ``tex`` (one table file) in the document above; the widths from the log, in points."""
    folder.mkdir(parents=True, exist_ok=True)
    size = re.search(r"^\\(footnotesize|scriptsize|small)$", tex, re.M)
    sep = re.search(r"\\setlength\{\\tabcolsep\}\{[^}]*\}", tex)
    tabulars = re.findall(r"\\begin\{tabular\}.*?\\end\{tabular\}", tex, re.S)
    assert size and sep and tabulars, tex[:500]
    (folder / "table.tex").write_text(tex)
    # Each float's tabular measured in a box of its own, in the table's type size and column space.
    measured = "".join(rf"\setbox0\hbox{{\{size.group(1)}{sep.group(0)}{t}}}\typeout{{TABLEWIDTH=\the\wd0}}" "\n"
                       for t in tabulars)
    (folder / "doc.tex").write_text(DOCUMENT % {"measured": measured, "table": "table.tex"})
    done = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    log = (folder / "doc.log").read_text(errors="replace")
    assert done.returncode == 0, log[-3000:]
    widths = {k: float(v) for k, v in re.findall(r"^(COLUMNWIDTH|TEXTWIDTH)=([\d.]+)pt$", log, re.M)}
    # The widest float's tabular: every one must fit.
    tables = [float(v) for v in re.findall(r"^TABLEWIDTH=([\d.]+)pt$", log, re.M)]
    assert len(tables) == len(tabulars), log[-2000:]
    return {**widths, "TABLEWIDTH": max(tables), "log": log}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    # A budget in reach of the fixture's batches, so the throughput table holds latencies, not only reasons.
    return build_report(FIXTURE, tmp_path_factory.mktemp("report"), budget_bytes=2 * 2**20, widths=("single",),
                        figures=("latency",), command="pytest")


def test_every_table_compiles_in_a_two_column_paper_and_fits(report, tmp_path):
    tables = sorted(report.out.glob("tables/*.tex"))
    names = {p.stem for p in tables}
    assert {"cases", "not_measured", "capacity", "throughput_budget", "sources"} <= names
    for path in tables:
        tex = path.read_text()
        assert r"\toprule" in tex and r"\bottomrule" in tex, path.name
        result = _typeset(tex, tmp_path / path.stem)
        # A float taller than the page loses its last rows off the page (the 112-row cases table did).
        for warning in ("Overfull \\hbox", "Overfull \\vbox", "Float too large"):
            assert warning not in result["log"], (path.name, warning)
        wide = r"\begin{table*}" in tex
        limit = result["TEXTWIDTH"] if wide else result["COLUMNWIDTH"]
        assert result["TABLEWIDTH"] <= limit, (path.name, "table*" if wide else "table", result["TABLEWIDTH"], limit)


def test_the_wide_cases_table_spans_both_columns_in_floats_that_fit_a_page(report):
    tex = (report.out / "tables" / "cases.tex").read_text()
    assert r"\begin{table*}" in tex and r"\end{table*}" in tex
    floats = tex.split(r"\begin{table*}")[1:]
    assert len(floats) >= 2, len(floats)  # 112 rows do not fit one page
    rows = [f.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0].count("\\\\") for f in floats]
    assert sum(rows) == 112 and max(rows) <= 42, rows  # every row, none past a page's height
    # Split by phase and batch, named in the captions rather than in columns of repeated values.
    assert "{phase}" not in tex and "{batch}" not in tex
    assert "Here: phase decode; batch 1." in floats[0] and "phase prefill; batch 1." in floats[-1]
    assert r"\label{tab:cases}" in floats[0] and f"part {len(floats)} of {len(floats)}" in floats[-1]
    assert "table-format" in tex and "group-digits=integer" in tex  # never "0.004 48"
    assert re.findall(r"\\setlength\{\\tabcolsep\}\{([\d.]+)pt\}", tex) and all(
        float(s) >= 3 for s in re.findall(r"\\setlength\{\\tabcolsep\}\{([\d.]+)pt\}", tex))


def test_a_narrow_table_stays_in_one_column(tmp_path):
    shown = pd.DataFrame({"variant": ["mha", "mla"], "latency (ms)": ["0.243", "12.0"], "batch": ["1", "1,024"]})
    tex = to_latex(Table("narrow", "Narrow", shown, shown, "Two variants."))
    assert r"\begin{table}[t]" in tex and "table*" not in tex
    # siunitx groups the integer digits, never the decimals
    assert "S[table-format=2.3,group-digits=integer]" in tex and "1024" in tex and "1,024" not in tex
    result = _typeset(tex, tmp_path / "narrow")
    assert result["TABLEWIDTH"] <= result["COLUMNWIDTH"]


def test_numbers_are_siunitx_columns_and_intervals_read_like_their_median(report):
    tex = (report.out / "tables" / "cases.tex").read_text()
    spec = re.search(r"\\begin\{tabular\}\{(.*)\}$", tex, re.M).group(1)
    # latency, GB/s, FLOP/s, memory, ratios, context (phase and batch are in the captions): aligned on the
    # point, or right-aligned where magnitudes differ so much that aligning would waste two digits or more.
    assert spec.count("S[table-format=") + spec.count("S[table-alignment-mode=none") >= 9, spec
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0].splitlines()
    rows = [line for line in body if "[" in line]
    assert len(rows) > len(body) // 2  # most cases have an interval
    for line in rows:
        median, interval = re.search(r"& ([\d.]+) & \[([^\]]*)\]", line).groups()
        decimals = len(median.partition(".")[2])
        assert all(len(b.strip().partition(".")[2]) == decimals for b in interval.split(",")), line


def test_the_capacity_table_states_what_it_assumes(report):
    tex = (report.out / "tables" / "capacity.tex").read_text()
    below = tex.split(r"\end{tabular}", 1)[1]
    for words in ("attention", "KV cache", "reserve", "MLP", "embeddings", "layers", "float32"):
        assert words in below, words
