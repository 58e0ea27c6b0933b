"""Figure 3: peak memory against context length, with the device's memory (or the given budget) as
the ceiling and the longest context each variant fits at the drawn batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from attnbench.harness.report.analysis.capacity import longest_context
from attnbench.harness.report.analysis.costmodel import model_cost, shape_of
from attnbench.harness.report.figures import Drawn, FigureInput, figure
from attnbench.harness.report.figures.axes import bytes_axis, context_axis, device_title, facet_title, subtitle
from attnbench.harness.report.figures.canvas import caption_for, drawn_rows, facet, new_figure, panels, plot_series
from attnbench.harness.report.figures.legend import legend
from attnbench.harness.report.figures.style import variant_color, variant_sort_key
from attnbench.harness.report.flagged import with_listing
from attnbench.harness.text.units import human_bytes, tokens


@figure(name="peak_memory", order=3, title="Peak memory against context length", needs=("peak_mem_bytes", "seq"))
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    drawn = [p for p in panels(data.ok, x="seq", y=("peak_mem_bytes",)) if _budget(data, p.rows) is not None]
    if not drawn:
        return Drawn(None, "Peak memory against context length: left out, fewer than two context lengths measured "
                           "at any one setting, or no device memory recorded (give --budget).")
    facets = facet(drawn)
    faceted = any(variant is not None for _, variant, _ in facets)
    fig, axes = new_figure(width, width_in, panels=len(facets), ncols=2 if faceted and len(facets) > 1 else None)
    if faceted:
        for ax in axes[1:]:
            ax.sharey(axes[0])
    longest: dict[str, dict[str, int]] = {}  # device -> variant -> longest context
    shown = {"fits": False, "budget": False}  # legend entries only for what some panel draws
    for ax, (panel, only, rows) in zip(axes, facets, strict=True):
        first = rows.iloc[0]
        budget, batch = _budget(data, panel.rows), int(first["batch"])
        plot_series(ax, rows, "seq", "peak_mem_bytes")
        fits = longest.setdefault(panel.device, {})
        measured_max = float(rows["seq"].max())
        # The x range shows the measured contexts and a little beyond (x16); the model past the last
        # measured context is an extrapolation, drawn dashed over a shaded band.
        right = measured_max * 16
        for variant in sorted(rows["variant"].unique(), key=variant_sort_key):
            cost = model_cost(variant, shape_of(first), str(first["dtype"]))
            fits[variant] = longest_context(cost, batch=batch, budget_bytes=budget, reserve=data.reserve)
            line = {"color": variant_color(variant), "linewidth": 0.8, "alpha": 0.7}
            for lo, hi, dash in ((rows["seq"].min(), measured_max, "-"), (measured_max, right, (0, (2, 2)))):
                context = np.geomspace(lo, hi, 32)
                model_C = [cost.model_bytes(batch=batch, tokens=int(c)) for c in context]
                ax.plot(context, model_C, linestyle=dash, **line)
            if 0 < fits[variant] <= right:
                ax.axvline(fits[variant], color=variant_color(variant), linewidth=0.8, linestyle=":")
                shown["fits"] = True
        ax.axvspan(measured_max, right, color="0.9", zorder=0, linewidth=0)
        ax.set_xlim(rows["seq"].min() / 1.3, right)
        if budget <= ax.get_ylim()[1] * 4:  # the budget line only where it is in reach of the data
            ax.axhline(budget, color="0.2", linewidth=1.0)
            ax.axhline((1 - data.reserve) * budget, color="0.2", linewidth=0.6, linestyle="--")
            shown["budget"] = True
    for ax, (panel, only, _) in zip(axes, facets, strict=True):
        context_axis(ax, "context (tokens)" if faceted and width == "single" else "context length (tokens)")
        bytes_axis(ax, "bytes" if faceted else "bytes (markers: one layer measured;\nlines: all layers, model)")
        if only is not None:
            facet_title(ax, only)
        else:
            device_title(ax, panel.device, width)
    words = [f"{p.device} at batch {int(p.rows['batch'].iloc[0])}, budget {human_bytes(_budget(data, p.rows))}: "
             + ", ".join(f"{v} {tokens(n)}" for v, n in longest[p.device].items()) for p in drawn]
    extra = [Line2D([], [], color="0.35", marker="o", linestyle="", label="measured peak, one layer"),
             Line2D([], [], color="0.4", linewidth=0.8, label="model, all layers"),
             Line2D([], [], color="0.4", linewidth=0.8, linestyle=(0, (2, 2)), label="model, extrapolated")]
    if shown["fits"]:
        extra.append(Line2D([], [], color="0.4", linewidth=0.8, linestyle=":", label="longest context that fits"))
    if shown["budget"]:
        extra += [Line2D([], [], color="0.2", linewidth=1.0, label="budget"),
                  Line2D([], [], color="0.2", linewidth=0.6, linestyle="--",
                         label=f"budget less {data.reserve:.0%} reserve")]
    devices = sorted({p.device for p in drawn})
    subtitle(fig, drawn_rows(drawn), device=devices[0] if len(devices) == 1 else None, held=("seq",))
    legend(fig, drawn_rows(drawn), extra=extra, colour_key=not faceted)
    return Drawn(fig, with_listing("Markers: measured peak memory of one layer's step. Thin lines: the cost model's attention "
                      f"weights + KV cache of all layers; solid horizontal: the budget; dashed: the budget less the "
                      f"{data.reserve:.0%} reserve (drawn when within reach of the data); dotted verticals: the longest context "
                      "that fits, when within the x range (shaded: beyond the last measured context, the model "
                      "extrapolated). Longest "
                      f"context: {'; '.join(words)}. {caption_for(drawn)}", drawn_rows(drawn)))


def _budget(data: FigureInput, rows: pd.DataFrame) -> int | None:
    if data.budget_bytes is not None:
        return data.budget_bytes
    values = pd.to_numeric(rows.get("device_mem_total_bytes"), errors="coerce").dropna()
    return int(values.max()) if not values.empty else None
