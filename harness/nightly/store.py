"""The history of runs across commits: one SQLite file, no server.

A nightly CI runner keeps the file between nights (a cache or an artifact). Tables:

- ``runs``: one row per ingested run: ``run_id``, ``commit``, ``time_utc`` (when the run started),
  ``fingerprint`` (``attnbench.harness.measure.env.fingerprint`` of the machine and timing settings) and the fields
  it was made from (JSON), ``status`` (``complete`` or ``partial``), ``verdict`` (``pass``,
  ``regression``, ``accepted`` or null before any comparison), ``source`` (the results path),
  ``name`` (the run root) and ``notes``.
- ``cases``: one row per case of a run: its ``case_id`` and label columns, ``status``, the
  deterministic figures (``flops``, ``bytes_min``, ``kv_bytes_per_token``, ``kv_cache_bytes``,
  ``peak_mem_bytes``), the median and its CI, and every raw sample as little-endian float64 bytes.

A run is added once: ``digest`` identifies its content (fingerprint, start time and every case's
identity, status, figures and raw samples), and a second ingest of the same results is refused.

Crash safety and identification are ``attnbench.harness.nightly.dbfile``'s: every change is one transaction
on a private copy that atomically replaces the file, so a writer killed at any moment leaves the
previous history, whole, in the one file the workflow carries. A ``partial`` run can therefore only
come from an older attnbench or a foreign tool; every query here ignores it and ``gc`` deletes it.

Runs are ordered by ingestion (``seq``), never by the time a run says it started: a machine with a
skewed clock (a run stamped 2099) would otherwise stay the newest run for ever, the baseline of
every later one, and no later run would be judged. ``ingested_at`` records when a run was added.

Schema versions: 1 had no ``digest`` and no ``suspect`` verdict; 2 no ``seq`` and ``ingested_at``
(its runs get ``seq`` in their old order, by start time). Both are read as they are and upgraded in
the first write.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from attnbench.harness.nightly.dbfile import APPLICATION_ID, reading, replacing
from attnbench.harness.results import schema

SCHEMA_VERSION = 3
# suspect: a timing slowdown seen in this run only, not yet confirmed (harness.nightly.compare).
Verdict = Literal["pass", "suspect", "regression", "accepted"]
VERDICTS: tuple[str, ...] = ("pass", "suspect", "regression", "accepted")
GOOD_VERDICTS: tuple[str | None, ...] = (None, "pass", "accepted")  # a run that can be a baseline
# The figures that do not depend on timing noise: compared exactly (see harness.nightly.compare).
FIGURES: tuple[str, ...] = ("flops", "bytes_min", "kv_bytes_per_token", "kv_cache_bytes", "peak_mem_bytes")
assert all(schema.BY_NAME[f].kind == "int64" for f in FIGURES)
# The case columns of the schema (and the preset's name). The timing mode is not among them: the
# run's fingerprint holds it (harness.nightly.ingest), so runs timed differently are never compared.
LABEL_COLUMNS: tuple[str, ...] = (*(c for c in schema.CASE if schema.BY_NAME[c].group == "case"), "model")

_RUNS_TABLE = """
CREATE TABLE {name} (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    commit_sha TEXT NOT NULL,
    time_utc TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    fingerprint_fields TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('partial', 'complete')),
    verdict TEXT CHECK (verdict IS NULL OR verdict IN ('pass', 'suspect', 'regression', 'accepted')),
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    notes TEXT NOT NULL DEFAULT '',
    digest TEXT,
    seq INTEGER,
    ingested_at TEXT
)"""
_INDEXES = ("CREATE INDEX IF NOT EXISTS runs_by_fingerprint ON runs (fingerprint, status, time_utc)",
            "CREATE INDEX IF NOT EXISTS runs_by_digest ON runs (digest)")
_CASES_TABLE = f"""
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
)"""


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
    seq: int = 0  # ingestion order: what "before" and "latest" mean
    ingested_at: str | None = None  # ISO 8601 in UTC; None for runs ingested before schema version 3

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
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with reading(self.path, newest=SCHEMA_VERSION) as con:
            if con.execute("PRAGMA user_version").fetchone()[0] < 3:
                # Read as it is: a temporary view (it shadows the table; the file is not changed) gives
                # its runs the order they had, by start time, as the upgrade will store it.
                con.execute("CREATE TEMP VIEW runs AS SELECT *, ROW_NUMBER() OVER (ORDER BY time_utc, run_id) "
                            "AS seq, NULL AS ingested_at FROM main.runs")
            yield con

    @contextmanager
    def _write(self, *, vacuum: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction on a copy that replaces the file when it commits (``attnbench.harness.nightly.dbfile``)."""
        with replacing(self.path, newest=SCHEMA_VERSION, vacuum=vacuum) as (con, version):
            if version < SCHEMA_VERSION:
                _upgrade(con, version)
            yield con

    # -- writing ---------------------------------------------------------------------------------
    def add_run(self, run: NewRun, cases: Iterable[CaseRecord]) -> int:
        """Add a run and its cases atomically; returns its ``run_id``.

        ``cases`` is consumed inside the transaction, so a writer killed while producing them
        leaves nothing behind. Results already in the history (the same ``digest``) are refused.
        """
        with self._write() as con:
            seq = con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchone()[0]
            cur = con.execute(
                "INSERT INTO runs (commit_sha, time_utc, fingerprint, fingerprint_fields, status, source, name, "
                "notes, seq, ingested_at) VALUES (?, ?, ?, ?, 'partial', ?, ?, ?, ?, ?)",
                (run.commit, run.time_utc, run.fingerprint, json.dumps(run.fingerprint_fields, sort_keys=True),
                 run.source, run.name, run.notes, seq, datetime.now(UTC).isoformat(timespec="seconds")))
            run_id = int(cur.lastrowid)
            case_digests = []
            for case in cases:
                con.execute(_INSERT_CASE, _case_values(run_id, case))
                case_digests.append(_case_digest(case))
            if not case_digests:
                raise ValueError(f"no cases in {run.source}: nothing to ingest")
            digest = _run_digest(run.fingerprint, run.time_utc, case_digests)
            same = con.execute("SELECT run_id, commit_sha, time_utc FROM runs WHERE digest = ? AND status = "
                               "'complete'", (digest,)).fetchone()
            if same is not None:
                raise ValueError(f"these results are already in {self.path} as run {same[0]} (commit "
                                 f"{same[1][:12]}, started {same[2]}): a run is ingested once")
            con.execute("UPDATE runs SET status = 'complete', digest = ? WHERE run_id = ?", (digest, run_id))
        return run_id

    def set_verdict(self, run_id: int, verdict: Verdict) -> None:
        self.set_verdicts({run_id: verdict})

    def set_verdicts(self, verdicts: dict[int, Verdict]) -> None:
        """Record several runs' verdicts in one transaction."""
        for run_id, verdict in verdicts.items():
            if verdict not in VERDICTS:
                raise ValueError(f"verdict={verdict!r} is not one of: {', '.join(VERDICTS)}")
            self.run(run_id)  # raises for an unknown run
        with self._write() as con:
            con.executemany("UPDATE runs SET verdict = ? WHERE run_id = ?", [(v, r) for r, v in verdicts.items()])

    def gc(self, *, keep: int | None = None) -> int:
        """Delete partial runs and, with ``keep``, all but the newest ``keep`` complete runs of each
        fingerprint; returns how many runs were deleted."""
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= 2**63 - 1):
            raise ValueError(f"keep={keep!r} is not allowed: keep must be an integer from 1 to 2^63-1")
        if not self.path.exists():  # nothing to collect: not a new, empty history in its place
            raise ValueError(f"no history at {self.path}; nothing to collect")
        with self._write(vacuum=True) as con:
            doomed = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status != 'complete'")]
            if keep is not None:
                doomed += [r[0] for r in con.execute(
                    "SELECT run_id FROM (SELECT run_id, ROW_NUMBER() OVER (PARTITION BY fingerprint "
                    "ORDER BY seq DESC, run_id DESC) AS k FROM runs WHERE status = 'complete') WHERE k > ?",
                    (keep,))]
            # Cases explicitly, not by cascade: an upgrade in this same transaction runs without foreign keys.
            con.executemany("DELETE FROM cases WHERE run_id = ?", [(r,) for r in doomed])
            con.executemany("DELETE FROM runs WHERE run_id = ?", [(r,) for r in doomed])
        return len(doomed)

    # -- reading ---------------------------------------------------------------------------------
    def runs(self, *, fingerprint: str | None = None) -> list[Run]:
        """Complete runs, oldest first (in the order they were ingested)."""
        query = f"SELECT {_RUN_COLUMNS} FROM runs WHERE status = 'complete'"
        args: tuple[Any, ...] = ()
        if fingerprint is not None:
            query += " AND fingerprint = ?"
            args = (fingerprint,)
        with self._connect() as con:
            return [_run(r) for r in con.execute(query + " ORDER BY seq, run_id", args)]

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

    def runs_before(self, run: Run, *, verdicts: Iterable[str | None] | None = None,
                    limit: int | None = None) -> list[Run]:
        """Complete runs on ``run``'s fingerprint ingested before it (with one of ``verdicts``), newest first."""
        allowed = None if verdicts is None else set(verdicts)
        earlier = [r for r in self.runs(fingerprint=run.fingerprint)
                   if r.seq < run.seq and (allowed is None or r.verdict in allowed)]
        earlier.reverse()
        return earlier[:limit] if limit is not None else earlier

    def good_runs_before(self, run: Run, *, limit: int | None = None) -> list[Run]:
        """Earlier runs that can be a baseline: passed, accepted, or never compared; newest first.
        A ``suspect`` or ``regression`` run never is, so a slowdown is judged against the runs before it."""
        return self.runs_before(run, verdicts=GOOD_VERDICTS, limit=limit)

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
        return sorted(series, key=lambda pair: pair[0].seq)

    def integrity(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``"ok"`` for a sound file."""
        with self._connect() as con:
            return "; ".join(r[0] for r in con.execute("PRAGMA integrity_check"))


_RUN_COLUMNS = ("run_id, commit_sha, time_utc, fingerprint, fingerprint_fields, status, verdict, source, name, notes, "
                "seq, ingested_at")
_RUN_COLUMNS_V1 = "run_id, commit_sha, time_utc, fingerprint, fingerprint_fields, status, verdict, source, name, notes"
_CASE_COLUMNS = ("case_id, label, " + ", ".join(LABEL_COLUMNS) + ", status, reason, " + ", ".join(FIGURES)
                 + ", median_ms, ci_low_ms, ci_high_ms, samples_f64")
_INSERT_CASE = (f"INSERT INTO cases (run_id, {_CASE_COLUMNS}) VALUES "
                f"({', '.join('?' * (len(_CASE_COLUMNS.split(',')) + 1))})")


def _run(row: tuple[Any, ...]) -> Run:
    run_id, commit, time_utc, fp, fields, status, verdict, source, name, notes, seq, ingested_at = row
    return Run(run_id, commit, time_utc, fp, json.loads(fields), status, verdict, source, name, notes, seq, ingested_at)


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


def _upgrade(con: sqlite3.Connection, version: int) -> None:
    """Bring a history of schema ``version`` (0: a new file) to ``SCHEMA_VERSION``, inside the open transaction."""
    if version == 0:
        con.execute(_RUNS_TABLE.format(name="runs"))
    elif version == 1:
        # Version 2 widens the verdict CHECK (SQLite cannot alter one) and adds ``digest``: rebuild ``runs``.
        con.execute(_RUNS_TABLE.format(name="runs_v2"))
        con.execute(f"INSERT INTO runs_v2 ({_RUN_COLUMNS_V1}) SELECT {_RUN_COLUMNS_V1} FROM runs")
        con.execute("DROP TABLE runs")
        con.execute("ALTER TABLE runs_v2 RENAME TO runs")
    elif version == 2:
        con.execute("ALTER TABLE runs ADD COLUMN seq INTEGER")
        con.execute("ALTER TABLE runs ADD COLUMN ingested_at TEXT")
    else:
        raise AssertionError(f"no upgrade from schema version {version}")
    if version in (1, 2):  # the order these runs had (by start time): ingestion order starts after them
        ordered = con.execute("SELECT run_id FROM runs ORDER BY time_utc, run_id").fetchall()
        con.executemany("UPDATE runs SET seq = ? WHERE run_id = ?", [(i + 1, r[0]) for i, r in enumerate(ordered)])
    con.execute(_CASES_TABLE)
    for index in _INDEXES:
        con.execute(index)
    if version == 1:  # digests of the runs already held, so a re-ingest of one of them is refused too
        for run_id, fp, time_utc in con.execute("SELECT run_id, fingerprint, time_utc FROM runs "
                                                "WHERE status = 'complete'").fetchall():
            cases = [_case(r) for r in con.execute(f"SELECT {_CASE_COLUMNS} FROM cases WHERE run_id = ?", (run_id,))]
            con.execute("UPDATE runs SET digest = ? WHERE run_id = ?",
                        (_run_digest(fp, time_utc, [_case_digest(c) for c in cases]), run_id))
    con.execute(f"PRAGMA application_id={APPLICATION_ID}")
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _case_digest(case: CaseRecord) -> str:
    """The case as stored: everything ``_case`` reads back, so a stored run's digest can be recomputed."""
    text = json.dumps([case.case_id, case.label, case.labels, case.status, case.reason, case.figures, case.median_ms,
                       case.ci_low_ms, case.ci_high_ms], sort_keys=True, default=str)
    samples = np.asarray(case.samples_ms, dtype="<f8").tobytes()
    return hashlib.sha256(text.encode() + b"\0" + samples).hexdigest()


def _run_digest(fingerprint: str, time_utc: str, case_digests: Iterable[str]) -> str:
    """The run's content. Not the commit or the path: the same samples ingested again under another
    ``--commit`` or from a copied folder are still the same measurement."""
    joined = "\n".join([fingerprint, time_utc, *sorted(case_digests)])
    return hashlib.sha256(joined.encode()).hexdigest()
