"""Figure 2: KV-cache bytes per token and in total against context length, whole model: the cost
model's line per variant beside the cache tensors the harness measured, per implementation."""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from harness.report.costmodel import model_cost, shape_of
from harness.report.figures import Drawn, FigureInput, figure
from harness.report.plotting import (bytes_axis, caption_for, context_axis, device_title, drawn_rows, legend,
                                     new_figure, panels, series, subtitle)
from harness.report.style import series_style, variant_color, variant_sort_key


@figure(name="kv_cache", order=2, title="KV-cache bytes against context length",
        needs=("kv_cache_bytes", "seq", "num_layers"))
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    drawn = panels(data.ok, x="seq", y=("kv_cache_bytes",))
    if not drawn:
        return Drawn(None, "KV-cache bytes against context length: left out, fewer than two context lengths "
                           "measured at any one setting.")
    fig, axes = new_figure(width, width_in, panels=2 * len(drawn), ncols=2)
    for (per_token, total), panel in zip(zip(axes[::2], axes[1::2], strict=True), drawn, strict=True):
        rows = panel.rows
        first = rows.iloc[0]
        layers, batch = int(first["num_layers"]), int(first["batch"])
        # Tokens the cache holds: a decode step appends decode_len after the seq already cached.
        held = rows["seq"] + rows["decode_len"].where(rows["phase"] == "decode", 0)
        context = np.geomspace(rows["seq"].min(), held.max(), 32)
        for variant in sorted(rows["variant"].unique(), key=variant_sort_key):
            cost = model_cost(variant, shape_of(first), str(first["dtype"]))
            line = {"color": variant_color(variant), "linewidth": 0.9, "alpha": 0.8}
            per_token.plot(context, np.full_like(context, cost.kv_bytes_per_token_model), **line)
            total.plot(context, batch * context * cost.kv_bytes_per_token_model, **line)
        for (variant, impl, compile_mode), group in series(rows):
            style = series_style(variant, impl, compile_mode).line_kwargs() | {"linestyle": ""}
            tokens_held = held.loc[group.index]
            measured = group["kv_cache_bytes"].astype(float) * layers
            per_token.plot(tokens_held, measured / (batch * tokens_held), **style)
            total.plot(tokens_held, measured, **style)
        # Short labels: two panels share a 3.5 in column.
        bytes_axis(per_token, f"KV per token ({layers} layers)")
        bytes_axis(total, f"KV total (batch {batch})")
        for ax in (per_token, total):
            context_axis(ax, "context (tokens)")
        device_title(per_token, panel.device, "single")
    devices = sorted({p.device for p in drawn})
    subtitle(fig, drawn_rows(drawn), device=devices[0] if len(devices) == 1 else None, held=("seq",))
    extra = [Line2D([], [], color="0.35", linewidth=0.9, label="cost model"),
             Line2D([], [], color="0.35", marker="o", linestyle="", label="measured")]
    legend(fig, drawn_rows(drawn), extra=extra)
    return Drawn(fig, "KV-cache bytes of the whole model (one layer's times num_layers) per token (left) and in "
                      "total (right). Lines: the cost model, each variant's own cache (MLA: the latent "
                      "d_c + d_r); markers: the cache tensors the harness allocated, per implementation (MLA's "
                      "'expanded' caches per-head K and V), at the tokens the cache holds after the step. "
                      f"{caption_for(drawn)}")
