"""From a results folder (``attnbench.harness.results``) to one run of the history: its fingerprint and cases.

The fingerprint is ``attnbench.harness.measure.env.fingerprint`` over the rows' ``env_*`` columns (device model,
driver, CUDA, torch, CPU model and count) plus the settings that change what a timing means:

- ``torch_threads`` (a row column): intra-op threads change CPU timings outright;
- from each job's ``config.yaml``, ``measure.warmup_reps``, ``measure.warmup_s`` (the state the
  steady state starts from), ``measure.cuda_graph`` and ``measure.l2_flush`` (what is timed).

Not in it: ``dtype`` and ``compile``, which are part of each case's identity (``case_id``), so
they separate cases rather than runs; the stopping rules (``min_reps``, ``target_ci_rel``,
``budget_s``...), which change how many samples are taken, not what each sample measures; the
host name, the time and the code version (comparing commits on one machine is the point).

A results set whose rows have more than one fingerprint is refused (ingest each part on its own),
and so is one stamped more than ``FUTURE_SLACK`` ahead of this machine's clock (``env_time_utc`` or
``finished_at`` in 2099: a skewed clock), named by its timestamp; the history orders runs by
ingestion, so such a stamp cannot make a run "newest" anyway, but it is wrong data all the same.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from attnbench.harness import results
from attnbench.harness.errors import UserError
from attnbench.harness.results.layout import job_dir_of
from attnbench.harness.text.label import case_label
from attnbench.harness.measure.env import FINGERPRINT_FIELDS, fingerprint
from attnbench.harness.nightly.flags import reason_with_flags
from attnbench.harness.nightly.store import FIGURES, LABEL_COLUMNS, CaseRecord, NewRun

MEASURE_SETTINGS: tuple[str, ...] = ("warmup_reps", "warmup_s", "cuda_graph", "l2_flush")
ROW_SETTINGS: tuple[str, ...] = ("torch_threads",)
# The row columns read here besides the label, figure and fingerprint columns: one place to follow
# a rename in the row schema (harness.results).
FINISHED = "finished_at"
FUTURE_SLACK = timedelta(days=1)  # time zones and small clock drift are fine; a year ahead is not
STARTED, COMMIT, MEDIAN, CI_LOW, CI_HIGH, SAMPLES = ("env_time_utc", "env_git_commit", "latency_ms",
                                                     "latency_ci_low_ms", "latency_ci_high_ms", "samples_ms")


def read_run(paths: str | Path | Iterable[str | Path], *, commit: str | None = None,
             notes: str = "") -> tuple[NewRun, list[CaseRecord]]:
    """The run and case records of the results under ``paths`` (folders, files or globs)."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    frame = results.load(items)
    if frame.empty:
        raise ValueError(f"no result rows under {', '.join(map(str, items))}")
    missing = [c for c in ("case_id", "status", *FINGERPRINT_FIELDS, *ROW_SETTINGS) if c not in frame.columns]
    if missing:
        raise ValueError(f"the results lack columns {missing}; re-run them with this attnbench")
    duplicated = frame.loc[frame["case_id"].duplicated(), "case_id"]
    if not duplicated.empty:
        roots = sorted(frame["run_root"].astype(str).unique())
        raise ValueError(f"case {duplicated.iloc[0]} appears in several run roots ({', '.join(roots)}); "
                         "ingest one run at a time")
    check_not_in_future(frame)
    measure = _measure_settings(items)
    fields = [_fingerprint_fields(row, measure) for row in frame.to_dict("records")]
    prints = [fingerprint(f["env"], **f["settings"]) for f in fields]
    distinct = sorted(set(prints))
    if len(distinct) > 1:
        first, other = fields[prints.index(distinct[0])], fields[prints.index(distinct[1])]
        raise ValueError(f"the results mix {len(distinct)} fingerprints ({', '.join(distinct)}); they differ in "
                         f"{describe_difference(first, other)}: ingest each machine or setting on its own")
    run = NewRun(commit=_commit(frame, commit), time_utc=_started(frame), fingerprint=distinct[0],
                 fingerprint_fields=fields[0], source=", ".join(str(Path(p).resolve()) for p in items),
                 name=",".join(sorted(frame["run_root"].astype(str).unique())), notes=notes)
    return run, list(case_records(frame))


def describe_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """``env_driver '550.54' vs '535.104'; torch_threads 2 vs 1``: the fields two fingerprints differ in."""
    flat_a = {**a.get("env", {}), **a.get("settings", {})}
    flat_b = {**b.get("env", {}), **b.get("settings", {})}
    keys = sorted(k for k in set(flat_a) | set(flat_b) if flat_a.get(k) != flat_b.get(k))
    return "; ".join(f"{k} {flat_a.get(k)!r} vs {flat_b.get(k)!r}" for k in keys) or "nothing recorded"


