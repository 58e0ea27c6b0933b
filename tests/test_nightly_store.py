"""The nightly history: ingest from results folders, fingerprints, crash safety, baselines, gc."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from attnbench.harness.measure.env import fingerprint
from attnbench.harness.nightly import cli
from attnbench.harness.nightly.ingest import read_run
from attnbench.harness.nightly.store import History
from tests.nightly_rows import ENV, MEASURE, lognormal_samples, row, write_run

ROOT = Path(__file__).resolve().parent.parent


def _ingest(history: History, root: Path, commit: str) -> int:
    run, cases = read_run(root, commit=commit)
    return history.add_run(run, cases)


def _simple_run(tmp_path: Path, name: str, *, seed: int = 0, time_utc: str = "2026-01-01T00:00:00+00:00",
                **env) -> Path:
    rows = [row("mla-absorbed", lognormal_samples(1.0, seed=seed)), row("mla-eager", lognormal_samples(2.0, seed=seed)),
            row("gqa-sdpa", None, status="skipped", reason="sdpa is not here", figures={})]
    return write_run(tmp_path / name, rows, time_utc=time_utc, env=env or None)


def test_ingest_keeps_every_sample_and_the_fingerprint(tmp_path):
    history = History(tmp_path / "history.sqlite")
    root = _simple_run(tmp_path, "night-1")
    run_id = _ingest(history, root, "a" * 40)
    run = history.run(run_id)
    settings = {"torch_threads": 1, **{f"measure.{k}": MEASURE[k] for k in ("warmup_reps", "warmup_s", "cuda_graph",
                                                                          "l2_flush")}}
    assert run.fingerprint == fingerprint(ENV, **settings)  # harness.measure.env's own hash of the same fields
    assert run.status == "complete" and run.commit == "a" * 40 and run.name == "night-1" and run.verdict is None
    cases = history.cases(run_id)
    assert len(cases) == 3
    absorbed = next(c for c in cases.values() if c.labels["impl"] == "absorbed")
    assert absorbed.samples_ms == tuple(lognormal_samples(1.0, seed=0))  # raw samples, bit for bit
    assert absorbed.label == "mla/absorbed decode seq=4k batch=1 float32"
    assert absorbed.figures["flops"] == 1_000_000 and absorbed.figures["peak_mem_bytes"] == 9_000_000
    skipped = next(c for c in cases.values() if c.status == "skipped")
    assert skipped.samples_ms == () and skipped.median_ms is None and skipped.reason == "sdpa is not here"
    assert history.integrity() == "ok"


def test_commit_comes_from_the_rows_or_must_be_given(tmp_path):
    root = _simple_run(tmp_path, "night-1", env_git_commit="c0ffee")
    assert read_run(root)[0].commit == "c0ffee"
    with pytest.raises(ValueError, match="pass --commit SHA"):
        read_run(_simple_run(tmp_path, "night-2"))


def test_results_mixing_fingerprints_are_refused(tmp_path):
    root = tmp_path / "sweep"
    write_run(root, [row("mla-absorbed", lognormal_samples(1.0))], job="0")
    write_run(root, [row("mla-eager", lognormal_samples(1.0))], job="1", env={"env_torch": "2.12.0+cpu"})
    with pytest.raises(ValueError, match=r"mix 2 fingerprints .* env_torch '2.1\d.0\+cpu' vs '2.1\d.0\+cpu'"):
        read_run(root, commit="x")
    other = tmp_path / "threads"
    write_run(other, [row("mla-absorbed", lognormal_samples(1.0)), row("mla-eager", lognormal_samples(1.0),
                                                                         torch_threads=2)])
    with pytest.raises(ValueError, match="torch_threads 1 vs 2"):
        read_run(other, commit="x")


def test_results_mixing_timing_settings_are_refused(tmp_path):
    root = tmp_path / "sweep"
    write_run(root, [row("mla-absorbed", lognormal_samples(1.0))], job="0")
    write_run(root, [row("mla-eager", lognormal_samples(1.0))], job="1", measure={"cuda_graph": True})
    with pytest.raises(ValueError, match="mix timing settings .* measure.cuda_graph False vs True"):
        read_run(root, commit="x")


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from attnbench.harness.nightly.store import History
    history = History(sys.argv[1])
    template = history.run(1)
    cases = list(history.cases(1).values())

    def slow_cases():
        for i, case in enumerate(cases):
            yield case
            if i == 1:
                print("mid-write", flush=True)
                time.sleep(60)  # SIGKILLed here, with two cases inserted and the run marked partial

    history.add_run(template, slow_cases())
""")


