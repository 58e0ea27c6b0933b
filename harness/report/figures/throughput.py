"""Figure 6: decode throughput (new tokens per second across the batch) against batch size."""

from __future__ import annotations

from attnbench.harness.report.figures import Drawn, FigureInput, figure
from attnbench.harness.report.figures.canvas import series_figure


@figure(name="decode_throughput", order=6, title="Decode throughput against batch size",
        needs=("tokens_per_s", "batch"))
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    return series_figure(
        data.ok[data.ok["phase"] == "decode"], x="batch", y="tokens_per_s", width=width, width_in=width_in,
        ylabel="decode throughput (tokens/s)",
        too_few="Decode throughput against batch size: left out, fewer than two batch sizes measured in decode at "
                "any one setting.",
        caption="Decode throughput of one layer: new tokens per second across the batch (batch x new tokens per "
                "step / median latency), log-log.")
