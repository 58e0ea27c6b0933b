"""The one error boundary every command goes through (harness.errors, issue 19): a user error and an
environment error are one ``error:`` line and exit 2, Ctrl-C is one line and 130, a bug is one line naming
the file that holds its traceback and exit 1. Then the same inside a Hydra job (the job log gets the
traceback) and once through a real process for SIGINT."""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.harness.app.main import main
from attnbench.harness.errors import BUG_EXIT, INTERRUPT_EXIT, USER_EXIT, UserError, boundary, guarded, report

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model=tiny", "device=cpu", "measure=quick", "variant=mha", "impl=eager", "seq=32"]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(("error", "code", "text"), [
    (UserError("seq='x' is not a size"), USER_EXIT, "error: seq='x' is not a size"),
    (ValueError("--run=abc is not a run id\nsecond line"), USER_EXIT, "error: --run=abc is not a run id"),
    (OSError(errno.ENOSPC, "No space left on device", "/r/rows/a.parquet"), USER_EXIT,
     "error: the disk is full at /r/rows/a.parquet: free space"),
    (OSError(errno.EROFS, "Read-only file system", "/r/0"), USER_EXIT, "error: /r/0 is on a read-only file system"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/r/x"), USER_EXIT, "error: /r/x: a file is where a folder"),
    (PermissionError(errno.EACCES, "Permission denied", "/r"), USER_EXIT, "error: no permission to write /r"),
    (sqlite3.OperationalError("database is locked"), USER_EXIT, "error: a database is locked by another process"),
    (KeyboardInterrupt(), INTERRUPT_EXIT, "error: interrupted; finished cases are kept"),
])
def test_each_kind_of_error_is_one_line_with_its_status(error, code, text, capsys):
    assert report(error, "test") == code
    assert _one_line(capsys.readouterr().err).startswith(text)


def test_a_bug_is_one_line_naming_the_log_that_holds_its_traceback(tmp_path, capsys):
    log = tmp_path / "job" / "attnbench.log"
    with pytest.raises(SystemExit) as exit_info:
        with boundary("run", log=lambda: log):
            raise RuntimeError("an invariant broke")
    assert exit_info.value.code == BUG_EXIT
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: a bug in attnbench run: RuntimeError: an invariant broke") and str(log) in line
    text = log.read_text()
    assert "Traceback" in text and 'raise RuntimeError("an invariant broke")' in text


def test_ctrl_c_names_the_resume_command_and_a_command_returns_its_status(capsys):
    with pytest.raises(SystemExit) as exit_info:
        with boundary("run", resume=lambda: "attnbench name=x resume=true"):
            raise KeyboardInterrupt
    assert exit_info.value.code == INTERRUPT_EXIT
    assert _one_line(capsys.readouterr().err).endswith("resume with: attnbench name=x resume=true")

    @guarded("demo")
    def demo(argv):
        if argv == ["bug"]:
            raise KeyError("k")
        if argv == ["full"]:
            raise OSError(errno.ENOSPC, "No space left on device", "/d")
        return 3

    assert demo([]) == 3 and demo(["full"]) == USER_EXIT
    assert "disk is full at /d" in capsys.readouterr().err
    assert demo(["bug"]) == BUG_EXIT
    line = _one_line(capsys.readouterr().err)
    bug_log = Path(line.split("the traceback is in ")[1].split(")")[0])
    assert "KeyError" in bug_log.read_text()
    bug_log.unlink()


