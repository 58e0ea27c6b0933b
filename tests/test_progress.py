"""The live sweep status line: job k/N, case i/M, the stage and a sweep-wide ETA on a terminal only."""

from __future__ import annotations

import io
import re
import logging

import pytest

from attnbench.harness.sweep import progress as progress_mod
from attnbench.harness.sweep.progress import Progress, StatusLine, SweepState


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _ok_row() -> dict:
    return {"status": "ok", "latency_ms": 1.0, "latency_ci_rel": 0.01, "n_reps": 10}


@pytest.fixture
def sweep(monkeypatch: pytest.MonkeyPatch) -> SweepState:
    state = SweepState(num_jobs=20, job=2)
    monkeypatch.setattr(progress_mod, "_SWEEP", [state])
    return state


def test_terminal_shows_job_case_stage_and_sweep_eta(sweep: SweepState, caplog: pytest.LogCaptureFixture) -> None:
    screen = Terminal()
    job = Progress(4, line=StatusLine(screen))
    job.start("mla/absorbed decode b=1 seq=4k")
    job.stage("compiling")
    assert "job 3/20 · case 1/4 mla/absorbed decode b=1 seq=4k · compiling 0s · ETA ?" in screen.getvalue()
    job.started -= 10.0  # the first case took 10 s
    with caplog.at_level(logging.INFO, logger="attnbench.harness"):
        job.update("mla/absorbed decode b=1 seq=4k", _ok_row())
    assert "[1/4] mla/absorbed decode b=1 seq=4k: 1 ms" in caplog.text  # the log line is kept
    # 3 cases left in this job + 17 jobs not started x 4 cases, at 10 s each.
    assert job.eta_s() == pytest.approx(10.0 * (3 + 17 * 4), rel=0.01)
    job.start("mla/eager decode b=1 seq=4k")
    job.stage("timing")
    assert screen.getvalue().endswith("job 3/20 · case 2/4 mla/eager decode b=1 seq=4k · timing 0s · ETA 00:11:50")


def test_a_case_with_too_few_repetitions_says_so_not_plus_minus_inf(sweep: SweepState,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    job = Progress(1, line=StatusLine(io.StringIO()))
    job.start("mla/eager prefill seq=2k")
    with caplog.at_level(logging.INFO, logger="attnbench.harness"):
        job.update("mla/eager prefill seq=2k", _ok_row() | {"latency_ci_rel": float("inf"), "n_reps": 3})
    assert "1 ms (no CI: too few repetitions, n=3)" in caplog.text and "inf" not in caplog.text


def test_a_log_line_from_any_logger_never_lands_on_the_status_line(sweep: SweepState) -> None:
    screen = Terminal()
    handler = logging.StreamHandler(screen)  # the console handler Hydra puts on the root logger
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        job = Progress(2, line=StatusLine(screen))
        job.start("mha/eager decode seq=128")
        job.stage("timing")
        logging.getLogger("attnbench.harness.measure.runner").warning("flagged noisy")
        status = "case 1/2 mha/eager decode seq=128 · timing 0s · ETA ?"
        # The line is padded over, then the record starts at column 0 on its own line.
        assert re.search(re.escape(status) + r"\r +\rflagged noisy\n$", screen.getvalue()), repr(screen.getvalue())
        job.update("mha/eager decode seq=128", _ok_row())
        job.update("mha/eager decode seq=256", _ok_row())
        assert handler.filters == []  # the job's line is gone: nothing left on the root's handlers
        logging.getLogger("x").warning("after the job")
        assert screen.getvalue().endswith("\nafter the job\n")  # no erase: no line was showing
    finally:
        root.removeHandler(handler)


def test_quiet_off_a_terminal(sweep: SweepState) -> None:
    piped = io.StringIO()  # isatty() is False: a log file, CI, a pipe
    job = Progress(2, line=StatusLine(piped))
    job.start("gqa/sdpa decode")
    job.stage("gate")
    job.skip("gqa/sdpa decode", "already measured (resume)")
    assert piped.getvalue() == ""


def test_a_finished_job_feeds_the_next_jobs_eta(sweep: SweepState) -> None:
    first = Progress(1, line=StatusLine(io.StringIO()))
    first.started -= 6.0
    first.update("a", _ok_row())
    assert sweep.cases_done == 1 and sweep.case_seconds == pytest.approx(6.0, rel=0.01)
    sweep.job = 3
    second = Progress(1, line=StatusLine(io.StringIO()))
    assert second.eta_s() == pytest.approx(6.0 * (1 + 16), rel=0.01)  # before its own first case ends


def test_outside_a_sweep_the_eta_is_the_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_mod, "_SWEEP", [])
    screen = Terminal()
    job = Progress(2, line=StatusLine(screen))
    job.started -= 4.0
    job.update("a", _ok_row())
    job.start("b")
    assert "job" not in screen.getvalue() and job.eta_s() == pytest.approx(4.0, rel=0.01)


def test_a_real_job_reports_its_stages_in_order(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_job -> runner: the status line passes gate, building, first call and timing for one tiny case."""
    from hydra import compose, initialize_config_dir

    from attnbench.harness.sweep.job import run_job
    from attnbench.variants.presets import conf_root

    screen = Terminal()
    monkeypatch.setattr(progress_mod, "_SWEEP", [SweepState(num_jobs=2, job=0)])
    monkeypatch.setattr("sys.stderr", screen)  # the status line's default stream, here a terminal
    with initialize_config_dir(config_dir=str(conf_root()), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", "measure.calibrate=false", "device=cpu",
                                           "variant=gqa", "impl=sdpa", "phase=decode", "seq=16", "name=p"])
    rows = run_job(cfg, job_dir=tmp_path, root=tmp_path, log=io.StringIO())
    assert list(rows["status"]) == ["ok"]
    shown = screen.getvalue()
    marks = [shown.find(f"job 1/2 · case 1/1 gqa/sdpa decode seq=16 batch=1 float32 · {s}")
             for s in ("gate", "building", "first call", "timing")]
    assert -1 not in marks and marks == sorted(marks), shown
    # Cleared when the case ended: the log line takes its place. Searched after the last stage rather than
    # at the end, because another test's logging handler on a closed stream may print logging's own
    # "--- Logging error ---" report to this fake stderr anywhere around it.
    assert re.search(r"\r {20,}\r", shown[marks[-1]:]), shown
