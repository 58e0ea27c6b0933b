"""Figure 2: KV-cache bytes per token and in total against context length, whole model: the cost
model's line per variant beside the cache tensors the harness measured, per implementation."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from attnbench.harness.report.analysis.costmodel import model_cost, shape_of
from attnbench.harness.report.figures import Drawn, FigureInput, figure
from attnbench.harness.report.figures.axes import bytes_axis, context_axis, device_title, subtitle
from attnbench.harness.report.figures.canvas import caption_for, drawn_rows, new_figure, panels
from attnbench.harness.report.figures.legend import header, place_legend
from attnbench.harness.report.figures.style import (impl_sort_key, impl_style, series_style, variant_color,
                                                    variant_sort_key)


@figure(name="kv_cache", order=2, title="KV-cache bytes against context length",
        needs=("kv_cache_bytes", "seq", "num_layers"))
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    drawn = panels(data.ok, x="seq", y=("kv_cache_bytes",))
    if not drawn:
        return Drawn(None, "KV-cache bytes against context length: left out, fewer than two context lengths "
                           "measured at any one setting.")
    fig, axes = new_figure(width, width_in, panels=2 * len(drawn), ncols=2)
    odd: dict[str, str] = {}  # implementations whose cache differs from their variant's usual one -> marker
    scheduled: set[str] = set()  # variants whose model mixes layer kinds: no one-layer markers
    for (per_token, total), panel in zip(zip(axes[::2], axes[1::2], strict=True), drawn, strict=True):
        rows = panel.rows
        first = rows.iloc[0]
        layers, batch = int(first["num_layers"]), int(first["batch"])
        # Tokens the cache holds: a decode step appends decode_len after the seq already cached.
        held = rows["seq"] + rows["decode_len"].where(rows["phase"] == "decode", 0)
        # Whole tokens: the cost model counts a cache of an integer context, and bytes / tokens is then
        # exact (float contexts truncated made a flat 1024 B per token wiggle down to 1009.7 B).
        context = np.unique(np.round(np.geomspace(rows["seq"].min(), held.max(), 32)).astype(np.int64))
        for variant in sorted(rows["variant"].unique(), key=variant_sort_key):
            cost = model_cost(variant, shape_of(first), str(first["dtype"]))
            line = {"color": variant_color(variant), "linewidth": 0.9, "alpha": 0.8}
            # By the schedule, each layer's own layout: a ring's rows, compressed entries, fixed state.
            model_C = np.array([cost.kv_bytes_model_at(int(c)) for c in context], dtype=np.int64)
            per_token.plot(context, model_C / context, **line)
            total.plot(context, batch * model_C, **line)
        # Implementations that allocate the same cache draw one series (their markers would sit on top of
        # each other): the common layout as circles, a different one (MLA's 'expanded' per-head K and V)
        # in its implementation's marker, named in the legend.
        for variant, impls, group in _layouts(rows):
            if model_cost(variant, shape_of(first), str(first["dtype"])).layouts is not None:
                scheduled.add(variant)  # one measured layer times num_layers is not this model's cache
                continue
            marker = "o" if impls is None else impl_style(impls[0])[0]
            style = series_style(variant, "eager").line_kwargs() | {"linestyle": "", "marker": marker}
            tokens_held = held.loc[group.index]
            measured = group["kv_cache_bytes"].astype(float) * layers
            per_token.plot(tokens_held, measured / (batch * tokens_held), **style)
            total.plot(tokens_held, measured, **style)
            if impls is not None:
                odd[", ".join(impls)] = marker
        # Short labels: two panels share a 3.5 in column.
        bytes_axis(per_token, f"KV per token ({layers} layers)")
        bytes_axis(total, f"KV total (batch {batch})")
        for ax in (per_token, total):
            context_axis(ax, "context (tokens)")
        device_title(per_token, panel.device, "single")
    devices = sorted({p.device for p in drawn})
    subtitle(fig, drawn_rows(drawn), device=devices[0] if len(devices) == 1 else None, held=("seq",))
    handles = [header("variant"), *[Line2D([], [], color=variant_color(v), linewidth=2.5, label=v)
                                    for v in sorted(drawn_rows(drawn)["variant"].unique(), key=variant_sort_key)],
               header("lines, markers"), Line2D([], [], color="0.35", linewidth=0.9, label="cost model"),
               Line2D([], [], color="0.35", marker="o", linestyle="", label="measured, every impl."),
               *[Line2D([], [], color="0.35", marker=m, linestyle="", label=f"measured, {i}") for i, m in odd.items()]]
    place_legend(fig, handles)
    mixed = (f" {', '.join(sorted(scheduled))}: the model's layer schedule mixes layer kinds (window, full, "
             "compressed), so its line sums each layer's own cache and no one-layer marker is scaled to it."
             if scheduled else "")
    return Drawn(fig, "KV-cache bytes of the whole model per token (left) and in total (right). Lines: the cost "
                      "model, each variant's own cache (MLA: the latent d_c + d_r) over the model's layers, by its "
                      "layer schedule (a window layer holds its ring, a compressed layer its entries and fixed "
                      "state); markers: the cache tensors the harness allocated for one layer, times num_layers, one "
                      "series per cache layout (implementations allocating the same cache share it) (MLA's "
                      "'expanded' caches per-head K and V), at the tokens the cache holds after the step."
                      f"{mixed} {caption_for(drawn)}")


def _layouts(rows: pd.DataFrame) -> list[tuple[str, tuple[str, ...] | None, pd.DataFrame]]:
    """Per variant, its implementations grouped by the cache they allocated: (variant, None, rows) for
    the layout most implementations share, (variant, those implementations, rows) for any other."""
    out = []
    for variant in sorted(rows["variant"].unique(), key=variant_sort_key):
        mine = rows[rows["variant"] == variant]
        by_impl = {impl: tuple(g.sort_values("seq")["kv_cache_bytes"].astype(float))
                   for impl, g in mine.groupby("impl", sort=False)}
        layouts: dict[tuple[float, ...], list[str]] = {}
        for impl in sorted(by_impl, key=impl_sort_key):
            layouts.setdefault(by_impl[impl], []).append(impl)
        common = max(layouts.values(), key=len)
        for impls in layouts.values():
            group = mine[mine["impl"].isin(impls)].drop_duplicates("seq")
            out.append((variant, None if impls is common else tuple(impls), group))
    return out
