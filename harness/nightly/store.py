"""The history of runs across commits: one SQLite file, no server.

A nightly CI runner keeps the file between nights (a cache or an artifact). Tables:

- ``runs``: one row per ingested run: ``run_id``, ``commit``, ``time_utc`` (when the run started),
  ``fingerprint`` (``harness.measure.env.fingerprint`` of the machine and timing settings) and the fields
  it was made from (JSON), ``status`` (``complete`` or ``partial``), ``verdict`` (``pass``,
  ``regression``, ``accepted`` or null before any comparison), ``source`` (the results path),
  ``name`` (the run root) and ``notes``.
- ``cases``: one row per case of a run: its ``case_id`` and label columns, ``status``, the
  deterministic figures (``flops``, ``bytes_min``, ``kv_bytes_per_token``, ``kv_cache_bytes``,
  ``peak_mem_bytes``), the median and its CI, and every raw sample as little-endian float64 bytes.

Crash safety: a run is added in one transaction that inserts it as ``partial``, inserts its cases
and flips it to ``complete`` before committing. The rollback journal (not WAL) is used with
``synchronous=FULL`` so that after each commit the whole history is in the one file a CI cache
saves (WAL keeps committed pages in a side file until a checkpoint). A process killed mid-write
leaves an uncommitted transaction that SQLite rolls back on the next open; should a ``partial``
run ever be committed (an older writer, a foreign tool), every query here ignores it and ``gc``
deletes it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness.results import schema

SCHEMA_VERSION = 1
Verdict = Literal["pass", "regression", "accepted"]
VERDICTS: tuple[str, ...] = ("pass", "regression", "accepted")
# The figures that do not depend on timing noise: compared exactly (see harness.nightly.compare).
FIGURES: tuple[str, ...] = ("flops", "bytes_min", "kv_bytes_per_token", "kv_cache_bytes", "peak_mem_bytes")
assert all(schema.BY_NAME[f].kind == "int64" for f in FIGURES)
# The case columns of the schema (and the preset's name). The timing mode is not among them: the
# run's fingerprint holds it (harness.nightly.ingest), so runs timed differently are never compared.
LABEL_COLUMNS: tuple[str, ...] = (*(c for c in schema.CASE if schema.BY_NAME[c].group == "case"), "model")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    commit_sha TEXT NOT NULL,
    time_utc TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    fingerprint_fields TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('partial', 'complete')),
    verdict TEXT CHECK (verdict IS NULL OR verdict IN ('pass', 'regression', 'accepted')),
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    notes TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_by_fingerprint ON runs (fingerprint, status, time_utc);
CREATE TABLE IF NOT EXISTS cases (
    run_id INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    case_id TEXT NOT NULL,
    label TEXT NOT NULL,
    {", ".join(f"{c} {'INTEGER' if schema.BY_NAME[c].kind == 'int64' else 'TEXT'}" for c in LABEL_COLUMNS)},
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    {", ".join(f"{f} INTEGER" for f in FIGURES)},
    median_ms REAL,
    ci_low_ms REAL,
    ci_high_ms REAL,
    samples_f64 BLOB,
    PRIMARY KEY (run_id, case_id)
);
"""


@dataclass(frozen=True)
class Run:
    run_id: int
    commit: str
    time_utc: str  # ISO 8601 in UTC: sorts as text
    fingerprint: str
    fingerprint_fields: dict[str, Any]
    status: str
    verdict: str | None
    source: str
    name: str
    notes: str

    @property
    def short(self) -> str:
        return f"run {self.run_id} ({self.commit[:10]}, {self.time_utc})"


@dataclass(frozen=True)
class CaseRecord:
    case_id: str
    label: str
    labels: dict[str, Any]  # LABEL_COLUMNS
    status: str
    reason: str
    figures: dict[str, int | None]  # FIGURES
    median_ms: float | None
    ci_low_ms: float | None
    ci_high_ms: float | None
    samples_ms: tuple[float, ...]  # every steady-state sample; empty when the case did not run


@dataclass(frozen=True)
class NewRun:
    """What ``History.add_run`` needs to know of a run besides its cases."""

    commit: str
    time_utc: str
    fingerprint: str
    fingerprint_fields: dict[str, Any]
    source: str
    name: str
    notes: str = ""


