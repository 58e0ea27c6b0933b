"""Faults a sceptical user finds from outside (issue 19): a report or merge that deletes or half-writes
files, user text unescaped in report.md, row files read with other types than declared, two ok rows
of one case kept silently, symbolic links, a history ordered by a skewed clock, resume under a changed
configuration, two sweeps under one name at once. Each test is one red-team case and its behaviour now."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnbench.harness import results
from attnbench.harness.errors import UserError
from attnbench.harness.report import build_report
from attnbench.harness.report.__main__ import main as report_main
from attnbench.harness.report.page import build as report_build
from attnbench.harness.results import merge

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "report_sweep"
SMALL = {"widths": ("single",), "figures": ("kv_cache",)}  # one figure at one width: a fast build


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


# --- report: only its own files, swapped in whole ---

def test_report_refuses_a_folder_whose_manifest_lists_the_users_files(tmp_path, capsys):
    mydata = tmp_path / "mydata"
    (mydata / "sub").mkdir(parents=True)
    (mydata / "notes.csv").write_text("a,b\n1,2\n")
    (mydata / "sub" / "data.parquet").write_bytes(b"PAR1 user data")
    (mydata / "manifest.txt").write_text("notes.csv\nsub/data.parquet\n")
    before = _digests(mydata)
    assert report_main([str(FIXTURE), "--out", str(mydata), "--widths", "single"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and err.count("\n") == 1 and str(mydata) in err, err
    assert _digests(mydata) == before, "nothing deleted, nothing added"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"], "no temporary folder left"


def test_a_failed_rebuild_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    out = tmp_path / "rep"
    build_report(FIXTURE, out, **SMALL)
    before = _digests(out)

    def killed(**_):
        raise KeyboardInterrupt  # as a kill while the page is written, after the figures

    monkeypatch.setattr(report_build, "page", killed)
    with pytest.raises(KeyboardInterrupt):
        build_report(FIXTURE, out, widths=("single",), figures=("roofline",))
    assert _digests(out) == before, "the previous report, every file as it was"
    assert not any(p.stat().st_size == 0 for p in out.rglob("*") if p.is_file())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_a_rebuild_with_a_filter_leaves_no_stale_figure(tmp_path):
    out = tmp_path / "rep"
    build_report(FIXTURE, out, widths=("single",), figures=("kv_cache", "roofline"))
    report = build_report(FIXTURE, out, filters={"phase": ["decode"]}, **SMALL)
    on_disk = {p for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(report.files)
    assert not list(out.glob("figures/roofline*"))


def test_report_md_escapes_device_and_model_names(tmp_path):
    frame = results.load(FIXTURE)
    frame["env_device_name"] = "<script>alert(1)</script>"
    frame["model"] = "<img src=x onerror=alert(2)>"
    build_report(frame, tmp_path / "rep", **SMALL)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "&lt;script&gt;" in md
    assert "<script" not in md and "<img" not in md


# --- merge: never a partial merged.parquet ---

def test_a_merge_killed_while_writing_leaves_no_merged_file(tmp_path, monkeypatch):
    merged = merge.merge([FIXTURE])
    real = pq.write_table

    def half(table, where, **kwargs):
        real(table.slice(0, 1), where, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", half)
    with pytest.raises(KeyboardInterrupt):
        merge.write(merged, tmp_path / "m")
    assert not [p for p in (tmp_path / "m").rglob("*") if p.is_file()]


# --- row files read with their declared types ---

def _row_file(folder: Path, **columns) -> Path:
    path = folder / "rows" / "c1.1.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"case_id": ["c1"], "status": ["ok"], **{k: [v] for k, v in columns.items()}}), path)
    return path


@pytest.mark.parametrize("column, value, shown", [("batch", 1.5, "1.5"), ("l2_flush", "false", "'false'"),
                                                  ("seq", "4k", "'4k'")])
def test_a_row_file_with_another_type_is_refused_by_name_and_column(tmp_path, column, value, shown):
    path = _row_file(tmp_path / "run", **{column: value})
    with pytest.raises(UserError) as error:
        results.load(tmp_path / "run")
    message = str(error.value)
    assert str(path) in message and f"column {column} is declared" in message and shown in message
    assert "\n" not in message
    with pytest.raises(UserError, match=f"column {column}"):
        merge.merge([tmp_path / "run"])


def test_an_integral_float_column_of_an_old_file_still_reads(tmp_path):
    _row_file(tmp_path / "run", batch=2.0, l2_flush=False)
    frame = results.load(tmp_path / "run")
    assert frame["batch"].tolist() == [2] and frame["l2_flush"].tolist() == [False]


# --- two ok rows of one case: load() refuses them as merge does ---

def _ok(case_id: str, at: int) -> dict:
    return {"case_id": case_id, "status": "ok", "reason": "", "variant": "mha", "impl": "eager", "compile": "none",
            "phase": "decode", "seq": 32, "batch": 1, "dtype": "float32", "model": "tiny", "run_root": "twice",
            "finished_at": at, "env_host": "h", "env_device_name": "cpu"}


def test_load_refuses_two_ok_rows_of_one_case_as_merge_does(tmp_path):
    root = tmp_path / "twice"
    results.write_row(root, _ok("c1", 1))
    results.write_row(root, _ok("c1", 2))
    with pytest.raises(results.DuplicateCase, match=r"^duplicate case mha/eager decode seq=32 batch=1 float32 \[c1\]"):
        results.load(root)
    with pytest.raises(results.DuplicateCase, match=r"^duplicate case .*--prefer newest"):
        merge.merge([root])
    assert len(results.load(root, attempts=True)) == 2  # every attempt, for whoever asks for them


# --- resume under a changed configuration; one sweep at a time under a name ---

def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    from attnbench.variants.presets import conf_root

    with initialize_config_dir(config_dir=str(conf_root()), version_base="1.3"):
        return compose("config", overrides=["experiment=smoke", "device=cpu", "variant=mha", "impl=eager",
                                            "phase=decode", "name=ed", *overrides])


@pytest.fixture
def fake_cases(monkeypatch):
    """Cases 'measured' in no time: an ok row of the job's columns (resume and the config check are under test)."""
    from attnbench.variants.registry import VARIANTS

    def run_case(case, ctx):
        return {**ctx.job_columns, "case_id": case.case_id(VARIANTS.get(case.variant).uses), "status": "ok",
                "reason": "", "finished_at": pd.Timestamp.now(tz="UTC"), "latency_ms": 1.0, "latency_ci_rel": 0.01,
                "n_reps": 3}

    monkeypatch.setattr("attnbench.harness.sweep.job.run_case", run_case)


