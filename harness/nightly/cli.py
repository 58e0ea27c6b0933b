"""``python -m attnbench.harness.nightly``: keep a history of runs and judge each new run against it.

    python -m attnbench.harness.nightly ingest results/nightly-123 --commit $SHA     # add a run; prints its id
    python -m attnbench.harness.nightly compare --markdown summary.md --plots plots  # latest vs last good run
    python -m attnbench.harness.nightly compare --run 12 --baseline 9                # named runs (9: a run id)
    python -m attnbench.harness.nightly history                                      # the runs it holds
    python -m attnbench.harness.nightly accept 12                                    # an intended slowdown:
                                                                                     # new baseline
    python -m attnbench.harness.nightly gc --keep 200                                # drop partial and old runs

The history is ``--db``, else ``$ATTNBENCH_HISTORY``, else ``results/history.sqlite``.
Exit status: 0 no regression (or no baseline yet, or a slowdown suspected in this run only), 1 a
confirmed regression, 2 bad input (including a file that is not a history) or runs that are not
comparable (different fingerprints).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from attnbench.harness.errors import ArgumentParser, UserError, guarded
from attnbench.harness.nightly.compare import (
    DEFAULT_CONFIRM,
    DEFAULT_THRESHOLD,
    check_comparable,
    check_confirm,
    check_threshold,
    compare,
)
from attnbench.harness.nightly.ingest import read_run
from attnbench.harness.nightly.markdown import render, render_no_baseline
from attnbench.harness.nightly.store import History, Run
from attnbench.harness.results.paths import check_out_dir, check_out_file

DEFAULT_DB = Path("results") / "history.sqlite"
ENV_DB = "ATTNBENCH_HISTORY"
HISTORY_RUNS = 20  # recent runs whose spread widens the intervals
MAX_CONFIRM = 100  # runs in a row: more than three months of nights
NOISE_VERDICTS = (None, "pass", "accepted", "suspect")  # runs of the code as it was: their spread is noise


def default_db() -> Path:
    return Path(os.environ.get(ENV_DB) or DEFAULT_DB)


def _parser() -> argparse.ArgumentParser:
    common = ArgumentParser(add_help=False)
    common.add_argument("--db", default=None,
                        help=f"the history file (default: ${ENV_DB}, else {DEFAULT_DB})")
    parser = ArgumentParser(prog="attnbench nightly", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", parents=[common], help="add a results folder to the history as one run")
    ingest.add_argument("results", nargs="+", help="results folders, row files or globs (one run)")
    ingest.add_argument("--commit", help="the commit measured (default: the rows' env_git_commit)")
    ingest.add_argument("--notes", default="", help="free text kept with the run")

    cmp = sub.add_parser("compare", parents=[common], help="judge a run against a baseline")
    cmp.add_argument("--run", default="latest", help="a run id, or latest (default)")
    cmp.add_argument("--baseline", default="last-good",
                     help="last-good (default: the newest earlier run on the same fingerprint not judged a "
                          "regression), a run id, or a commit (its newest run)")
    cmp.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                     help="a case is suspect when its whole 95%% interval lies above 1 + threshold (default 0.05)")
    cmp.add_argument("--confirm", type=int, default=DEFAULT_CONFIRM,
                     help="runs in a row a case must be suspect in to be a regression (default "
                          f"{DEFAULT_CONFIRM}; 1 fails on the first)")
    cmp.add_argument("--markdown", help="also write the markdown summary to this file")
    cmp.add_argument("--plots", help="write a trend plot per case to this folder")
    cmp.add_argument("--strict-figures", action="store_true",
                     help="fail on any change of a deterministic figure (FLOPs, bytes), not only memory growth")
    cmp.add_argument("--no-record", action="store_true",
                     help="do not record the verdict (recorded by default against last-good)")

    hist = sub.add_parser("history", parents=[common], help="list the complete runs")
    hist.add_argument("--fingerprint", help="only runs with this fingerprint (a prefix is enough)")
    hist.add_argument("--limit", type=int, default=30, help="newest runs shown (default 30)")

    accept = sub.add_parser("accept", parents=[common], help="make a run a good baseline (an intended change)")
    accept.add_argument("run", type=int)

    gc = sub.add_parser("gc", parents=[common], help="delete partial runs (and old ones with --keep)")
    gc.add_argument("--keep", type=int, help="complete runs kept per fingerprint, newest first")
    return parser


# A commit as --commit names it: a hash, a tag or a branch; never text that would break the markdown or a shell.
_COMMIT = re.compile(r"[0-9A-Za-z][0-9A-Za-z._/+-]{0,199}")


def _check_args(args: argparse.Namespace) -> None:
    """What argparse cannot know, checked before the history is opened or anything is written."""
    if args.db is not None and not str(args.db).strip():
        raise UserError("--db '' is empty; give the history file (e.g. results/history.sqlite)")
    if getattr(args, "commit", None) is not None and not _COMMIT.fullmatch(args.commit):
        raise UserError(f"--commit {args.commit!r} is not a commit: a hash, tag or branch name (letters, digits, "
                        ". _ / + -), at most 200 characters")
    if getattr(args, "markdown", None) is not None:
        check_out_file(args.markdown, flag="--markdown")
    if getattr(args, "plots", None) is not None:
        check_out_dir(args.plots, flag="--plots")
    if getattr(args, "confirm", 1) > MAX_CONFIRM:
        raise UserError(f"--confirm {args.confirm} is not allowed: runs in a row, from 1 to {MAX_CONFIRM}")
    if isinstance(getattr(args, "run", None), int):  # accept RUN: an id SQLite can hold
        _run_id(str(args.run))
    if getattr(args, "limit", 1) < 1:
        raise UserError(f"--limit {args.limit} is not allowed: the number of runs shown, at least 1")


@guarded("nightly")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Bad input, a missing run, runs that can't be compared, a history that can't be written or is
    # locked: one line from the boundary (harness.errors).
    _check_args(args)
    history = History(args.db or default_db())
    return _COMMANDS[args.command](history, args)


def _ingest(history: History, args: argparse.Namespace) -> int:
    run, cases = read_run(args.results, commit=args.commit, notes=args.notes)
    run_id = history.add_run(run, cases)
    ok = sum(c.status == "ok" for c in cases)
    print(f"run {run_id}: commit {run.commit[:12]}, {len(cases)} cases ({ok} ok), fingerprint {run.fingerprint} "
          f"-> {history.path}")
    return 0


def _compare(history: History, args: argparse.Namespace) -> int:
    threshold = check_threshold(args.threshold)
    confirm = check_confirm(args.confirm)
    run = history.latest() if args.run == "latest" else history.run(_run_id(args.run))
    if args.baseline == "last-good":
        good = history.good_runs_before(run, limit=HISTORY_RUNS)
        if not good:
            text = render_no_baseline(run, f"No earlier good run on fingerprint `{run.fingerprint}` in "
                                           f"{history.path}: this run starts the series.")
            _emit(text, args.markdown)
            return 0
        baseline, how = good[0], "last good"
    else:
        baseline, how = _named_baseline(history, run, args.baseline), "named"
        check_comparable(run, baseline)
    recent = [*reversed(history.runs_before(run, verdicts=NOISE_VERDICTS, limit=HISTORY_RUNS - 1)), run]
    medians = history.medians(r.run_id for r in recent)
    history_ms: dict[str, list[float]] = {}
    for run_in_history in recent:  # oldest first, this run last
        for case_id, median in medians[run_in_history.run_id].items():
            history_ms.setdefault(case_id, []).append(median)
    between = [r for r in history.runs_before(run, limit=confirm - 1)
               if r.seq > baseline.seq]
    result = compare(run, baseline, history.cases(run.run_id), history.cases(baseline.run_id),
                     history_ms=history_ms, threshold=threshold, strict_figures=args.strict_figures,
                     previous=[history.cases(r.run_id) for r in between], confirm=confirm)
    _emit(render(result, baseline_how=how), args.markdown)
    if args.plots is not None:
        kinds = {v.case_id: v.kind for v in result.cases}
        files = _plot(history, run, Path(args.plots), kinds, baseline, threshold)
        print(f"{len(files)} trend plots in {args.plots}", file=sys.stderr)
    if args.baseline == "last-good" and not args.no_record and run.verdict != "accepted":
        verdicts = {run.run_id: "regression" if result.failed else "suspect" if result.suspected else "pass"}
        if result.of("regression"):  # the suspect runs that confirmed it were its first nights
            verdicts.update({r.run_id: "regression" for r in between if r.verdict == "suspect"})
        history.set_verdicts(verdicts)
    return 1 if result.failed else 0


def _plot(history: History, run: Run, out: Path, kinds: dict[str, str], baseline: Run,
          threshold: float) -> list[Path]:
    from attnbench.harness.nightly.trend import plot_trends  # deferred: matplotlib only when plotting

    return plot_trends(history, run, out, kinds=kinds, baseline=baseline, threshold=threshold)


def _history(history: History, args: argparse.Namespace) -> int:
    runs = [r for r in history.runs() if args.fingerprint is None or r.fingerprint.startswith(args.fingerprint)]
    counts = history.case_counts()
    print(f"{'run':>5}  {'commit':12}  {'started (UTC)':25}  {'fingerprint':16}  {'verdict':10}  {'ok/cases':>8}  name")
    for r in runs[-args.limit:]:
        ok, n = counts.get(r.run_id, (0, 0))
        print(f"{r.run_id:>5}  {r.commit[:12]:12}  {r.time_utc:25}  {r.fingerprint:16}  {r.verdict or '-':10}  "
              f"{f'{ok}/{n}':>8}  {r.name}")
    return 0


def _accept(history: History, args: argparse.Namespace) -> int:
    history.set_verdict(args.run, "accepted")
    print(f"run {args.run} accepted: later runs on its fingerprint compare against it")
    return 0


def _gc(history: History, args: argparse.Namespace) -> int:
    print(f"deleted {history.gc(keep=args.keep)} runs from {history.path}")
    return 0


_COMMANDS = {"ingest": _ingest, "compare": _compare, "history": _history, "accept": _accept, "gc": _gc}


MAX_RUN_ID = 2**63 - 1  # SQLite's INTEGER: a larger id can't be in any history (it would overflow the query)


def _run_id(text: str, *, flag: str = "--run") -> int:
    try:
        run_id = int(text)
    except ValueError:
        raise UserError(f"{flag}={text!r} is not a run id; use an integer from `history`, or latest") from None
    if not 1 <= run_id <= MAX_RUN_ID:
        raise UserError(f"{flag}={text} is not a run id; run ids are integers from 1 (see `history`), or latest")
    return run_id


def _named_baseline(history: History, run: Run, text: str) -> Run:
    if text.isdigit():
        baseline = history.run(_run_id(text, flag="--baseline"))
        if baseline.run_id == run.run_id:
            raise UserError(f"--baseline={text} is the run being judged (run {run.run_id}); give an earlier run")
        return baseline
    matches = [r for r in history.runs() if r.commit.startswith(text) and r.run_id != run.run_id]
    if not matches:
        raise ValueError(f"--baseline={text!r} is not last-good, a run id, or the commit of a run in {history.path}")
    same = [r for r in matches if r.fingerprint == run.fingerprint]
    return (same or matches)[-1]  # another fingerprint only to say why it cannot be compared


def _emit(text: str, path: str | Path | None) -> None:
    print(text, end="")
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
