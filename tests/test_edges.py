"""Edges: run names and paths, lock folders and files, unreadable row files (issue 12, item 6)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from attnbench.harness import results
from attnbench.harness.errors import UserError
from attnbench.harness.results import merge
from attnbench.harness.results.paths import check_inside, check_out_dir, check_run_name
from attnbench.harness.sweep import pinning, status

FIXTURE = Path(__file__).parent / "fixtures" / "report_sweep" / "rows" / "rows.parquet"


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/abs", "a\\b", "", " ", "-rf", ".hidden", "a\x00b", "tab\tname",
                                  "new\nline", "x" * 201, "semi;colon", "star*", "quote'"])
def test_bad_run_names_are_refused_naming_the_value(name):
    with pytest.raises(UserError, match=r"^name=.*allowed: letters, digits") as error:
        check_run_name(name)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["ctx_h100", "2026-11-27_18-00-00", "a.b", "x-1", "v=2,seq=4k", "run@node1"])
def test_good_run_names_pass(name):
    assert check_run_name(name) == name


def test_check_inside(tmp_path):
    assert check_inside(tmp_path / "a" / "b", tmp_path) == (tmp_path / "a" / "b").resolve()
    with pytest.raises(UserError, match="outside the results folder"):
        check_inside(tmp_path / ".." / "elsewhere", tmp_path)
    (tmp_path / "link").symlink_to("/")
    with pytest.raises(UserError, match="outside the results folder"):
        check_inside(tmp_path / "link" / "etc", tmp_path)


def test_check_out_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    assert check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    for bad, why in [(tmp_path / "file", "is a file"), (tmp_path / "file" / "sub", "is a file"), ("", "is empty")]:
        with pytest.raises(UserError, match=why):
            check_out_dir(bad)
    assert not (tmp_path / "new").exists()  # a check, not a mkdir


def test_run_job_refuses_a_name_that_leaves_results(tmp_path):
    from hydra import compose, initialize_config_dir

    from attnbench.harness.sweep.job import run_job
    from attnbench.variants.presets import conf_root

    with initialize_config_dir(config_dir=str(conf_root()), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", "measure.calibrate=false", "device=cpu", "name=.."])
    with pytest.raises(UserError, match=r"^name='\.\.'"):
        run_job(cfg, job_dir=tmp_path / "results" / "..", root=tmp_path / "results" / "..", log=io.StringIO())
    assert list(tmp_path.iterdir()) == []


def test_an_existing_lock_folder_keeps_its_mode(tmp_path):
    mine = tmp_path / "locks"
    mine.mkdir(mode=0o700)
    os.chmod(mine, 0o700)
    lock = pinning.acquire(mine, ["gpu-0"])
    lock.release()
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    made = tmp_path / "made" / "locks"
    pinning.acquire(made, ["gpu-0"]).release()
    assert stat.S_IMODE(made.stat().st_mode) == 0o1777  # a folder the harness made is shared like /tmp


def test_a_lock_file_symlink_is_never_followed(tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep me")
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "gpu-0.lock").symlink_to(target)
    with pytest.raises(UserError, match="is a symbolic link"):
        pinning.try_lock(locks, 0, "gpu-0")
    assert target.read_text() == "keep me"
    (tmp_path / "dirlink").symlink_to(locks)
    with pytest.raises(UserError, match="is not a folder"):
        pinning.acquire(tmp_path / "dirlink", ["gpu-1"])


# --- unreadable row files: every kind, every command ------------------------------------------------

def _damage(kind: str, path: Path) -> None:
    good = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 3])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "middle":
        mid = len(good) // 2
        path.write_bytes(good[:mid] + bytes(b ^ 0xFF for b in good[mid: mid + 32]) + good[mid + 32:])
    elif kind == "foreign":
        import pandas as pd

        pd.DataFrame({"x": [1, 2]}).to_parquet(path)
    elif kind == "text":
        path.write_text("not parquet at all\n")
    else:
        raise AssertionError(kind)


KINDS = ["truncated", "empty", "middle", "foreign", "text"]


def _row(case_id: str, t: float) -> dict:
    return {"case_id": case_id, "status": "ok", "finished_at": t, "run_root": "sweep", "reason": "",
            "latency_ms": 1.0 + t, "samples_ms": [1.0, 2.0, 3.0], "env_host": "h", "env_device_name": "cpu"}


@pytest.mark.parametrize("kind", KINDS)
def test_an_unreadable_row_file_is_named_by_every_reader_and_missing_for_resume(tmp_path, kind, capsys):
    root = tmp_path / "sweep"
    good = results.write_row(root / "0", _row("a", 1.0))
    bad = results.write_row(root / "0", _row("b", 2.0))
    results.write_json(root / "0" / results.PLAN, {"job_num": None, "device": "cpu", "cases": [
        {"case_id": "a", "label": "case a"}, {"case_id": "b", "label": "case b"}]})
    _damage(kind, bad)
    fix = f"unreadable row file {bad}: delete it and resume"
    with pytest.raises(results.UnreadableRowFile, match="^" + fix.replace(".", r"\.")):
        results.load(root)
    assert merge.main([str(root), "--out", str(tmp_path / "merged")]) == 2
    from attnbench.harness.nightly.cli import main as nightly_main
    from attnbench.harness.report.__main__ import main as report_main

    assert report_main([str(root), "--out", str(tmp_path / "report")]) == 2
    assert nightly_main(["ingest", str(root), "--db", str(tmp_path / "h.sqlite")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith(f"error: {fix}") for line in err), err
    # status goes on: it names the file and counts its case as missing, as resume will.
    assert status.main([str(root)]) == 1
    out = capsys.readouterr().out
    assert f"warning: {fix}" in out and "missing" in out and "case b" in out
    # resume: the case re-runs (it is not finished), the file is kept aside, not deleted
    assert results.finished_case_ids(root) == {"a"}
    assert not bad.exists() and bad.with_name(bad.name + ".unreadable").exists()
    assert good.exists() and list(results.load(root)["case_id"]) == ["a"]


def test_every_byte_flip_of_a_row_file_is_refused_or_reads_the_same(tmp_path):
    """Page checksums and the footer checks: damage is named, never read as other numbers."""
    path = results.write_row(tmp_path, _row("a", 1.0))
    good, expected = path.read_bytes(), results.read_rows([path]).astype(str)
    refused = same = 0
    for i in range(0, len(good), 37):  # every region of the file (pages, schema, footer), ~800 reads
        path.write_bytes(good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1:])
        try:
            frame = results.read_rows([path])
        except results.UnreadableRowFile:
            refused += 1
            continue
        assert frame.astype(str).equals(expected), f"byte {i} flipped was read as other values"
        same += 1
    assert refused > same > 0


@pytest.mark.parametrize("name,text", [("plan.json", "{not json"), ("plan.json", '{"job_num": "x", "cases": 5}'),
                                       ("multirun.yaml", "hydra: [unclosed"), ("multirun.yaml", "just text"),
                                       ("multirun.yaml", "hydra: {sweeper: 3}")])
def test_corrupt_plan_or_multirun_is_one_line(tmp_path, name, text, capsys):
    root = tmp_path / "sweep"
    results.write_json(root / "0" / results.PLAN, {"job_num": 0, "device": "cpu", "cases": []})
    (root / ("0" if name == "plan.json" else ".") / name).write_text(text)
    assert status.main([str(root)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot read {root}") and name in err[0], err


# --- escaping ----------------------------------------------------------------------------------------

def test_markdown_and_mathtext_escaping():
    import pandas as pd

    from attnbench.harness.text import escape
    from attnbench.harness.report.tables.formats import markdown_grid

    nasty = "Xeon | `rm` <b>$x$</b>\nnext"
    grid = markdown_grid(pd.DataFrame({"device": [nasty], "latency_ms": [1.5]}))
    row = grid.splitlines()[2]
    assert row.count(" | ") == 1 and "<b>" not in row and "\\`rm\\`" in row and "\n" not in row.strip()
    assert escape.mathtext("cost $5 $and$") == r"cost \$5 \$and\$"
    assert escape.code("a`b") == "`a'b`"


def test_a_dollar_device_name_reaches_a_figure_title_as_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from attnbench.harness.report.analysis.baseline import Baseline
    from attnbench.harness.report.page.build import build_report

    table = pq.read_table(FIXTURE)
    device = "Weird $\\nosuchcommand{1}$ CPU"  # as mathtext this raises while the figure is drawn
    table = table.set_column(table.schema.get_field_index("env_device_name"), "env_device_name",
                             pa.array([device] * len(table), pa.string()))
    (tmp_path / "in" / "rows").mkdir(parents=True)
    pq.write_table(table, tmp_path / "in" / "rows" / "rows.parquet")
    report = build_report([tmp_path / "in"], tmp_path / "out", baseline=Baseline.parse("variant=mha,impl=eager"),
                          widths=["single"], figures=["latency"], command="test")
    assert list(report.devices) == [device] and "latency" not in report.left_out
    assert list((tmp_path / "out").rglob("latency*.png"))




@pytest.mark.parametrize("kind", ["truncated", "middle"])
def test_resume_reruns_the_case_of_an_unreadable_row_file_and_nothing_else(tmp_path, kind):
    from hydra import compose, initialize_config_dir

    from attnbench.harness.sweep.job import run_job
    from attnbench.variants.presets import conf_root

    with initialize_config_dir(config_dir=str(conf_root()), version_base="1.3"):
        first = compose("config", overrides=["experiment=smoke", "measure.calibrate=false", "device=cpu",
                                             "variant=gqa", "impl=sdpa", "phase=decode", "name=resumed"])
    root = tmp_path / "resumed"
    run_job(first, job_dir=root, root=root, log=io.StringIO())
    files = sorted((root / results.ROWS).glob("*.parquet"))
    before = results.load(root)
    assert len(files) == len(before) >= 1
    _damage(kind, files[0])
    with pytest.raises(results.UnreadableRowFile):
        results.load(root)
    resumed = first.copy()
    resumed.resume = True
    log = io.StringIO()
    rows = run_job(resumed, job_dir=root, root=root, log=log)
    assert len(rows) == 1, log.getvalue()  # the damaged case re-ran; the others were skipped
    damaged_case = rows["case_id"].iloc[0]
    after = results.load(root)
    assert sorted(after["case_id"]) == sorted(before["case_id"]) and set(after["status"]) == {"ok"}
    assert damaged_case in set(before["case_id"])
    assert files[0].with_name(files[0].name + ".unreadable").exists()  # kept aside, not deleted


def test_a_folder_that_cannot_be_made_is_refused(tmp_path, monkeypatch):
    """Where mkdir fails though os.access says yes (root in /proc, a read-only mount): one line, no traceback."""
    import errno
    import tempfile

    def read_only(**_):  # noqa: ANN003
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(UserError, match=r"^--out .*new: a folder can't be made in .*\(Read-only file system\); give"):
        check_out_dir(tmp_path / "new")


def test_the_probe_leaves_nothing_behind(tmp_path):
    check_out_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_case_too_large_to_record_is_a_skipped_row(tmp_path):
    """batch 1e8 at 32k: the prefill's FLOPs (~1e21) exceed a row's int64 columns. The sweep records a
    skipped row that says so (the write once raised Arrow's OverflowError and ended the sweep)."""
    from attnbench.harness.sweep.job import run_job
    from tests.test_run import _job_cfg

    cfg = _job_cfg(variant="mla", impl="absorbed", phase="both", seq="32k", batch=100_000_000)
    run_job(cfg, job_dir=tmp_path, root=tmp_path, log=io.StringIO())
    rows = results.load(tmp_path).set_index("phase")
    assert set(rows.index) == {"prefill", "decode"} and set(rows.status) == {"skipped"}
    assert rows.loc["prefill", "reason"].startswith("the case is too large to record: flops=")
    assert rows.loc["prefill", "flops"] is None or pd.isna(rows.loc["prefill", "flops"])
    assert rows.loc["prefill", "kv_cache_bytes_analytic"] > 0  # the counts that fit are kept
