"""``python -m attnbench.harness.report RESULTS... [--out DIR] [--filter key=value ...] [--baseline ...]
[--budget 80GiB] [--batches 1,8,64]``: write a comparison report of any set of result rows.

Bad input is one line ``error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

from attnbench.harness.errors import ArgumentParser, UserError, guarded
from attnbench.harness.report.analysis.baseline import Baseline
from attnbench.harness.report.analysis.capacity import RESERVE
from attnbench.harness.report.data import apply_filters, load_rows, parse_filters
from attnbench.harness.report.figures.style import WIDTH_IN
from attnbench.harness.report.page import against
from attnbench.harness.report.page.build import build_report
from attnbench.harness.report.page.lowrank import split_inputs
from attnbench.harness.results.paths import check_out_dir
from attnbench.harness.text.units import parse_bytes


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="attnbench report", description="Write a comparison report (tables, figures, "
                     "one HTML page) of result rows from any mix of runs, sweeps and machines.")
    parser.add_argument("results", nargs="+", help="result folders, row files or globs (e.g. 'results/*'); "
                        "a low-rank study's folder (lowrank-*.parquet) adds its table and figures")
    parser.add_argument("--out", help="report folder (default: results/report_<time>)")
    parser.add_argument("--against", nargs="+", metavar="OLD", help="earlier results: per case, new/old median "
                        "latency with its 95%% bootstrap interval, in <out>/against/ (harness.report.page.against)")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                        help="keep rows whose column KEY is one of the values; repeat for AND (phase=decode)")
    default = _default_baseline()
    parser.add_argument("--baseline", default=default,
                        help=f"what speed-up and memory ratio compare against (default: {default}, the variant a "
                        "family declares the baseline)")
    parser.add_argument("--budget", help="memory budget for the capacity table, e.g. 80GiB "
                        "(default: a GPU's own memory; CPU rows have none unless given)")
    parser.add_argument("--batches", help="batch sizes of the capacity table, e.g. 1,8,64 "
                        "(default: 1,8,64 and every measured batch)")
    parser.add_argument("--reserve", type=float, default=RESERVE,
                        help=f"share of the budget held back for activations and the runtime (default {RESERVE})")
    parser.add_argument("--widths", default=",".join(WIDTH_IN),
                        help="figure widths to draw: single (3.5 in), double (7 in) (both: the default), a venue "
                        "(icml, icml-double, neurips, acm, ieee, ...) or a length (3.25in, 5.5in, 12cm)")
    return parser


def _default_baseline() -> str:
    """``variant=<the baseline a family declares>,impl=<its implementation>``: asked of the families, not named here."""
    baseline = Baseline()
    return f"variant={baseline.variant},impl={baseline.impl}"

MAX_BATCH = 2**31 - 1  # a batch a capacity table can state: above it no cache fits any device


def _widths(text: str) -> list[str]:
    widths = [w.strip() for w in text.split(",") if w.strip()]
    if not widths:
        raise ValueError(f"--widths {text!r} names no width; allowed: {', '.join(WIDTH_IN)} (comma-separated)")
    return widths


def _batches(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 < v <= MAX_BATCH for v in values):
        raise ValueError(f"--batches {text!r} is not a list of positive integers, each at most {MAX_BATCH} "
                         "(e.g. 1,8,64)")
    return values


def check_baseline_present(frame: pd.DataFrame, baseline: Baseline) -> None:
    """A baseline no row has would leave every ratio blank: refused, naming what the rows hold."""
    for key in ("variant", "impl"):
        present = sorted(frame[key].dropna().astype(str).unique()) if key in frame else []
        if present and getattr(baseline, key) not in present:
            noun = "implementations" if key == "impl" else "variants"
            raise UserError(f"--baseline {key}={getattr(baseline, key)!r} is in no row; {noun} present: "
                            f"{', '.join(present)}")


@guarded("report")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    out = Path(args.out if args.out is not None else f"results/report_{datetime.now():%Y-%m-%d_%H-%M-%S}")
    # A bad value, an unwritable folder or a full disk: one line from the boundary (harness.errors).
    check_out_dir(args.out if args.out is not None else out, flag="--out")
    bench, lowrank = split_inputs(args.results)
    filters, baseline = parse_filters(args.filter), Baseline.parse(args.baseline)
    if list(bench):  # loaded once here: a baseline the user named must be in the rows
        bench = load_rows(bench)
        if args.baseline != _default_baseline():
            check_baseline_present(apply_filters(bench, filters), baseline)
    report = build_report(
        bench, out, filters=filters, baseline=baseline, lowrank=lowrank,
        budget_bytes=parse_bytes("--budget", args.budget) if args.budget else None,
        batches=_batches(args.batches), reserve=args.reserve,
        widths=_widths(args.widths), against_old=load_rows(args.against) if args.against else None,
        command=shlex.join(["python", "-m", "attnbench.harness.report", *argv]))
    compared = report.against
    if compared is not None:
        both, stars = len(compared.ratios), int(compared.ratios.get("significant", pd.Series(dtype=bool)).sum())
        print(f"against: {report.out / 'against' / 'against.md'}: {both} case(s) measured in both, {stars} changed "
              f"beyond +-{against.THRESHOLD:.0%}; {len(compared.only_new)} only in NEW, {len(compared.only_old)} "
              "only in OLD")
    print(f"report: {report.out / 'report.html'} ({len(report.files)} files; devices: {', '.join(report.devices)})")
    for name, why in report.left_out.items():
        print(f"left out {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
