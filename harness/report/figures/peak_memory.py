"""Figure 3: peak memory against context length, with the device's memory (or the given budget) as
the ceiling and the longest context each variant fits at the drawn batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from harness.report.capacity import longest_context
from harness.report.costmodel import model_cost, shape_of
from harness.report.figures import Drawn, FigureInput, figure
from harness.report.plotting import (bytes_axis, caption_for, context_axis, device_title, drawn_rows, legend,
                                     new_figure, panels, plot_series)
from harness.report.style import variant_color, variant_sort_key
from harness.report.units import human_bytes, tokens


@figure(name="peak_memory", order=3, title="Peak memory against context length", needs=("peak_mem_bytes", "seq"))
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    drawn = [p for p in panels(data.ok, x="seq", y=("peak_mem_bytes",)) if _budget(data, p.rows) is not None]
    if not drawn:
        return Drawn(None, "Peak memory against context length: left out, fewer than two context lengths measured "
                           "at any one setting, or no device memory recorded (give --budget).")
    fig, axes = new_figure(width, width_in, panels=len(drawn))
    fits = []
    for ax, panel in zip(axes, drawn, strict=True):
        rows, first = panel.rows, panel.rows.iloc[0]
        budget, batch = _budget(data, rows), int(first["batch"])
        plot_series(ax, rows, "seq", "peak_mem_bytes")
        longest = {}
        for variant in sorted(rows["variant"].unique(), key=variant_sort_key):
            cost = model_cost(variant, shape_of(first), str(first["dtype"]))
            longest[variant] = longest_context(cost, batch=batch, budget_bytes=budget, reserve=data.reserve)
            end = max(longest[variant] * 2, rows["seq"].max() * 2)
            context = np.geomspace(rows["seq"].min(), end, 64)
            ax.plot(context, cost.weight_bytes_model + batch * context * cost.kv_bytes_per_token_model,
                    color=variant_color(variant), linewidth=0.8, alpha=0.7)
            if longest[variant] > 0:
                ax.axvline(longest[variant], color=variant_color(variant), linewidth=0.8, linestyle=":")
        ax.axhline(budget, color="0.2", linewidth=1.0)
        ax.axhline((1 - data.reserve) * budget, color="0.2", linewidth=0.6, linestyle="--")
        context_axis(ax)
        bytes_axis(ax, "memory (measured peak; model)")
        device_title(ax, panel.device, width)
        fits.append(f"{panel.device} at batch {batch}, budget {human_bytes(budget)}: "
                    + ", ".join(f"{v} {tokens(n)}" for v, n in longest.items()))
    extra = [Line2D([], [], color="0.2", linewidth=1.0, label="budget"),
             Line2D([], [], color="0.4", linewidth=0.8, alpha=0.7, label="model, all layers")]
    legend(fig, drawn_rows(drawn), extra=extra)
    return Drawn(fig, "Markers: measured peak memory of one layer's step. Thin lines: the cost model's attention "
                      f"weights + KV cache of all layers; solid horizontal: the budget; dashed: the budget less the "
                      f"{data.reserve:.0%} reserve; dotted verticals: the longest context that fits. Longest "
                      f"context: {'; '.join(fits)}. {caption_for(drawn)}")


def _budget(data: FigureInput, rows: pd.DataFrame) -> int | None:
    if data.budget_bytes is not None:
        return data.budget_bytes
    values = pd.to_numeric(rows.get("device_mem_total_bytes"), errors="coerce").dropna()
    return int(values.max()) if not values.empty else None
