"""The results store: per-case files, loading over runs, supersession of failed attempts."""

from __future__ import annotations

import pytest

from attnbench.harness import results


def _row(case_id: str, status: str, t: float, root: str = "r1", **extra):
    return {"case_id": case_id, "status": status, "finished_at": t, "run_root": root, "reason": "", **extra}


def test_rows_are_written_one_file_each_and_loaded(tmp_path):
    results.write_row(tmp_path / "r1", _row("a", "ok", 1.0, latency_ms=2.0, samples_ms=[1.0, 2.0, 3.0]))
    results.write_row(tmp_path / "r1" / "0", _row("b", "skipped", 2.0))
    frame = results.load(tmp_path)
    assert sorted(frame["case_id"]) == ["a", "b"]
    assert list(frame.loc[frame.case_id == "a", "samples_ms"].iloc[0]) == [1.0, 2.0, 3.0]
    assert not list(tmp_path.rglob("*.tmp"))


def test_ok_row_supersedes_failed_attempts_and_latest_wins_otherwise(tmp_path):
    results.write_row(tmp_path, _row("a", "error", 1.0))
    results.write_row(tmp_path, _row("a", "ok", 2.0))
    results.write_row(tmp_path, _row("a", "error", 3.0))
    results.write_row(tmp_path, _row("b", "error", 1.0))
    results.write_row(tmp_path, _row("b", "oom", 2.0))
    frame = results.load(tmp_path).set_index("case_id")
    assert frame.loc["a", "status"] == "ok" and frame.loc["b", "status"] == "oom"
    assert len(results.load(tmp_path, attempts=True)) == 5
    assert results.finished_case_ids(tmp_path) == {"a"}


def test_same_case_in_two_roots_is_two_rows(tmp_path):
    results.write_row(tmp_path / "x", _row("a", "ok", 1.0, root="x"))
    results.write_row(tmp_path / "y", _row("a", "ok", 2.0, root="y"))
    assert len(results.load([tmp_path / "x", tmp_path / "y"])) == 2
    assert len(results.load(str(tmp_path / "*"))) == 2


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="^no results at"):
        results.load(tmp_path / "nothing")


def test_bad_status_is_a_bug(tmp_path):
    with pytest.raises(AssertionError):
        results.write_row(tmp_path, _row("a", "fine", 1.0))
