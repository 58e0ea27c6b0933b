"""Figure 1: step latency against context length, per variant and implementation, log-log, with
the 95% confidence interval of the median as a band."""

from __future__ import annotations

from harness.report.figures import Drawn, FigureInput, figure
from harness.report.plotting import (caption_for, context_axis, device_title, drawn_rows, legend, log_axis, new_figure,
                                     panels, plot_series)

BAND = ("latency_ci_low_ms", "latency_ci_high_ms")


@figure(name="latency", order=1, title="Latency against context length", needs=("latency_ms", "seq"))
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    drawn = panels(data.ok, x="seq", y=("latency_ms",))
    if not drawn:
        return Drawn(None, "Latency against context length: left out, fewer than two context lengths measured "
                           "at any one setting.")
    fig, axes = new_figure(width, width_in, panels=len(drawn))
    for ax, panel in zip(axes, drawn, strict=True):
        plot_series(ax, panel.rows, "seq", "latency_ms", band=BAND)
        context_axis(ax)
        log_axis(ax, "y")
        ax.set_ylabel("step latency (ms)")
        device_title(ax, panel.device, width)
    legend(fig, drawn_rows(drawn))
    return Drawn(fig, "Median step latency (one layer) against context length, log-log; bands: 95% confidence "
                      f"interval of the median. {caption_for(drawn)}")