def test_a_run_killed_mid_ingest_leaves_the_history_intact(tmp_path):
    history = History(tmp_path / "history.sqlite")
    first = _ingest(history, _simple_run(tmp_path, "night-1"), "c1")
    second = _ingest(history, _simple_run(tmp_path, "night-2", seed=1, time_utc="2026-01-02T00:00:00+00:00"), "c2")
    before = {r: history.cases(r) for r in (first, second)}

    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(history.path)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "mid-write", writer.stderr.read()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    assert history.integrity() == "ok"
    assert [r.run_id for r in history.runs()] == [first, second]  # the killed run is not counted
    assert {r: history.cases(r) for r in (first, second)} == before  # nothing earlier lost
    assert history.latest().run_id == second
    assert [r.run_id for r in history.good_runs_before(history.latest())] == [first]
    with sqlite3.connect(history.path) as con:  # the uncommitted run was rolled back on open
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
        assert con.execute("SELECT COUNT(*) FROM cases").fetchone()[0] == 6
    third = _ingest(history, _simple_run(tmp_path, "night-3", seed=2, time_utc="2026-01-03T00:00:00+00:00"), "c3")
    assert [r.run_id for r in history.runs()] == [first, second, third]


def test_a_committed_partial_run_is_never_used_and_gc_removes_it(tmp_path):
    history = History(tmp_path / "history.sqlite")
    first = _ingest(history, _simple_run(tmp_path, "night-1"), "c1")
    with sqlite3.connect(history.path) as con:  # as a crashed writer of another tool could leave it
        con.execute("INSERT INTO runs (commit_sha, time_utc, fingerprint, fingerprint_fields, status, source, name) "
                    "SELECT 'c2', '2026-01-05T00:00:00+00:00', fingerprint, fingerprint_fields, 'partial', 'x', 'y' "
                    "FROM runs WHERE run_id = ?", (first,))
    partial = first + 1
    assert [r.run_id for r in history.runs()] == [first]
    assert history.latest().run_id == first
    with pytest.raises(ValueError, match=f"run {partial} is not in .* as a complete run"):
        history.run(partial)
    assert history.gc() == 1
    with sqlite3.connect(history.path) as con:
        assert con.execute("SELECT run_id FROM runs").fetchall() == [(first,)]
    assert history.integrity() == "ok"


def test_last_good_skips_regressions_until_one_is_accepted(tmp_path):
    history = History(tmp_path / "history.sqlite")
    ids = [_ingest(history, _simple_run(tmp_path, f"night-{i}", seed=i, time_utc=f"2026-01-0{i + 1}T00:00:00+00:00"),
                   f"c{i}") for i in range(4)]
    history.set_verdict(ids[2], "regression")
    assert [r.run_id for r in history.good_runs_before(history.run(ids[3]))] == [ids[1], ids[0]]
    history.set_verdict(ids[2], "accepted")
    assert history.good_runs_before(history.run(ids[3]))[0].run_id == ids[2]
    with pytest.raises(ValueError, match="verdict='ok' is not one of: pass, suspect, regression, accepted"):
        history.set_verdict(ids[2], "ok")


