"""``python -m harness.report.page.gallery [--out docs/figures]``: every figure kind the committed report
fixtures (``tests/fixtures/report_sweep`` and ``sparse_sweep``, real CPU results) draw, at single-column width, as small
PNGs for the docs, at a memory budget scaled to the fixture (``BUDGET_BYTES``). The figures are the
report's own (``harness.report.figures.draw``), so the gallery changes exactly when the report does;
figures the fixture cannot feed (energy: no NVML on a CPU; the low-rank study's: no study rows) are
listed as left out, never drawn empty.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from harness import results
from harness.report import figures
from harness.report.analysis.baseline import Baseline, with_ratios
from harness.report.analysis.capacity import RESERVE
from harness.report.data import prepare
from harness.report.figures import FigureInput
from harness.report.figures.style import figure_style

FIXTURES = tuple(Path(__file__).resolve().parents[3] / "tests" / "fixtures" / name
                 for name in ("report_sweep", "sparse_sweep"))
GALLERY_DPI = 120  # legible on screen (420 px wide), tens of kB each: the docs stay small in git
# The memory budget of the capacity and throughput figures, scaled to the fixture's tiny model as a CPU
# run scales 80 GB: every variant's largest batch in it lies inside the fixture's batches (1-64).
BUDGET_BYTES = 2 * 2**20


def gallery(out: Path, *, sources: tuple[Path, ...] = FIXTURES) -> tuple[list[Path], dict[str, str]]:
    """Draw each registered figure of measured rows from ``sources`` into ``out/<name>.png``;
    returns the files written and, per figure left out, why."""
    ok, _ = with_ratios(prepare(results.load(list(sources))).ok, Baseline())
    data = FigureInput(ok=ok, capacity=pd.DataFrame(), budget_bytes=BUDGET_BYTES, reserve=RESERVE)
    out.mkdir(parents=True, exist_ok=True)
    written, left_out = [], {}
    for spec in figures.specs():
        if spec.rows != "measured":
            left_out[spec.name] = "the fixture holds no low-rank study rows"
            continue
        drawn = figures.draw(spec.name, data, width="single")
        if drawn.figure is None:
            left_out[spec.name] = drawn.caption
            continue
        path = out / f"{spec.name}.png"
        with figure_style():
            drawn.figure.savefig(path, dpi=GALLERY_DPI, metadata={"Software": "attnbench"})
        written.append(path)
    return written, left_out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.report.page.gallery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/figures", help="folder for the PNGs (default: docs/figures)")
    args = parser.parse_args(argv)
    written, left_out = gallery(Path(args.out))
    for path in written:
        print(path)
    for name, why in left_out.items():
        print(f"left out {name}: {why}")


if __name__ == "__main__":
    main()