def case_records(frame: pd.DataFrame) -> Iterator[CaseRecord]:
    for row in frame.to_dict("records"):
        ok = row["status"] == "ok"
        samples = tuple(float(x) for x in row.get(SAMPLES)) if ok and _present(row.get(SAMPLES)) else ()
        if ok and not samples:
            raise ValueError(f"ok row {row['case_id']} has no samples_ms; re-run it with this attnbench")
        yield CaseRecord(
            case_id=str(row["case_id"]), label=case_label(row), labels={c: _plain(row.get(c)) for c in LABEL_COLUMNS},
            status=str(row["status"]),
            reason=reason_with_flags(str(row["status"]), str(row.get("reason") or ""), row.get("flags")),
            figures={f: _integer(row.get(f)) for f in FIGURES},
            median_ms=_number(row.get(MEDIAN)) if ok else None,
            ci_low_ms=_number(row.get(CI_LOW)) if ok else None,
            ci_high_ms=_number(row.get(CI_HIGH)) if ok else None,
            samples_ms=samples)


def _fingerprint_fields(row: Mapping[str, Any], measure: Mapping[str, Any]) -> dict[str, Any]:
    env = {k: _plain(row.get(k)) for k in FINGERPRINT_FIELDS}
    settings = {k: _plain(row.get(k)) for k in ROW_SETTINGS}
    settings.update({f"measure.{k}": v for k, v in measure.items()})
    return {"env": env, "settings": settings}


def _measure_settings(items: list[str | Path]) -> dict[str, Any]:
    """The ``MEASURE_SETTINGS`` of every job's ``config.yaml`` under ``items``; they must agree."""
    configs: set[Path] = set()
    for item in items:
        for match in map(Path, glob.glob(str(item), recursive=True) or [str(item)]):
            if match.is_dir():
                configs.update(match.rglob("config.yaml"))
            elif match.suffix == ".parquet" and (job_dir_of(match) / "config.yaml").exists():
                configs.add(job_dir_of(match) / "config.yaml")
    found: dict[tuple[tuple[str, Any], ...], Path] = {}
    for path in sorted(configs):
        cfg = yaml.safe_load(path.read_text()) or {}
        measure = cfg.get("measure") if isinstance(cfg, dict) else None
        if isinstance(measure, dict):
            found.setdefault(tuple((k, measure.get(k)) for k in MEASURE_SETTINGS), path)
    if len(found) > 1:
        (a, path_a), (b, path_b) = list(found.items())[:2]
        diff = "; ".join(f"measure.{k} {va!r} vs {vb!r}" for (k, va), (_, vb) in zip(a, b, strict=True) if va != vb)
        raise ValueError(f"the results mix timing settings ({path_a} vs {path_b}: {diff}); ingest each on its own")
    # No config.yaml (rows copied on their own): the settings are recorded as unknown (None).
    return dict(next(iter(found))) if found else {k: None for k in MEASURE_SETTINGS}


def check_not_in_future(frame: pd.DataFrame, *, now: datetime | None = None) -> None:
    """``UserError`` naming the first ``env_time_utc`` or ``finished_at`` more than ``FUTURE_SLACK``
    after ``now`` (this machine's clock)."""
    now = now or datetime.now(UTC)
    for column in (STARTED, FINISHED):
        if column not in frame:
            continue
        stamps = pd.to_datetime(frame[column], utc=True, errors="coerce")
        latest = stamps.max()
        if pd.notna(latest) and latest > pd.Timestamp(now + FUTURE_SLACK):
            raise UserError(f"the results' {column} {latest.isoformat()} lies in the future (this machine's clock: "
                            f"{now.isoformat(timespec='seconds')}): the machine that ran them has a wrong clock; "
                            "fix it and re-run, nothing was ingested")


def _commit(frame: pd.DataFrame, commit: str | None) -> str:
    if commit:
        return commit
    commits = sorted({str(c) for c in frame[COMMIT] if _present(c)}) if COMMIT in frame else []
    if len(commits) != 1:
        found = ", ".join(commits) or "none recorded"
        raise ValueError(f"the rows' git commits are {found}: pass --commit SHA")
    return commits[0]


def _started(frame: pd.DataFrame) -> str:
    """The run's start, ISO 8601 in UTC (the history sorts it as text), from text or a timestamp column."""
    if STARTED not in frame:
        raise ValueError(f"the results lack the column {STARTED}; re-run them with this attnbench")
    first = pd.to_datetime(frame[STARTED], utc=True).min()
    return first.isoformat(timespec="seconds")


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return True


def _plain(value: Any) -> Any:
    """numpy and pandas scalars as Python ones, missing as None: what a fingerprint hashes must not
    depend on how a column was stored (``4`` and ``4.0`` and ``np.int64(4)`` hash the same)."""
    if not _present(value) or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _integer(value: Any) -> int | None:
    value = _plain(value)
    return None if value is None else int(value)


def _number(value: Any) -> float | None:
    value = _plain(value)
    return None if value is None else float(value)