def test_other_fingerprints_are_not_baselines_and_gc_keeps_the_newest(tmp_path):
    history = History(tmp_path / "history.sqlite")
    a = _ingest(history, _simple_run(tmp_path, "a"), "c1")
    b = _ingest(history, _simple_run(tmp_path, "b", time_utc="2026-01-02T00:00:00+00:00",
                                     env_device_name="Other CPU"), "c2")
    c = _ingest(history, _simple_run(tmp_path, "c", time_utc="2026-01-03T00:00:00+00:00"), "c3")
    assert [r.run_id for r in history.good_runs_before(history.run(c))] == [a]
    assert history.good_runs_before(history.run(b)) == []
    assert history.gc(keep=1) == 1
    assert [r.run_id for r in history.runs()] == [b, c]
    with pytest.raises(ValueError, match="keep=0 is not allowed"):
        history.gc(keep=0)
    assert json.loads(json.dumps(history.run(b).fingerprint_fields))["env"]["env_device_name"] == "Other CPU"


def test_reading_a_missing_history_says_how_to_start(tmp_path):
    with pytest.raises(ValueError, match="no history at .*; ingest a run first"):
        History(tmp_path / "none.sqlite").runs()


_LARGE_WRITER = textwrap.dedent("""
    import sys
    from dataclasses import replace
    from attnbench.harness.nightly.store import History
    history = History(sys.argv[1])
    template = history.run(1)
    case = next(iter(history.cases(1).values()))
    samples = case.samples_ms * 25  # 10 000 samples a case: the transaction outgrows SQLite's page cache

    def many_cases():
        i = 0
        while True:  # never ends by itself: it is killed while inserting
            yield replace(case, case_id=f"case-{i:08d}", samples_ms=samples)
            i += 1
            if i == 1500:
                print("mid-write", flush=True)

    history.add_run(template, many_cases())
""")


