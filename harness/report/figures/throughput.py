"""Figure 6: decode throughput (new tokens per second across the batch) against batch size."""

from __future__ import annotations

from harness.report.figures import Drawn, FigureInput, figure
from harness.report.plotting import (batch_axis, caption_for, device_title, drawn_rows, legend, log_axis, new_figure,
                                     panels, plot_series)


@figure(name="decode_throughput", order=6, title="Decode throughput against batch size",
        needs=("tokens_per_s", "batch"))
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    decode = data.ok[data.ok["phase"] == "decode"]
    drawn = panels(decode, x="batch", y=("tokens_per_s",))
    if not drawn:
        return Drawn(None, "Decode throughput against batch size: left out, fewer than two batch sizes measured "
                           "in decode at any one setting.")
    fig, axes = new_figure(width, width_in, panels=len(drawn))
    for ax, panel in zip(axes, drawn, strict=True):
        plot_series(ax, panel.rows, "batch", "tokens_per_s")
        batch_axis(ax)
        log_axis(ax, "y")
        ax.set_ylabel("decode throughput (tokens/s)")
        device_title(ax, panel.device, width)
    legend(fig, drawn_rows(drawn))
    return Drawn(fig, "Decode throughput of one layer: new tokens per second across the batch (batch x new "
                      f"tokens per step / median latency), log-log. {caption_for(drawn)}")
