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

from harness.report import build_report
from harness.report.tablefmt import to_latex
from harness.report.tables import Table

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
\setbox0\hbox{%(measured)s}
\typeout{TABLEWIDTH=\the\wd0}
\input{%(table)s}
\end{document}
"""


def _typeset(tex: str, folder: Path) -> dict[str, float | str]:
    """Compile ``tex`` (one table file) in the document above; the widths from the log, in points."""
    folder.mkdir(parents=True, exist_ok=True)
    size = re.search(r"^\\(footnotesize|scriptsize|small)$", tex, re.M)
    sep = re.search(r"\\setlength\{\\tabcolsep\}\{[^}]*\}", tex)
    tabular = re.search(r"\\begin\{tabular\}.*\\end\{tabular\}", tex, re.S)
    assert size and sep and tabular, tex[:500]
    (folder / "table.tex").write_text(tex)
    (folder / "doc.tex").write_text(DOCUMENT % {"measured": f"\\{size.group(1)}{sep.group(0)}{tabular.group(0)}",
                                                "table": "table.tex"})
    done = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    log = (folder / "doc.log").read_text(errors="replace")
    assert done.returncode == 0, log[-3000:]
    widths = {k: float(v) for k, v in re.findall(r"^(COLUMNWIDTH|TEXTWIDTH|TABLEWIDTH)=([\d.]+)pt$", log, re.M)}
    return {**widths, "log": log}


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
        assert "Overfull \\hbox" not in result["log"], path.name
        wide = r"\begin{table*}" in tex
        limit = result["TEXTWIDTH"] if wide else result["COLUMNWIDTH"]
        assert result["TABLEWIDTH"] <= limit, (path.name, "table*" if wide else "table", result["TABLEWIDTH"], limit)


def test_the_wide_cases_table_spans_both_columns(report):
    tex = (report.out / "tables" / "cases.tex").read_text()
    assert r"\begin{table*}" in tex and r"\end{table*}" in tex


def test_a_narrow_table_stays_in_one_column(tmp_path):
    shown = pd.DataFrame({"variant": ["mha", "mla"], "latency (ms)": ["0.243", "12.0"], "batch": ["1", "1,024"]})
    tex = to_latex(Table("narrow", "Narrow", shown, shown, "Two variants."))
    assert r"\begin{table}[t]" in tex and "table*" not in tex
    assert "S[table-format=2.3]" in tex and "1024" in tex and "1,024" not in tex  # siunitx groups the digits
    result = _typeset(tex, tmp_path / "narrow")
    assert result["TABLEWIDTH"] <= result["COLUMNWIDTH"]


def test_numbers_are_siunitx_columns_and_intervals_read_like_their_median(report):
    tex = (report.out / "tables" / "cases.tex").read_text()
    spec = re.search(r"\\begin\{tabular\}\{(.*)\}$", tex, re.M).group(1)
    assert spec.count("S[table-format=") >= 8  # latency, GB/s, FLOP/s, memory, ratios, batch, context
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