def test_a_large_ingest_killed_mid_write_leaves_a_sound_file_even_carried_alone(tmp_path):
    """The workflow's cache keeps only the history file: it must be sound and whole without any side file."""
    history = History(tmp_path / "runner" / "history.sqlite")
    first = _ingest(history, _simple_run(tmp_path, "night-1"), "c1")
    second = _ingest(history, _simple_run(tmp_path, "night-2", seed=1, time_utc="2026-01-02T00:00:00+00:00"), "c2")
    writer = subprocess.Popen([sys.executable, "-c", _LARGE_WRITER, str(history.path)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "mid-write", writer.stderr.read()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert any(history.path.parent.glob(".history.sqlite.*.tmp"))  # killed while writing its copy (>1500 cases)

    carried = tmp_path / "next-night" / "history.sqlite"  # only the file, as actions/cache restores it
    carried.parent.mkdir()
    shutil.copyfile(history.path, carried)
    with sqlite3.connect(carried) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT run_id, status FROM runs").fetchall() == [(first, "complete"), (second, "complete")]
        assert con.execute("SELECT COUNT(*) FROM cases").fetchone()[0] == 6
    assert cli.main(["history", "--db", str(carried)]) == 0
    assert cli.main(["compare", "--db", str(carried), "--no-record"]) == 0
    third = _ingest(history, _simple_run(tmp_path, "night-3", seed=2, time_utc="2026-01-03T00:00:00+00:00"), "c3")
    assert [r.run_id for r in history.runs()] == [first, second, third]
    assert not any(history.path.parent.glob(".history.sqlite.*"))  # the next writer removed the killed one's copy


def test_the_same_results_are_ingested_once(tmp_path, capsys):
    db = tmp_path / "history.sqlite"
    root = _simple_run(tmp_path, "night-1")
    assert cli.main(["ingest", str(root), "--commit", "c1", "--db", str(db)]) == 0
    copied = shutil.copytree(root, tmp_path / "copied")  # the same results from another folder, another commit
    capsys.readouterr()
    for again in ([str(root), "--commit", "c1"], [str(copied), "--commit", "c2"]):
        assert cli.main(["ingest", *again, "--db", str(db)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: these results are already in {db} as run 1 (commit c1,") and err.count("\n") == 1
    assert [r.run_id for r in History(db).runs()] == [1]
    # Another night of the same cases is a new run, even with the same samples (only its start time differs).
    assert cli.main(["ingest", str(_simple_run(tmp_path, "night-2", time_utc="2026-01-02T00:00:00+00:00")),
                     "--commit", "c1", "--db", str(db)]) == 0


def _foreign_sqlite(path: Path) -> Path:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE notes (body TEXT)")
        con.execute("INSERT INTO notes VALUES ('mine')")
    return path


@pytest.mark.parametrize("kind", ["text", "foreign-sqlite", "folder", "fifo"])
@pytest.mark.parametrize("command", ["ingest", "compare", "history", "accept", "gc"])
def test_a_file_that_is_not_a_history_is_refused_in_one_line(tmp_path, capsys, kind, command):
    db = tmp_path / "history.sqlite"
    if kind == "text":
        db.write_text("run,latency_ms\n1,0.5\n" * 200)
    elif kind == "foreign-sqlite":
        _foreign_sqlite(db)
    elif kind == "fifo":  # as a device node: as root, the writer's atomic replace once replaced /dev/null
        os.mkfifo(db)
    else:
        db.mkdir()
    before = db.read_bytes() if db.is_file() else None
    args = {"ingest": [str(_simple_run(tmp_path, "night-1")), "--commit", "c1"], "accept": ["1"]}.get(command, [])
    assert cli.main([command, *args, "--db", str(db)]) == 2  # never 1, which means a regression
    err = capsys.readouterr().err
    assert err.startswith(f"error: {db} is ") and "not an attnbench history" in err and err.count("\n") == 1, err
    if before is not None:
        assert db.read_bytes() == before  # a foreign file is never written to
    assert stat.S_ISFIFO(db.stat().st_mode) == (kind == "fifo")


def test_gc_refuses_a_missing_history_and_an_absurd_keep(tmp_path, capsys):
    db = tmp_path / "history.sqlite"
    assert cli.main(["gc", "--db", str(db)]) == 2
    assert capsys.readouterr().err.startswith(f"error: no history at {db}") and not db.exists()
    assert cli.main(["ingest", str(_simple_run(tmp_path, "night-1")), "--commit", "c1", "--db", str(db)]) == 0
    assert cli.main(["gc", "--db", str(db), "--keep", str(10**23)]) == 2
    assert capsys.readouterr().err == f"error: keep={10**23} is not allowed: keep must be an integer from 1 to 2^63-1\n"


_V1_RUNS = """CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT, commit_sha TEXT NOT NULL, time_utc TEXT NOT NULL,
    fingerprint TEXT NOT NULL, fingerprint_fields TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('partial', 'complete')),
    verdict TEXT CHECK (verdict IS NULL OR verdict IN ('pass', 'regression', 'accepted')),
    source TEXT NOT NULL, name TEXT NOT NULL, notes TEXT NOT NULL DEFAULT '')"""


def test_a_version_1_history_is_read_and_upgraded_on_the_first_write(tmp_path):
    current = History(tmp_path / "v2.sqlite")
    _ingest(current, _simple_run(tmp_path, "night-1"), "c1")
    old = tmp_path / "v1.sqlite"  # as attnbench wrote it before digests and suspect verdicts
    with sqlite3.connect(old) as con:
        con.execute(_V1_RUNS)
        con.execute("ATTACH DATABASE ? AS v2", (str(current.path),))
        con.execute("CREATE TABLE cases AS SELECT * FROM v2.cases")
        con.execute("INSERT INTO runs SELECT run_id, commit_sha, time_utc, fingerprint, fingerprint_fields, status, "
                    "verdict, source, name, notes FROM v2.runs")
        con.execute("PRAGMA user_version=1")
    history = History(old)
    assert [r.run_id for r in history.runs()] == [1] and len(history.cases(1)) == 3
    with pytest.raises(ValueError, match="already in .* as run 1"):  # its digest is computed in the upgrade
        _ingest(history, tmp_path / "night-1", "c1")
    second = _ingest(history, _simple_run(tmp_path, "night-2", seed=1, time_utc="2026-01-02T00:00:00+00:00"), "c2")
    history.set_verdict(second, "suspect")
    assert len(history.cases(1)) == 3 and history.integrity() == "ok"
    with sqlite3.connect(old) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 3
