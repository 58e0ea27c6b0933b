"""Figure 5: achieved bandwidth as a fraction of the device's measured copy bandwidth, against
context length. Decode at long contexts is bound by reading the cache: this is how close it gets."""

from __future__ import annotations

from harness.report.figures import Drawn, FigureInput, figure
from harness.report.plotting import (caption_for, context_axis, device_title, drawn_rows, legend, log_axis, new_figure,
                                     panels, plot_series)


@figure(name="bandwidth_fraction", order=5, title="Bandwidth fraction against context length",
        needs=("frac_peak_bandwidth", "seq"),
        why_missing="the device's ceilings are calibrated only with measure.calibrate=true")
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    drawn = panels(data.ok, x="seq", y=("frac_peak_bandwidth",))
    if not drawn:
        return Drawn(None, "Bandwidth fraction against context length: left out, fewer than two context lengths "
                           "measured at any one setting.")
    fig, axes = new_figure(width, width_in, panels=len(drawn))
    for ax, panel in zip(axes, drawn, strict=True):
        plot_series(ax, panel.rows, "seq", "frac_peak_bandwidth", scale=100.0)
        ax.axhline(100.0, color="0.2", linewidth=1.0)
        context_axis(ax)
        # Log: small models on big devices reach a few percent, which a linear 0-100% axis flattens.
        log_axis(ax, "y")
        ax.set_ylabel("bandwidth (% of memory ceiling)")
        device_title(ax, panel.device, width)
    legend(fig, drawn_rows(drawn))
    return Drawn(fig, "Achieved bandwidth (the cost model's minimum bytes over the median latency) as a share of "
                      "the device's measured copy bandwidth (100%: the horizontal line). "
                      f"{caption_for(drawn)}")
