"""The end of a sweep: one table comparing every job's cases, printed and written beside the jobs.

Each job of a multirun logs its own cases; nothing compared them across jobs. ``SweepSummary``, a
Hydra callback (registered under ``hydra.callbacks`` in ``conf/config.yaml``), runs once in the
launching process after the last job returns, whichever launcher ran the jobs (basic, joblib,
submitit), loads every row under the sweep folder and writes

- ``<sweep dir>/summary.md``: the table a reader compares (also printed), one line per case;
- ``<sweep dir>/summary.csv``: the same cases at full precision, for re-analysis.

Rows are ordered by setting (phase, context, batch, compile mode), then variant and
implementation, so the cases to compare sit next to each other. Speed-up is the report's:
MHA/eager latency at the same setting over the case's latency (``attnbench.harness.report.analysis.baseline``).
Failed cases keep their row with status and reason: a sweep whose every case failed still gets its
table. A job that raises (rather than recording its cases' failures) stops Hydra before this
callback; ``python -m attnbench.harness.sweep.status <sweep dir>`` tells what is missing then.

    python -m attnbench.harness.sweep.summary results/<name>     # the same table for any finished sweep
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from attnbench.harness import results
from attnbench.harness.measure import trust
from attnbench.harness.text.repro import markdown_lines

MARKDOWN, CSV = "summary.md", "summary.csv"
# What tells cases apart, in table order; a column whose value is the same in every row is left out.
SETTING_COLUMNS = ("phase", "seq", "seq_lens", "page_size", "batch", "compile", "decode_len", "dtype", "model",
                   "device")
OPTIONAL_SETTINGS = ("seq_lens", "page_size")
FLAG_MEANINGS = {"noisy": "CI over measure.target_ci_rel", "fallback": "another code path than its label",
                 "busy": "other processes loaded the CPUs", "above_ceiling": "above a calibrated roof"}
CASE_COLUMNS = ("variant", "impl")
CSV_COLUMNS = ("job_num", *CASE_COLUMNS, *SETTING_COLUMNS, "status", "flags", "latency_ms", "latency_ci_low_ms",
               "latency_ci_high_ms", "latency_ci_rel", "n_reps", "speedup", "tokens_per_s", "peak_mem_bytes",
               "remeasured", "fallback_reason", "load_start", "load_end", "others_cpu_share", "reason", "case_id",
               "job_dir", "repro")


@dataclass(frozen=True)
class Summary:
    root: Path
    frame: pd.DataFrame  # one row per case, CSV_COLUMNS that the rows hold, full precision
    table: str  # the markdown grid of the shown columns
    notes: tuple[str, ...]  # what a reader must know (constant settings, missing baselines)

    def counts(self) -> str:
        counts = Counter(self.frame["status"]) if not self.frame.empty else Counter()
        order = ["ok", *sorted(s for s in counts if s != "ok")]
        return ", ".join(f"{counts[s]} {s}" for s in order if counts[s]) or "no rows"

    def flagged(self) -> str:
        """``"N rows flagged: ..."``, or '' when no row is."""
        return trust.count_line(self.frame["flags"]) if "flags" in self.frame.columns else ""

    def markdown(self) -> str:
        from attnbench.harness.text.escape import markdown  # the folder and the notes hold the user's values

        lines = [f"# Sweep {markdown(self.root)}", "", f"{len(self.frame)} cases: {self.counts()}.", ""]
        flagged = self.flagged()
        if flagged:  # a number that can't be taken at its word is said before the table, not only in it
            lines += [f"{flagged} Flags: {', '.join(f'{k} ({v})' for k, v in FLAG_MEANINGS.items())}.", ""]
        lines += [f"- {markdown(note)}" for note in self.notes]
        repro = markdown_lines(self.frame["repro"], what="case") if "repro" in self.frame.columns else []
        return "\n".join([*lines, "", self.table, *repro])


def summarize(root: str | Path) -> Summary:
    """The comparison table of every case under a sweep (or run) folder."""
    from attnbench.harness.report.analysis.baseline import Baseline, with_ratios  # matplotlib comes with harness.report
    from attnbench.harness.report.figures.style import impl_sort_key, variant_sort_key

    root = Path(root)
    rows = results.load(root) if root.exists() else pd.DataFrame()
    if rows.empty:
        return Summary(root, pd.DataFrame(columns=list(CSV_COLUMNS)), f"(no rows under {root})\n", ())
    ok = rows[rows["status"] == "ok"]
    baseline = Baseline()  # the variant a family declares the baseline, eager
    rated, _ = with_ratios(ok, baseline)  # its notes name the report's --baseline flag: ours are below
    rows = rows.assign(speedup=rated["speedup"].reindex(rows.index))
    rows = _ordered(rows, variant_sort_key, impl_sort_key)
    frame = rows[[c for c in CSV_COLUMNS if c in rows.columns]].reset_index(drop=True)
    constant = [c for c in SETTING_COLUMNS if c in frame.columns and frame[c].astype(str).nunique(dropna=False) == 1]
    # A ragged batch or a paged cache is named where it is used; "none in every case" says nothing.
    said = [c for c in constant if not (c in OPTIONAL_SETTINGS and frame[c].isna().all())]
    notes = [", ".join(f"{c}={frame[c].iloc[0]}" for c in said) + " in every case."] if said else []
    without = int((frame["status"].eq("ok") & frame["speedup"].isna()).sum())
    if without < len(ok):
        notes.append(f"speedup: {baseline.label()} latency at the same setting over the case's latency (above 1: "
                     "faster)" + (f"; {without} measured case(s) have no {baseline.label()} case at their setting."
                                  if without else "."))
    again = int(frame["remeasured"].fillna(False).astype(bool).sum()) if "remeasured" in frame.columns else 0
    if again:
        notes.append(f"{again} case(s) were noisy and measured again at the end of their job; each row holds the "
                     "measurement with the tighter CI (flagged noisy only if that one still is).")
    return Summary(root, frame, _markdown_table(frame, constant), tuple(notes))


def _ordered(rows: pd.DataFrame, variant_key: Any, impl_key: Any) -> pd.DataFrame:
    keys = [c for c in ("phase", "seq", "batch", "compile", "decode_len") if c in rows.columns]
    rows = rows.assign(_v=rows["variant"].map(variant_key), _i=rows["impl"].map(impl_key))
    return rows.sort_values([*keys, "_v", "_i"], kind="stable").drop(columns=["_v", "_i"])


def _markdown_table(frame: pd.DataFrame, constant: list[str]) -> str:
    from attnbench.harness.report.tables.formats import markdown_grid
    from attnbench.harness.text.units import ci_text, human_bytes, number

    shown = pd.DataFrame(index=frame.index)
    if "job_num" in frame.columns and frame["job_num"].notna().any():
        shown["job"] = frame["job_num"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    for column in (*CASE_COLUMNS, *SETTING_COLUMNS):
        if column in frame.columns and column not in constant:
            # A null cell (None, NA or a float NaN, as concat makes of an absent ragged length) is blank.
            shown[column] = frame[column].map(lambda v: "" if v is None or (pd.api.types.is_scalar(v) and pd.isna(v))
                                              else str(v))
    shown["status"] = frame["status"]
    if "flags" in frame.columns and frame["flags"].map(trust.parse).map(bool).any():
        shown["flags"] = frame["flags"].map(lambda v: ",".join(trust.parse(v)))
    if "latency_ms" in frame.columns and frame["latency_ms"].notna().any():
        shown["latency_ms"] = frame["latency_ms"].map(number)
        shown["ci"] = frame["latency_ci_rel"].map(ci_text)
    optional = (("speedup", lambda v: "" if pd.isna(v) else f"{v:.2f}x"), ("tokens_per_s", number),
                ("peak_mem_bytes", lambda v: "" if pd.isna(v) else human_bytes(v)))
    for column, fmt in optional:
        if column in frame.columns and frame[column].notna().any():
            shown["peak_mem" if column == "peak_mem_bytes" else column] = frame[column].map(fmt)
    shown["reason"] = frame["reason"].fillna("")
    return markdown_grid(shown)




def write(summary: Summary) -> tuple[Path, Path]:
    """``summary.md`` and ``summary.csv`` in the sweep folder; returns their paths."""
    md, csv = summary.root / MARKDOWN, summary.root / CSV
    results.write_text(md, summary.markdown())
    results.write_text(csv, summary.frame.to_csv(index=False))
    return md, csv


class SweepSummary(Callback):
    """Hydra callback: after a multirun, print the sweep's comparison table and write it beside the jobs."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("task", "benchmark") != "benchmark":
            return  # the low-rank study writes its own rows and summary
        summary = summarize(Path(str(config.hydra.sweep.dir)))
        md, csv = write(summary)
        # Printed, not logged: in the launching process the root logger may still hold the last
        # job's file handler (the basic launcher runs jobs in-process), and this is not that job's.
        print(f"{summary.markdown()}\nsummary: {md} and {csv}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnbench.harness.sweep.summary",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a sweep or run folder (results/<name>)")
    parser.add_argument("--write", action="store_true", help="also write summary.md and summary.csv there")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder; give a sweep or run folder such as results/<name>",
              file=sys.stderr)
        return 2
    summary = summarize(args.root)
    print(summary.markdown())
    if args.write:
        print("summary: {} and {}".format(*write(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
