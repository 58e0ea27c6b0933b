"""Figure 5: achieved bandwidth as a fraction of the device's measured copy bandwidth, against
context length. Decode at long contexts is bound by reading the cache: this is how close it gets."""

from __future__ import annotations

from matplotlib.axes import Axes

from attnbench.harness.report.figures import Drawn, FigureInput, figure
from attnbench.harness.report.figures.canvas import series_figure


def _ceiling(ax: Axes) -> None:
    ax.axhline(100.0, color="0.2", linewidth=1.0)


@figure(name="bandwidth_fraction", order=5, title="Bandwidth fraction against context length",
        needs=("frac_peak_bandwidth", "seq"),
        why_missing="the device's ceilings are calibrated only with measure.calibrate=true")
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    # Log y (series_figure): small models on big devices reach a few percent, which a linear 0-100%
    # axis flattens.
    return series_figure(
        data.ok, x="seq", y="frac_peak_bandwidth", width=width, width_in=width_in, scale=100.0, decorate=_ceiling,
        ylabel="bandwidth (% of memory ceiling)",
        too_few="Bandwidth fraction against context length: left out, fewer than two context lengths measured at "
                "any one setting.",
        caption="Achieved bandwidth (the cost model's minimum bytes over the median latency) as a share of the "
                "device's measured memory ceiling, the faster of its read and copy streams (100%: the horizontal line).")
