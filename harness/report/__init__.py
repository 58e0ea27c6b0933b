"""Comparison reports from result rows: tables (markdown, LaTeX, CSV), publication figures (PDF and
300-dpi PNG at single- and double-column width) and one self-contained HTML page.

    python -m attnbench.harness.report results/my_sweep 'results/2026-*' --out report/ --filter phase=decode

    from attnbench.harness.report import build_report
    report = build_report("results/my_sweep", "report/")

Reads result files only: no GPU, no torch device. See README "Reports".
"""

from attnbench.harness.report.analysis.baseline import Baseline
from attnbench.harness.report.page.build import Report, build_report

__all__ = ["Baseline", "Report", "build_report"]
