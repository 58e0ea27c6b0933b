"""The report's one look: fixed colours per variant, markers and line styles per implementation,
TrueType fonts, column widths, and the same colour for a variant in every figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.text import Text

from attnbench import variants
from attnbench.harness import results
from attnbench.harness.report import figures
from attnbench.harness.report.analysis.baseline import Baseline, with_ratios
from attnbench.harness.report.analysis.capacity import RESERVE
from attnbench.harness.report.data import prepare
from attnbench.harness.report.figures import FigureInput
from attnbench.harness.report.figures.legend import legend_inside
from attnbench.harness.report.figures.style import (IMPL_STYLES, OKABE_ITO, RC, VARIANT_COLORS, figure_style,
                                                    impl_style, series_style, variant_color, width_class, width_inches)
from attnbench.harness.report.figures.style import MAX_HEIGHT_IN, MIN_TEXT_PT

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report_sweep"


@pytest.fixture(scope="module")
def inputs() -> FigureInput:
    ok, _ = with_ratios(prepare(results.load(FIXTURE)).ok, Baseline())
    return FigureInput(ok=ok, capacity=pd.DataFrame(), budget_bytes=None, reserve=RESERVE)


def test_each_builtin_variant_has_its_own_fixed_okabe_ito_colour():
    assert VARIANT_COLORS == {"mha": "#0072B2", "mqa": "#E69F00", "gqa": "#009E73", "mla": "#D55E00",
                              "dsa": "#CC79A7", "csa": "#56B4E9", "hca": "#000000", "swa": "#9A7B00",
                              "gdn": "#4B6E2E", "kda": "#7F7F7F"}
    assert set(VARIANT_COLORS) == set(variants.variant_names())
    assert len(set(VARIANT_COLORS.values())) == len(VARIANT_COLORS)
    # Okabe-Ito's, but swa's (the palette's yellow darkened) and the linear families' (the palette is spent).
    assert {c for v, c in VARIANT_COLORS.items() if v not in ("swa", "gdn", "kda")} <= set(OKABE_ITO.values())


def test_plugged_in_names_get_a_stable_style_from_the_palette():
    color = variant_color("sliding_window")
    assert color == variant_color("sliding_window") and color in OKABE_ITO.values()
    assert color != OKABE_ITO["yellow"]
    marker, linestyle = impl_style("flashmla")
    assert (marker, linestyle) == impl_style("flashmla")
    assert marker not in {m for m, _ in IMPL_STYLES.values()}


def test_every_builtin_implementation_has_a_distinct_marker_and_line_style():
    markers = [m for m, _ in IMPL_STYLES.values()]
    lines = [str(ls) for _, ls in IMPL_STYLES.values()]
    assert len(set(markers)) == len(markers) and len(set(lines)) == len(lines)
    assert set(IMPL_STYLES) == {"eager", "sdpa", "absorbed", "absorbed_sdpa", "absorbed_native", "absorbed_fold_o",
                                "expanded"}


def test_compiled_cases_are_hollow_markers_of_the_same_colour():
    plain, compiled = series_style("mla", "absorbed"), series_style("mla", "absorbed", "default")
    assert plain.color == compiled.color and plain.marker == compiled.marker
    assert plain.line_kwargs()["markerfacecolor"] == plain.color
    assert compiled.line_kwargs()["markerfacecolor"] == "white"


def test_style_embeds_truetype_and_leaves_global_rcparams_alone():
    assert RC["pdf.fonttype"] == 42 and RC["ps.fonttype"] == 42
    before = matplotlib.rcParams["pdf.fonttype"]
    with figure_style():
        assert matplotlib.rcParams["pdf.fonttype"] == 42
    assert matplotlib.rcParams["pdf.fonttype"] == before


def test_column_widths():
    assert width_inches("single") == 3.5 and width_inches("double") == 7.0
    assert width_inches("neurips") == width_inches("5.5in") == 5.5 and width_inches("icml") == 3.25
    assert width_inches("12cm") == pytest.approx(12 / 2.54) and width_inches("234pt") == pytest.approx(234 / 72.27)
    assert (width_class("3.25in"), width_class("5.5in"), width_class("double")) == ("single", "double", "double")
    for bad in ("wide", "5.5", "20in", "1in"):
        with pytest.raises(ValueError, match=f"width='{bad}' is not one of: single, double, icml"):
            width_inches(bad)


# Venue widths (ICML/MLSys column, NeurIPS text, ICML text, a free length) and the page each must fit.
VENUES = {"3.25in": 3.25, "5.5in": 5.5, "6.75in": 6.75, "12cm": 12 / 2.54}


@pytest.mark.parametrize("width", VENUES)
def test_a_figure_at_each_venue_width_fits_the_page_with_legible_text(inputs, width):
    # Two figures, one render each: the faceted latency (16 series) and the two-panel KV-cache figure.
    for name in ("latency", "kv_cache"):
        fig = figures.draw(name, inputs, width=width).figure
        assert fig is not None, name
        w, h = fig.get_size_inches()
        assert w == pytest.approx(VENUES[width]) and h <= MAX_HEIGHT_IN, (name, width, w, h)
        assert legend_inside(fig, margin=0.0), (name, width)  # draws the canvas: the layout is solved
        # Printed at its own width, a point of the figure is a point on paper.
        sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]
        assert sizes and min(sizes) >= MIN_TEXT_PT, (name, width, min(sizes))
        ncols = max(len({round(ax.get_position().x0, 3) for ax in fig.axes}), 1)
        assert ncols <= (2 if width_class(width) == "single" else 3), (name, width, ncols)


def _line_colours(fig) -> dict[str, str]:
    colours = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if "/" in str(line.get_label()):  # series lines are labelled variant/impl
                colours[line.get_label()] = to_hex(line.get_color(), keep_alpha=False).upper()
    return colours


def test_a_variant_has_the_same_colour_in_every_figure(inputs):
    seen: dict[str, set[str]] = {}
    for name in ("latency", "bandwidth_fraction", "decode_throughput", "peak_memory"):
        drawn = figures.draw(name, inputs, width="single")
        assert drawn.figure is not None, drawn.caption
        colours = _line_colours(drawn.figure)
        assert {label.split("/")[0] for label in colours} == {"mha", "mqa", "gqa", "mla"}, name
        for label, colour in colours.items():
            seen.setdefault(label.split("/")[0], set()).add(colour)
    assert seen == {v: {VARIANT_COLORS[v].upper()} for v in seen}


def test_a_figure_is_never_drawn_empty(inputs):
    empty = FigureInput(ok=inputs.ok.iloc[0:0], capacity=inputs.capacity, budget_bytes=None, reserve=RESERVE)
    for spec in figures.specs():
        drawn = figures.draw(spec.name, empty, width="single")
        assert drawn.figure is None and "left out" in drawn.caption, spec.name
    one_context = inputs.ok[inputs.ok["seq"] == 128]  # every curve would be a single point
    drawn = figures.draw("latency", FigureInput(one_context, inputs.capacity, None, RESERVE))
    assert drawn.figure is None and "fewer than two context lengths" in drawn.caption


def test_energy_figure_is_drawn_when_nvml_data_are_present(inputs):
    assert figures.draw("energy_per_token", inputs).figure is None  # CPU rows: no NVML
    ok = inputs.ok.copy()
    # Synthetic NVML readings: a 300 W GPU over each step's tokens.
    ok["nvml_energy_per_token_j"] = 300.0 * ok["latency_ms"] / 1e3 / (ok["batch"] * ok["q_len"])
    drawn = figures.draw("energy_per_token", FigureInput(ok, inputs.capacity, None, RESERVE), width="double")
    assert drawn.figure is not None, drawn.caption
    ax = drawn.figure.axes[0]
    assert ax.get_ylabel() == "energy per token (mJ)"
    # Twelve series are faceted a panel per variant (small multiples): every one is drawn, once.
    drawn_lines = [line for ax in drawn.figure.axes for line in ax.get_lines() if "/" in str(line.get_label())]
    # (the tiny model's slice: the fixture's tiny_dsa rows are another setting, in the tables)
    drawn_slice = ok[(ok["phase"] == "decode") & (ok["batch"] == 1) & (ok["model"] == "tiny")]
    assert len(drawn_lines) == len(drawn_slice.groupby(["variant", "impl"]))


def test_devices_are_never_mixed_on_one_curve(inputs):
    other = inputs.ok.assign(env_device_name="NVIDIA H100 80GB HBM3", latency_ms=inputs.ok["latency_ms"] / 10)
    both = FigureInput(pd.concat([inputs.ok, other], ignore_index=True), inputs.capacity, None, RESERVE)
    fig = figures.draw("latency", both, width="double").figure
    # Faceted a panel per variant (MLA: per implementation path) and device (more than six series
    # each): each panel is one device's.
    cpu = inputs.ok["env_device_name"].iloc[0]
    for device, scale in ((cpu, 1), ("NVIDIA H100 80GB HBM3", 10)):
        mine = [ax for ax in fig.axes if ax.get_title(loc="left").endswith(f", {device}")]
        tiny = inputs.ok[inputs.ok["model"] == "tiny"]  # the slice drawn (tiny_dsa's rows are another setting)
        assert len(mine) == tiny["variant"].nunique() - 1 + 3  # mla: standard, absorbed, expanded
        lows = min(min(line.get_ydata()) for ax in mine for line in ax.get_lines() if "/" in str(line.get_label()))
        # the H100 panels hold only the H100 rows (10x faster), the CPU panels only the CPU rows
        assert lows * scale == pytest.approx(tiny.query("phase == 'decode' and batch == 1")["latency_ms"].min())
