"""Figure 1: step latency against context length, per variant and implementation, log-log, with
the 95% confidence interval of the median as a band."""

from __future__ import annotations

from attnbench.harness.report.figures import Drawn, FigureInput, figure
from attnbench.harness.report.figures.canvas import series_figure

BAND = ("latency_ci_low_ms", "latency_ci_high_ms")


@figure(name="latency", order=1, title="Latency against context length", needs=("latency_ms", "seq"))
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    return series_figure(
        data.ok, x="seq", y="latency_ms", width=width, width_in=width_in, band=BAND,
        ylabel="step latency (ms)",
        too_few="Latency against context length: left out, fewer than two context lengths measured at any one "
                "setting.",
        caption="Median step latency (one layer) against context length, log-log; bands: 95% confidence interval "
                "of the median.")