class History:
    """The SQLite history at ``path`` (created on first write). Every method opens its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        if not write and not self.path.exists():
            raise ValueError(f"no history at {self.path}; ingest a run first (python -m harness.nightly ingest ...)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are begun and committed explicitly below.
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=DELETE")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ValueError(f"{self.path} has schema version {version}; this attnbench reads up to "
                                 f"{SCHEMA_VERSION}: upgrade attnbench")
            if write and version < SCHEMA_VERSION:
                con.executescript(_SCHEMA)
                con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version == 0:
                raise ValueError(f"{self.path} holds no attnbench history (schema version 0)")
            yield con
        finally:
            con.close()

    # -- writing ---------------------------------------------------------------------------------
    def add_run(self, run: NewRun, cases: Iterable[CaseRecord]) -> int:
        """Add a run and its cases atomically; returns its ``run_id``.

        ``cases`` is consumed inside the transaction, so a writer killed while producing them
        leaves nothing behind.
        """
        with self._connect(write=True) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                cur = con.execute(
                    "INSERT INTO runs (commit_sha, time_utc, fingerprint, fingerprint_fields, status, source, name, "
                    "notes) VALUES (?, ?, ?, ?, 'partial', ?, ?, ?)",
                    (run.commit, run.time_utc, run.fingerprint, json.dumps(run.fingerprint_fields, sort_keys=True),
                     run.source, run.name, run.notes))
                run_id = int(cur.lastrowid)
                count = 0
                for case in cases:
                    con.execute(_INSERT_CASE, _case_values(run_id, case))
                    count += 1
                if count == 0:
                    raise ValueError(f"no cases in {run.source}: nothing to ingest")
                con.execute("UPDATE runs SET status = 'complete' WHERE run_id = ?", (run_id,))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return run_id

    def set_verdict(self, run_id: int, verdict: Verdict) -> None:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict={verdict!r} is not one of: {', '.join(VERDICTS)}")
        self.run(run_id)  # raises for an unknown run
        with self._connect(write=True) as con:
            con.execute("UPDATE runs SET verdict = ? WHERE run_id = ?", (verdict, run_id))

    def gc(self, *, keep: int | None = None) -> int:
        """Delete partial runs and, with ``keep``, all but the newest ``keep`` complete runs of each
        fingerprint; returns how many runs were deleted."""
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep={keep!r} is not allowed: keep must be an integer >= 1")
        with self._connect(write=True) as con:
            con.execute("BEGIN IMMEDIATE")
            doomed = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status != 'complete'")]
            if keep is not None:
                doomed += [r[0] for r in con.execute(
                    "SELECT run_id FROM (SELECT run_id, ROW_NUMBER() OVER (PARTITION BY fingerprint "
                    "ORDER BY time_utc DESC, run_id DESC) AS k FROM runs WHERE status = 'complete') WHERE k > ?",
                    (keep,))]
            con.executemany("DELETE FROM runs WHERE run_id = ?", [(r,) for r in doomed])
            con.execute("COMMIT")
            con.execute("VACUUM")
        return len(doomed)

    # -- reading ---------------------------------------------------------------------------------
    def runs(self, *, fingerprint: str | None = None) -> list[Run]:
        """Complete runs, oldest first (by start time, then insertion)."""
        query = f"SELECT {_RUN_COLUMNS} FROM runs WHERE status = 'complete'"
        args: tuple[Any, ...] = ()
        if fingerprint is not None:
            query += " AND fingerprint = ?"
            args = (fingerprint,)
        with self._connect() as con:
            return [_run(r) for r in con.execute(query + " ORDER BY time_utc, run_id", args)]

    def run(self, run_id: int) -> Run:
        with self._connect() as con:
            row = con.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ? AND status = 'complete'",
                              (run_id,)).fetchone()
        if row is None:
            known = ", ".join(str(r.run_id) for r in self.runs()[-10:]) or "none"
            raise ValueError(f"run {run_id!r} is not in {self.path} as a complete run; latest runs: {known}")
        return _run(row)

    def latest(self) -> Run:
        runs = self.runs()
        if not runs:
            raise ValueError(f"{self.path} holds no complete run; ingest one first")
        return runs[-1]

    def good_runs_before(self, run: Run, *, limit: int | None = None) -> list[Run]:
        """Complete runs on ``run``'s fingerprint that started before it and were not judged a
        regression (passed, accepted, or never compared), newest first."""
        earlier = [r for r in self.runs(fingerprint=run.fingerprint)
                   if (r.time_utc, r.run_id) < (run.time_utc, run.run_id) and r.verdict != "regression"]
        earlier.reverse()
        return earlier[:limit] if limit is not None else earlier

    def cases(self, run_id: int) -> dict[str, CaseRecord]:
        with self._connect() as con:
            rows = con.execute(f"SELECT {_CASE_COLUMNS} FROM cases WHERE run_id = ? ORDER BY label", (run_id,))
            return {r[0]: _case(r) for r in rows}

    def medians(self, run_ids: Iterable[int]) -> dict[int, dict[str, float]]:
        """``{run_id: {case_id: median_ms}}`` of the ok cases of the given runs."""
        ids = list(run_ids)
        out: dict[int, dict[str, float]] = {r: {} for r in ids}
        if not ids:
            return out
        with self._connect() as con:
            marks = ",".join("?" * len(ids))
            for run_id, case_id, median in con.execute(
                    f"SELECT run_id, case_id, median_ms FROM cases WHERE run_id IN ({marks}) AND status = 'ok' "
                    "AND median_ms IS NOT NULL", ids):
                out[run_id][case_id] = median
        return out

    def case_counts(self) -> dict[int, tuple[int, int]]:
        """``{run_id: (ok cases, all cases)}`` over the complete runs."""
        with self._connect() as con:
            return {r: (ok, n) for r, ok, n in con.execute(
                "SELECT run_id, SUM(status = 'ok'), COUNT(*) FROM cases GROUP BY run_id")}

    def case_series(self, fingerprint: str, case_id: str) -> list[tuple[Run, CaseRecord]]:
        """Every complete run on ``fingerprint`` that has ``case_id``, oldest first."""
        runs = {r.run_id: r for r in self.runs(fingerprint=fingerprint)}
        with self._connect() as con:
            rows = con.execute(f"SELECT run_id, {_CASE_COLUMNS} FROM cases WHERE case_id = ?", (case_id,)).fetchall()
        series = [(runs[r[0]], _case(r[1:])) for r in rows if r[0] in runs]
        return sorted(series, key=lambda pair: (pair[0].time_utc, pair[0].run_id))

    def integrity(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``"ok"`` for a sound file."""
        with self._connect() as con:
            return "; ".join(r[0] for r in con.execute("PRAGMA integrity_check"))


