"""Figure 7: energy per generated token against context length, from NVML's energy counter over a
separate window of at least one second (``harness.measure.telemetry``); CUDA devices only."""

from __future__ import annotations

from harness.report.figures import Drawn, FigureInput, figure
from harness.report.plotting import (caption_for, context_axis, device_title, drawn_rows, legend, log_axis, new_figure,
                                     panels, plot_series)


@figure(name="energy_per_token", order=7, title="Energy per token against context length",
        needs=("nvml_energy_per_token_j", "seq"),
        why_missing="NVML telemetry is recorded on NVIDIA GPUs only")
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    ok = data.ok.assign(nvml_energy_per_token_j=lambda f: f["nvml_energy_per_token_j"].astype(float))
    drawn = panels(ok, x="seq", y=("nvml_energy_per_token_j",))
    if not drawn:
        return Drawn(None, "Energy per token against context length: left out, fewer than two context lengths "
                           "with NVML energy readings at any one setting.")
    fig, axes = new_figure(width, width_in, panels=len(drawn))
    for ax, panel in zip(axes, drawn, strict=True):
        plot_series(ax, panel.rows, "seq", "nvml_energy_per_token_j", scale=1e3)
        context_axis(ax)
        log_axis(ax, "y")
        ax.set_ylabel("energy per token (mJ)")
        device_title(ax, panel.device, width)
    legend(fig, drawn_rows(drawn))
    return Drawn(fig, "Energy per new token of one layer's step (whole-GPU energy from NVML over a window of "
                      f"back-to-back steps, divided by the tokens produced). {caption_for(drawn)}")
