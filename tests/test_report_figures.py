"""Every registered figure, drawn at both column widths from the committed fixture, reads as a
reviewer needs it to: the legend inside the canvas, at least three labelled ticks on a log axis that
spans a decade or more, at most six series per panel, and a title naming model, dtype and batch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from attnbench.harness import results
from attnbench.harness.report import figures
from attnbench.harness.report.analysis.baseline import Baseline, with_ratios
from attnbench.harness.report.analysis.capacity import RESERVE
from attnbench.harness.report.data import prepare
from attnbench.harness.report.figures import FigureInput
from attnbench.harness.report.figures.canvas import MAX_SERIES
from attnbench.harness.report.figures.legend import HEADER_GID, legend_inside
from attnbench.harness.report.figures.style import WIDTH_IN
from attnbench.harness.studies.lowrank.schema import row

# The tiny model's sweep, dense MLA beside DSA (tiny_dsa) for the sparse crossover figure, and a tiny hybrid's
# linear and full layers (tiny_hybrid) for the state_vs_kv figure.
FIXTURES = [Path(__file__).resolve().parent / "fixtures" / name
            for name in ("report_sweep", "sparse_sweep", "state_sweep")]


@pytest.fixture(scope="module")
def measured() -> FigureInput:
    ok, _ = with_ratios(prepare(results.load(FIXTURES)).ok, Baseline())
    # NVML is absent on the fixture's CPU: readings of a 300 W device over each step, so the energy
    # figure is drawn and checked too.
    ok = ok.assign(nvml_energy_per_token_j=300.0 * ok["latency_ms"] / 1e3 / (ok["batch"] * ok["q_len"]))
    return FigureInput(ok=ok, capacity=pd.DataFrame(), budget_bytes=None, reserve=RESERVE)


@pytest.fixture(scope="module")
def lowrank() -> FigureInput:
    """A study's rows shaped as ``attnbench.harness.studies.lowrank`` writes them: five methods, two d_r, four d_c
    (ten series: more than one panel holds), the source model."""
    rows = [row(model="tiny-llama", method="source", scope="model", layer=-1, status="ok", dtype="float32",
                perplexity=40.0, source_perplexity=40.0, source_kv_bytes_per_token=512, kv_dtype="float32",
                eval_tokens=4096)]
    for k, method in enumerate(("svd", "rsvd", "qr", "cur", "whitened")):
        for d_r in (4, 8):
            for d_c in (8, 16, 32, 64):
                err = (1 + k / 10) * 8 / d_c
                rows += [row(model="tiny-llama", method=method, d_c=d_c, d_r=d_r, scope="layer", layer=layer,
                             status="ok", dtype="float32", weight_rel_err=err, act_rel_err=err / 2)
                         for layer in (0, 1)]
                rows.append(row(model="tiny-llama", method=method, d_c=d_c, d_r=d_r, scope="model", layer=-1,
                                status="ok", dtype="float32", perplexity=40.0 * (1 + err), kv_dtype="float32",
                                kv_bytes_per_token=4 * (d_c + d_r), source_kv_bytes_per_token=512,
                                source_perplexity=40.0, eval_tokens=4096))
    return FigureInput.of_lowrank(pd.DataFrame(rows))


def _drawn(measured: FigureInput, lowrank: FigureInput) -> list[tuple[str, str, Figure]]:
    out = []
    for spec in figures.specs():
        data = lowrank if spec.rows == "lowrank" else measured
        for width in WIDTH_IN:
            drawn = figures.draw(spec.name, data, width=width)
            if drawn.figure is not None:  # solve the layout once, as saving does; later draws keep it (time)
                drawn.figure.canvas.draw()
                drawn.figure.set_layout_engine(None)
            out.append((spec.name, width, drawn.figure))
    return out


@pytest.fixture(scope="module")
def drawings(measured, lowrank) -> list[tuple[str, str, Figure]]:
    return _drawn(measured, lowrank)


def test_every_registered_figure_is_drawn_from_the_fixture(drawings):
    left_out = sorted({name for name, _, fig in drawings if fig is None})
    assert not left_out


def test_legends_lie_inside_the_canvas_at_both_widths(drawings):
    for name, width, fig in drawings:
        assert fig.legends, (name, width)
        assert legend_inside(fig, margin=0.0), (name, width)


def _labelled(ax: Axes, which: str) -> list[str]:
    axis = ax.yaxis if which == "y" else ax.xaxis
    low, high = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text() and low <= t.get_position()[
        1 if which == "y" else 0] <= high]


def test_log_axes_spanning_a_decade_label_at_least_three_ticks(drawings):
    checked = 0
    for name, width, fig in drawings:
        fig.canvas.draw()
        for ax in fig.axes:
            for which in ("x", "y"):
                scale = ax.get_yscale() if which == "y" else ax.get_xscale()
                low, high = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
                if scale != "log" or low <= 0 or math.log10(high / low) < 1:
                    continue
                checked += 1
                labels = _labelled(ax, which)
                assert len(labels) >= 3, (name, width, which, labels)
    assert checked >= 10  # the check is not vacuous


def _series(ax: Axes) -> int:
    """Data series in a panel: lines with markers (measured), one per variant/impl or method/d_r."""
    return sum(1 for line in ax.get_lines() if line.get_marker() not in (None, "None", "", " ")
               and len(line.get_xdata()) > 0)


def test_no_panel_holds_more_than_six_series(drawings):
    for name, width, fig in drawings:
        for ax in fig.axes:
            assert _series(ax) <= MAX_SERIES, (name, width, ax.get_title(loc="left"), _series(ax))


def test_latency_with_sixteen_series_is_faceted_by_variant_and_mla_by_path(drawings):
    fig = next(f for n, w, f in drawings if n == "latency" and w == "double")
    # MLA alone has seven implementations (eager, sdpa, flex, three absorbed, expanded): a panel per path.
    assert [ax.get_title(loc="left") for ax in fig.axes] == [
        "mha", "gqa", "mqa", "mla, standard", "mla, absorbed", "mla, expanded"]
    headings = [t.get_text() for t in fig.legends[0].get_texts() if t.get_fontweight() == "bold"]
    assert fig.legends[0].get_title().get_text() == "implementation" or headings


def test_every_figure_names_model_dtype_and_batch_in_its_title(drawings):
    for name, width, fig in drawings:
        title = fig.get_suptitle()
        assert "model " in title and "float32" in title and "batch " in title, (name, width, title)
        box = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, (name, width, title)  # never clipped


def test_legends_have_a_heading_and_an_entry_for_each_reference_line(drawings):
    for name, width, fig in drawings:
        legend = fig.legends[0]
        bold = [t.get_text() for t in legend.get_texts() if t.get_fontweight() == "bold"]
        assert bold or legend.get_title().get_text(), (name, width)
    peak = next(f for n, w, f in drawings if n == "peak_memory" and w == "single")
    labels = {t.get_text() for t in peak.legends[0].get_texts()}
    assert {"measured peak, one layer", "model, all layers", "model, extrapolated"} <= labels
    kv = next(f for n, w, f in drawings if n == "kv_cache" and w == "single")
    assert {"cost model", "measured, every impl.", "measured, expanded"} <= {t.get_text() for t in kv.legends[0].get_texts()}


def test_the_cost_model_line_per_token_is_exact_at_whole_contexts(drawings):
    kv = next(f for n, w, f in drawings if n == "kv_cache" and w == "single")
    lines = [line for line in kv.axes[0].get_lines() if line.get_linestyle() == "-" and len(line.get_xdata()) > 2]
    assert lines
    for line in lines:
        x = np.asarray(line.get_xdata())
        assert np.array_equal(x, np.round(x))  # whole tokens, never a truncated float context
    # The fixture's variants have no window or compression: a flat cost per token, drawn flat to the byte.
    assert all(np.ptp(np.asarray(line.get_ydata(), dtype=float)) == 0 for line in lines)


def test_roofline_points_show_phase_and_batch_and_its_legend_draws_no_line_for_a_point(drawings):
    for fig in (f for n, _, f in drawings if n == "roofline"):
        points = [c for ax in fig.axes for c in ax.collections]
        sizes = np.concatenate([c.get_sizes() for c in points])
        assert len(np.unique(sizes)) >= 3  # the fixture's batches 1, 4, 16, 64: one area each
        assert len({tuple(np.round(c.get_paths()[0].vertices, 3).ravel()) for c in points}) == 2  # decode, prefill
        handles = fig.legends[0].legend_handles
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert {"decode", "prefill", "1", "64", "measured ceilings"} <= set(labels), labels
        for handle, label in zip(handles, labels, strict=True):
            drawn_line = handle.get_linestyle() not in ("None", "", " ") and handle.get_visible()
            assert drawn_line == (label == "measured ceilings") or handle.get_gid() == HEADER_GID, label


def test_heading_entries_are_never_data(drawings):
    for _, _, fig in drawings:
        for ax in fig.axes:
            assert not any(line.get_gid() == HEADER_GID for line in ax.get_lines())
