"""Figure 7: energy per generated token against context length, from NVML's energy counter over a
separate window of at least one second (``attnbench.harness.measure.telemetry``); CUDA devices only."""

from __future__ import annotations

from attnbench.harness.report.figures import Drawn, FigureInput, figure
from attnbench.harness.report.figures.canvas import series_figure


@figure(name="energy_per_token", order=7, title="Energy per token against context length",
        needs=("nvml_energy_per_token_j", "seq"),
        why_missing="NVML telemetry is recorded on NVIDIA GPUs only")
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    ok = data.ok.assign(nvml_energy_per_token_j=lambda f: f["nvml_energy_per_token_j"].astype(float))
    return series_figure(
        ok, x="seq", y="nvml_energy_per_token_j", width=width, width_in=width_in, scale=1e3,
        ylabel="energy per token (mJ)",
        too_few="Energy per token against context length: left out, fewer than two context lengths with NVML "
                "energy readings at any one setting.",
        caption="Energy per new token of one layer's step (whole-GPU energy from NVML over a window of "
                "back-to-back steps, divided by the tokens produced).")