def test_resume_refuses_a_changed_configuration_and_keeps_the_stored_one(tmp_path, fake_cases):
    from attnbench.harness.sweep.job import run_job

    root = tmp_path / "ed"
    assert len(run_job(_compose("measure.warmup_reps=1"), job_dir=root, root=root)) == 1
    stored = (root / "config.yaml").read_text()
    with pytest.raises(UserError, match=r"measure\.warmup_reps 1 -> 7\)") as error:
        run_job(_compose("measure.warmup_reps=7", "resume=true"), job_dir=root, root=root)
    assert "\n" not in str(error.value) and str(root) in str(error.value)
    assert (root / "config.yaml").read_text() == stored, "the config the rows were measured with"
    # resume itself (and where ceilings are cached) may change: the case is skipped, the config kept.
    assert run_job(_compose("measure.warmup_reps=1", "resume=true", f"calibration_dir={tmp_path}"),
                   job_dir=root, root=root).empty
    assert (root / "config.yaml").read_text() == stored
    assert len(results.load(root)) == 1


_HOLD = """
import sys, time
from pathlib import Path
from attnbench.harness.sweep.claim import claimed
with claimed(Path(sys.argv[1]), launcher=sys.argv[2]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_sweep_under_the_same_name_is_refused_naming_the_holder(tmp_path, fake_cases):
    import os
    import signal
    import socket
    import subprocess
    import sys

    from attnbench.harness.sweep.claim import claimed
    from attnbench.harness.sweep.job import run_job

    root = tmp_path / "ed"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(root), "basic"], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"in use by another sweep under the same name \(pid {holder.pid} on "
                                            rf"{socket.gethostname()}, started 20"):
            run_job(_compose(), job_dir=root / "0", root=root, job={"job_num": 0, "launcher": "basic"})
        assert not list(root.rglob("*.parquet")) and not (root / "0" / "config.yaml").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a killed holder: the kernel releases its lock
        holder.wait()
    assert len(run_job(_compose(), job_dir=root / "0", root=root, job={"job_num": 0, "launcher": "basic"})) == 1
    # The jobs of one sweep (here: one process) share the name.
    with claimed(root, launcher="basic"), claimed(root, launcher="basic"):
        pass


# --- nightly: runs in the order they were ingested; a run stamped in the future is refused ---

def _night(tmp_path: Path, name: str, time_utc: str, seed: int) -> Path:
    from tests.nightly_rows import lognormal_samples, row, write_run

    return write_run(tmp_path / name, [row("mla-absorbed", lognormal_samples(1.0, seed=seed))], time_utc=time_utc)


def test_a_run_stamped_in_the_future_is_refused_at_ingest_naming_the_stamp(tmp_path, capsys):
    from attnbench.harness.nightly import cli

    db = tmp_path / "h.sqlite"
    skewed = _night(tmp_path, "skewed", "2099-01-01T00:00:00+00:00", seed=0)
    assert cli.main(["ingest", str(skewed), "--commit", "c1", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "env_time_utc 2099-01-01T00:00:00+00:00 lies in the future" in err, err
    assert not db.exists(), "nothing ingested"


def test_runs_are_ordered_by_ingestion_and_an_old_history_keeps_its_order(tmp_path):
    import sqlite3

    from attnbench.harness.nightly.ingest import read_run
    from attnbench.harness.nightly.store import SCHEMA_VERSION, History

    history = History(tmp_path / "h.sqlite")

    def ingest(name: str, time_utc: str, seed: int) -> int:
        run, cases = read_run(_night(tmp_path, name, time_utc, seed), commit=name)
        return history.add_run(run, cases)

    later = ingest("a", "2026-01-02T00:00:00+00:00", 0)
    earlier = ingest("b", "2026-01-01T00:00:00+00:00", 1)  # a clock behind, or a run ingested late
    assert history.latest().run_id == earlier and [r.run_id for r in history.good_runs_before(history.latest())] \
        == [later], "the run ingested last is the new one, whatever its clock said"
    assert history.latest().ingested_at is not None

    with sqlite3.connect(history.path) as con:  # the same history as schema version 2 wrote it
        con.execute("ALTER TABLE runs DROP COLUMN seq")
        con.execute("ALTER TABLE runs DROP COLUMN ingested_at")
        con.execute("PRAGMA user_version=2")
    assert [r.run_id for r in history.runs()] == [earlier, later], "read as it is: by start time, as it was"
    newest = ingest("c", "2026-01-01T12:00:00+00:00", 2)
    assert [r.run_id for r in history.runs()] == [earlier, later, newest]
    with sqlite3.connect(history.path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# --- symbolic links: followed where named, refused by name inside a results folder ---

def _sweep_with_a_linked_job(tmp_path: Path) -> tuple[Path, Path]:
    root, elsewhere = tmp_path / "sweep", tmp_path / "elsewhere" / "1"
    results.write_row(root / "0", {**_ok("c1", 1), "run_root": "sweep"})
    results.write_row(elsewhere, {**_ok("c2", 2), "run_root": "sweep"})
    (root / "1").symlink_to(elsewhere, target_is_directory=True)
    return root, root / "1"


def test_a_linked_job_folder_is_refused_by_name_by_every_reader(tmp_path, capsys):
    from attnbench.harness.sweep import status

    root, link = _sweep_with_a_linked_job(tmp_path)
    for read in (results.load, lambda r: merge.merge([r]), results.finished_case_ids, status.status):
        with pytest.raises(results.LinkInResults, match=rf"^{link} is a symbolic link \(to .*elsewhere/1\)"):
            read(root)
    assert report_main([str(root), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{link} is a symbolic link" in err
    assert len(results.load(link)) == 1, "named on its own, the link is followed"


def test_a_linked_row_file_is_refused_and_a_folder_named_twice_is_read_once(tmp_path):
    other = tmp_path / "other"
    theirs = results.write_row(other, {**_ok("c9", 1), "run_root": "other"})
    mine = tmp_path / "mine"
    results.write_row(mine, _ok("c1", 1))
    (mine / "rows" / "c9.1.parquet").symlink_to(theirs)
    with pytest.raises(results.LinkInResults, match="c9.1.parquet is a symbolic link"):
        results.load(mine)
    alias = tmp_path / "alias"
    alias.symlink_to(other, target_is_directory=True)
    assert len(results.load([other, alias])) == 1


def test_the_workers_of_one_parallel_sweep_share_its_name(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from attnbench.harness.sweep.claim import SWEEP_ENV, claimed

    root = tmp_path / "ed"
    env = {**os.environ, SWEEP_ENV: "host:1:abc"}  # as the launching process sets it for its workers
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(root), "joblib"], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv(SWEEP_ENV, "host:1:abc")
        with claimed(root, launcher="joblib"):  # another worker of the same sweep
            pass
        monkeypatch.setenv(SWEEP_ENV, "host:2:def")
        with pytest.raises(UserError, match=f"pid {holder.pid}"), claimed(root, launcher="joblib", wait_s=0.1):
            pass
    finally:
        holder.kill()
        holder.wait()
