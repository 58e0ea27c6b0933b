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
