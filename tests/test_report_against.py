"""``report NEW --against OLD`` (harness/report/page/against.py): a case made twice as fast is found
significant with an interval around 0.5, unchanged cases are not, and cases on one side are listed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attnbench.harness import results
from attnbench.harness.report.data import prepare
from attnbench.harness.report.page import against

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report_sweep"


@pytest.fixture(scope="module")
def old():
    ok = prepare(results.load(FIXTURE)).ok
    return ok[(ok["phase"] == "decode") & (ok["batch"] == 1) & ok["variant"].isin(["mha", "gqa"])]


def test_a_faster_case_is_significant_and_one_sided_cases_are_listed(old, tmp_path):
    new = old.copy()
    faster = new.index[0]
    new.at[faster, "samples_ms"] = np.asarray(new.at[faster, "samples_ms"]) * 0.5
    gone = new.index[-1]
    new = new.drop(index=gone)
    files, result = against.write(new, old, tmp_path)
    ratios = result.ratios.set_index("case_id")
    row = ratios.loc[old.at[faster, "case_id"]]
    assert row["ratio"] == pytest.approx(0.5) and row["ratio_low"] < 0.5 < row["ratio_high"] < 1 and row["significant"]
    unchanged = ratios.drop(index=old.at[faster, "case_id"])
    assert (unchanged["ratio"] == 1).all() and not unchanged["significant"].any()
    assert result.only_old == (against._label(old.loc[gone]),) and result.only_new == ()
    names = {p.name for p in files}
    assert {"against.md", "against.tex", "against.csv", "against.html", "against.png", "against.pdf"} <= names
    md = (tmp_path / "against" / "against.md").read_text()
    assert "only in OLD: " in md and "| * |" in md.replace("|*|", "| * |")


def test_a_small_change_is_not_significant_and_a_flagged_case_carries_a_dagger(old, tmp_path):
    """3% slower, every sample: the interval is tight but inside +-5%, so no star (two identical runs
    differ that much); a row flagged busy in NEW is marked and listed with its flag."""
    new = old.copy()
    new["samples_ms"] = new["samples_ms"].map(lambda s: np.asarray(s) * 1.03)
    busy = new.index[0]
    new.at[busy, "flags"] = "busy"
    _, result = against.write(new, old, tmp_path)
    assert not result.ratios["significant"].any()
    md = (tmp_path / "against" / "against.md").read_text()
    label = against._label(new.loc[busy])
    assert f"| {label} †" in md and f"† flagged in {label}: new busy" in md


def test_the_same_report_against_command_runs_twice_into_one_folder(tmp_path, capsys):
    """against/ is part of the report: in its manifest, so a rebuild replaces it (it was written after
    the manifest, and the second run refused the folder as holding files no report wrote)."""
    from attnbench.harness.report.__main__ import main as report_main

    argv = [str(FIXTURE), "--against", str(FIXTURE), "--out", str(tmp_path / "r"), "--filter", "variant=mha",
            "--widths", "single"]
    assert report_main(argv) == 0 and report_main(argv) == 0
    manifest = (tmp_path / "r" / "manifest.txt").read_text()
    assert "against/against.md" in manifest and "against/against.png" in manifest
    assert "case(s) measured in both, 0 changed beyond +-5%" in capsys.readouterr().out