_RUN_COLUMNS = "run_id, commit_sha, time_utc, fingerprint, fingerprint_fields, status, verdict, source, name, notes"
_CASE_COLUMNS = ("case_id, label, " + ", ".join(LABEL_COLUMNS) + ", status, reason, " + ", ".join(FIGURES)
                 + ", median_ms, ci_low_ms, ci_high_ms, samples_f64")
_INSERT_CASE = (f"INSERT INTO cases (run_id, {_CASE_COLUMNS}) VALUES "
                f"({', '.join('?' * (len(_CASE_COLUMNS.split(',')) + 1))})")


def _run(row: tuple[Any, ...]) -> Run:
    run_id, commit, time_utc, fp, fields, status, verdict, source, name, notes = row
    return Run(run_id, commit, time_utc, fp, json.loads(fields), status, verdict, source, name, notes)


def _case(row: tuple[Any, ...]) -> CaseRecord:
    case_id, label = row[0], row[1]
    labels = dict(zip(LABEL_COLUMNS, row[2:2 + len(LABEL_COLUMNS)], strict=True))
    rest = row[2 + len(LABEL_COLUMNS):]
    status, reason = rest[0], rest[1]
    figures = dict(zip(FIGURES, rest[2:2 + len(FIGURES)], strict=True))
    median, low, high, blob = rest[2 + len(FIGURES):]
    samples = tuple(np.frombuffer(blob, dtype="<f8").tolist()) if blob else ()
    return CaseRecord(case_id, label, labels, status, reason, figures, median, low, high, samples)


def _case_values(run_id: int, case: CaseRecord) -> tuple[Any, ...]:
    assert set(case.labels) == set(LABEL_COLUMNS) and set(case.figures) == set(FIGURES), case.case_id
    blob = np.asarray(case.samples_ms, dtype="<f8").tobytes() if case.samples_ms else None
    return (run_id, case.case_id, case.label, *(case.labels[c] for c in LABEL_COLUMNS), case.status, case.reason,
            *(case.figures[f] for f in FIGURES), case.median_ms, case.ci_low_ms, case.ci_high_ms, blob)
