"""The distribution figure (harness/report/figures/distribution.py): each chosen case's raw samples as
an ECDF, legible at every venue width, flagged cases marked hollow as in every other figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

from attnbench.harness import results
from attnbench.harness.report import figures
from attnbench.harness.report.analysis.capacity import RESERVE
from attnbench.harness.report.data import prepare
from attnbench.harness.report.figures import FigureInput
from attnbench.harness.report.figures.distribution import ecdf
from attnbench.harness.report.figures.legend import legend_inside
from attnbench.harness.report.figures.style import MAX_HEIGHT_IN, MIN_TEXT_PT, VENUE_WIDTH_IN, WIDTH_IN, width_inches
from attnbench.harness.report.flagged import FLAGGED_EDGE, FLAGGED_GID

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report_sweep"


@pytest.fixture(scope="module")
def inputs() -> FigureInput:
    ok = prepare(results.load(FIXTURE)).ok
    ok = ok.assign(flags=np.where(ok["variant"] == "mqa", "noisy", ""))  # the fixture predates flags
    return FigureInput(ok=ok, capacity=pd.DataFrame(), budget_bytes=None, reserve=RESERVE)


def test_ecdf_steps_once_per_sample_up_to_one():
    xs, ys = ecdf([3.0, 1.0, 2.0, 2.0])
    assert xs.tolist() == [1.0, 2.0, 2.0, 3.0]
    assert ys.tolist() == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("width", [*WIDTH_IN, *VENUE_WIDTH_IN, "12cm"])
def test_every_width_fits_the_page_with_legible_text_and_the_legend_inside(inputs, width):
    fig = figures.draw("latency_distribution", inputs, width=width).figure
    assert fig is not None
    w, h = fig.get_size_inches()
    assert w == pytest.approx(width_inches(width)) and h <= MAX_HEIGHT_IN
    assert legend_inside(fig, margin=0.0)
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]
    assert min(sizes) >= MIN_TEXT_PT


def test_each_case_draws_all_its_samples_and_a_flagged_case_is_hollow_and_listed(inputs):
    drawn = figures.draw("latency_distribution", inputs, width="single")
    ok = inputs.ok
    shortest = ok[(ok["phase"] == "decode") & (ok["batch"] == 1) & (ok["seq"] == ok["seq"].min())]
    ax = drawn.figure.axes[0]  # the shortest context's panel
    steps = {line.get_label(): line for line in ax.get_lines() if "/" in str(line.get_label())}
    assert {label.split("/")[0] for label in steps} == set(shortest["variant"])  # one case per variant
    for label, line in steps.items():
        variant, impl = label.split("/")
        row = shortest[(shortest["variant"] == variant) & (shortest["impl"] == impl)].iloc[0]
        assert len(line.get_xdata()) == len(row["samples_ms"]) + 1  # every sample, from a share of 0
        assert line.get_ydata()[-1] == pytest.approx(1.0)
    hollow = [line for line in ax.get_lines() if line.get_gid() == FLAGGED_GID]
    assert len(hollow) == 1 and hollow[0].get_markerfacecolor() == "none"
    assert hollow[0].get_markeredgecolor() == FLAGGED_EDGE
    assert "Flagged rows" in drawn.caption and "mqa/" in drawn.caption


def test_rows_without_samples_leave_the_figure_out_with_a_note(inputs):
    bare = FigureInput(ok=inputs.ok.assign(samples_ms=None), capacity=pd.DataFrame(), budget_bytes=None,
                       reserve=RESERVE)
    drawn = figures.draw("latency_distribution", bare, width="single")
    assert drawn.figure is None and "samples_ms" in drawn.caption