@pytest.mark.parametrize(("raised", "code", "text"), [
    (OSError(errno.ENOSPC, "No space left on device", "{out}/rows/x.parquet"), USER_EXIT,
     "error: the disk is full at {out}/rows/x.parquet"),
    (OSError(errno.EROFS, "Read-only file system", "{out}/rows"), USER_EXIT, "error: {out}/rows is on a read-only"),
    (RuntimeError("boom"), BUG_EXIT, "error: a bug in attnbench run: RuntimeError: boom (the traceback is in "
                                     "{out}/attnbench.log)"),
    (KeyboardInterrupt(), INTERRUPT_EXIT, "error: interrupted; finished cases are kept; resume with: attnbench "),
])
def test_a_hydra_job_ends_at_its_boundary(raised, code, text, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"

    def fail(*args, **kwargs):
        if isinstance(raised, OSError):
            raise type(raised)(raised.errno, raised.strerror, raised.filename.format(out=out))
        raise raised

    monkeypatch.setattr("attnbench.harness.app.main.run", fail)
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY, "name=mine", f"hydra.run.dir={out}"])
    assert exit_info.value.code == code
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(text.format(out=out)), line
    if code == BUG_EXIT:
        assert "Traceback" in (out / "attnbench.log").read_text()
    if code == INTERRUPT_EXIT:
        assert line.endswith(" name=mine resume=true") and "hydra.run.dir=" in line


def test_a_results_folder_that_is_a_file_is_refused_before_hydra(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").write_text("a file where the results folder belongs\n")
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY, "name=x"])
    assert exit_info.value.code == USER_EXIT
    assert "results is a file" in _one_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_an_empty_home_never_means_slash_dot_cache(tmp_path, monkeypatch, capsys):
    from attnbench.harness.measure.calibrate import cache_dir_of

    monkeypatch.setenv("HOME", "")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY, "measure.calibrate=true", f"hydra.run.dir={tmp_path / 'run'}"])
    assert exit_info.value.code == USER_EXIT
    assert "HOME is empty; set HOME or XDG_CACHE_HOME" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir_of("~/.cache/attnbench") == tmp_path / "xdg" / "attnbench"
    assert cache_dir_of("/elsewhere") == Path("/elsewhere")


def test_a_locked_history_is_named_at_once(tmp_path, monkeypatch, capsys):
    from attnbench.harness.nightly import dbfile
    from attnbench.harness.nightly.cli import main as nightly

    db = tmp_path / "h.sqlite"
    assert nightly(["ingest", str(ROOT / "tests" / "fixtures" / "report_sweep"), "--db", str(db), "--commit", "a1"]) == 0
    monkeypatch.setattr(dbfile, "BUSY_TIMEOUT_S", 0.05)
    holder = sqlite3.connect(db, isolation_level=None)  # another process's writer, as SQLite sees it
    holder.execute("BEGIN EXCLUSIVE")
    try:
        capsys.readouterr()
        assert nightly(["history", "--db", str(db)]) == USER_EXIT
        assert _one_line(capsys.readouterr().err) == f"error: history {db} is locked by another process; retry when it has finished"
    finally:
        holder.close()
    assert nightly(["history", "--db", str(db)]) == 0


def test_status_resumes_with_the_sweeps_config_dir():
    from attnbench.harness.sweep.status import resume_command

    multirun = {"hydra": {"overrides": {"task": ["model=mine", "seq=32,64"], "hydra": ["hydra.mode=MULTIRUN"]},
                          "runtime": {"config_sources": [
                              {"provider": "main", "schema": "file", "path": "/checkout/conf"},
                              {"provider": "command-line", "schema": "file", "path": "/my conf"}]}}}
    command = resume_command(Path("results/s"), multirun)
    assert command == "python -m attnbench.harness --config-dir '/my conf' -m model=mine seq=32,64 name=s resume=true"


# Ctrl-C at a terminal. A suite started as a background job (`cmd &` in a script) hands its children
# SIGINT ignored, and Python then installs no handler: the script asks for the terminal's default.
SIGINT_SCRIPT = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import attnbench.harness.app.main as app
def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
app.run = interrupted
sys.exit(app.main(sys.argv[1:]))
"""


def test_sigint_through_a_real_process_is_one_line_and_130(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", SIGINT_SCRIPT, *TINY, "name=ctrl_c", f"hydra.run.dir={out}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == INTERRUPT_EXIT, done.stderr[-2000:]
    line = _one_line(done.stderr)
    assert line.startswith("error: interrupted; finished cases are kept; resume with: attnbench ")
    assert line.endswith("name=ctrl_c resume=true")
