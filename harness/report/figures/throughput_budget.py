"""Figure 8: decode throughput of the whole model against the memory budget (DeepSeek-V2's "maximum
generation throughput", section 3.2.3), each variant at the largest batch the budget holds.

A line per variant, by its implementation fastest at the budget (with no budget in reach: at its
largest measured batch): for every batch between that implementation's smallest and largest
measured one, the point is (the budget that batch needs, its tokens/s), computed as
``attnbench.harness.report.analysis.budget`` computes the table, the latency interpolated linearly in batch between the
measured batches, which carry the markers. At the report's budget (``--budget``, else the device's
memory) a star per variant marks its throughput there, hollow when its latency is interpolated, and
the legend gives the ratios between variants.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from attnbench.harness.report.analysis.budget import (Ladder, VariantAtSetting, at_budget, budget_of, ratio_words,
                                                      variants_of)
from attnbench.harness.report.analysis.budget import ratios as budget_ratios
from attnbench.harness.report.analysis.capacity import HOW_TO_BUDGET, NO_BUDGET
from attnbench.harness.report.figures import Drawn, FigureInput, figure
from attnbench.harness.report.figures.axes import bytes_axis, device_title, log_axis, subtitle
from attnbench.harness.report.figures.canvas import caption_for, new_figure, panels
from attnbench.harness.report.figures.legend import header, place_legend
from attnbench.harness.report.figures.style import impl_sort_key, impl_style, variant_color
from attnbench.harness.text.units import human_bytes, significant, tokens

POINTS = 64  # batches evaluated along a line (every batch when there are fewer)


@figure(name="throughput_budget", order=8, title="Decode throughput at a memory budget",
        needs=("latency_ms", "batch", "num_layers"))
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    decode = data.ok[data.ok["phase"] == "decode"]
    drawn = [(p, *variants_of(p.rows)) for p in panels(decode, x="batch", y=("latency_ms",))]
    drawn = [(p, found, notes) for p, found, notes in drawn if found]
    if not drawn:
        return Drawn(None, "Decode throughput at a memory budget: left out, fewer than two batch sizes measured in "
                           "decode at any one setting.")
    fig, axes = new_figure(width, width_in, panels=len(drawn))
    words, series = [], []
    shown = {"budget": False, "measured": False, "interpolated": False}  # legend entries for what is drawn
    ratios: list[str] = []  # at the budget, in the legend (the panel has no free corner to count on)
    for ax, (panel, found, notes) in zip(axes, drawn, strict=True):
        budget = budget_of(panel.rows, data.budget_bytes)
        low = min(v.budget_for(v.measured_range[0], data.reserve) for v in found)
        high = max(v.budget_for(v.measured_range[1], data.reserve) for v in found)
        reach = budget is not None and low / 2 <= budget <= high * 2
        at = pd.DataFrame([at_budget(v, budget_bytes=budget, reserve=data.reserve) for v in found]) if budget else None
        for variant, row in zip(found, at.to_dict("records") if at is not None else [None] * len(found), strict=True):
            ladder = _line(ax, variant, row if reach and row and row["impl"] is not None else None, data.reserve)
            series.append((variant.variant, ladder.impl, ladder.compile))
        if reach:
            ax.axvline(budget, color="0.2", linewidth=0.8)
            shown["budget"] = True
            points = at.dropna(subset=["tokens_per_s"])  # type: ignore[union-attr]
            colors = [variant_color(v) for v in points["variant"]]
            # One scatter for the stars: they mark points of the variants' lines, not series of their own.
            ax.scatter([budget] * len(points), points["tokens_per_s"].astype(float), marker="*", s=70, zorder=5,
                       edgecolors=colors, linewidths=0.8,
                       facecolors=[c if f == "measured" else "white" for c, f in zip(colors, points["latency_from"],
                                                                                    strict=True)])
            for kind in points["latency_from"]:
                shown[str(kind)] = True
            # The legend keeps the headline, the last variant (MLA) against each other; the caption has all.
            last = points["variant"].iloc[-1] if len(points) else None
            ratios += [f"{a}/{b} {r:.2f}×" for a, b, r in budget_ratios(points) if a == last]
        words.append(_words(panel.device, at, budget, found, low, high))
        words += notes
        bytes_axis(ax, "memory budget", which="x")
        log_axis(ax, "y")
        ax.set_ylabel("decode tokens/s (whole model)")
        device_title(ax, panel.device, width)
    rows = pd.DataFrame(series, columns=["variant", "impl", "compile"]).drop_duplicates()
    extra = [Line2D([], [], color="0.4", linewidth=0.9, label="interpolated")]
    if shown["budget"]:
        extra.append(Line2D([], [], color="0.2", linewidth=0.8, label="budget"))
    extra += [Line2D([], [], color="0.4", marker="*", markersize=8, linestyle="", label=f"at budget, {kind}",
                     markerfacecolor="0.4" if kind == "measured" else "white")
              for kind in ("measured", "interpolated") if shown[kind]]
    if ratios and len(drawn) == 1:  # with several devices the caption gives each one's
        extra += [header("tokens/s at the budget"), *(Line2D([], [], linestyle="", label=r) for r in ratios)]
    devices = sorted({p.device for p, _, _ in drawn})
    subtitle(fig, pd.concat([p.rows for p, _, _ in drawn]), device=devices[0] if len(devices) == 1 else None,
             held=("batch",), varied="set by the budget")
    # A line per variant, in the variant's colour; its implementation is told by its marker alone.
    handles = [header("variant"), *(Line2D([], [], color=variant_color(v), linewidth=2.5, label=v)
                                    for v in dict.fromkeys(rows["variant"]))]
    handles += [header("implementation"), *(Line2D([], [], color="0.35", marker=impl_style(i)[0], linestyle="",
                                                   label=i) for i in sorted(set(rows["impl"]), key=impl_sort_key))]
    if (rows["compile"] != "none").any():
        handles.append(Line2D([], [], color="0.35", marker="o", markerfacecolor="white", linestyle="",
                              label="compiled"))
    place_legend(fig, [*handles, header("lines"), *extra])
    layers = ", ".join(sorted({str(v.cost.num_layers) for _, found, _ in drawn for v in found}))
    return Drawn(fig, "Decode throughput of the whole model against the memory budget: at each budget, each variant "
                      "at the largest batch whose attention weights and KV cache of all "
                      f"{layers} layers fit it less the {data.reserve:.0%} reserve, by its implementation fastest at "
                      "the budget (markers: measured batches; lines: one layer's latency interpolated linearly in "
                      "batch between them, never extrapolated); tokens/s = batch x new tokens per step / (one layer's "
                      f"step latency x {layers} layers), the MLP and embeddings neither timed nor counted. Stars: "
                      "each variant at the budget (vertical line), hollow where its latency is interpolated. "
                      f"{' '.join(words)} {caption_for([p for p, _, _ in drawn])}")


def _line(ax, variant: VariantAtSetting, at: dict[str, object] | None, reserve: float) -> Ladder:  # noqa: ANN001
    """The variant's line, by the implementation fastest at the budget (or, with no budget in reach,
    at its own largest measured batch), with a marker on each measured batch; returns that ladder."""
    ladder = next((lad for lad in variant.ladders if at is not None and at["impl"] == lad.impl
                   and at["compile"] == lad.compile), None) or max(
        variant.ladders, key=lambda lad: variant.tokens_per_s(int(lad.batches[-1]), float(lad.latency_ms[-1])))
    dense = np.geomspace(ladder.batches[0], ladder.batches[-1], POINTS).round().astype(int)
    batches = np.union1d(dense, ladder.batches)
    latency = [ladder.latency_at(int(b))[0] for b in batches]  # type: ignore[index]
    color = variant_color(variant.variant)
    marker, _ = impl_style(ladder.impl)
    ax.plot([variant.budget_for(int(b), reserve) for b in batches],
            [variant.tokens_per_s(int(b), t) for b, t in zip(batches, latency, strict=True)],
            color=color, linewidth=0.9, marker=marker, markevery=list(np.flatnonzero(np.isin(batches, ladder.batches))),
            markerfacecolor=color if ladder.compile == "none" else "white", markeredgecolor=color)
    return ladder


def _words(device: str, at: pd.DataFrame | None, budget: int | None, found: list[VariantAtSetting],
           low: float, high: float) -> str:
    if budget is None:
        return f"{device}: no budget ({NO_BUDGET}; {HOW_TO_BUDGET})."
    context = tokens(found[0].tokens - found[0].new_tokens)
    head = f"{device}, context {context}, budget {human_bytes(budget)}"
    if not low / 2 <= budget <= high * 2:
        return (f"{head}: outside the measured batches' budgets ({human_bytes(low)} to {human_bytes(high)}), "
                "not drawn; "
                "the throughput table says which batch to add.")
    parts = []
    for row in at.itertuples():  # type: ignore[union-attr]
        if pd.isna(row.tokens_per_s):
            parts.append(f"{row.variant} batch {row.batch}: {row.reason}")
        else:
            parts.append(f"{row.variant} batch {row.batch}, {row.impl}, {significant(row.tokens_per_s)} tokens/s "
                         f"({row.latency_from})")
    ratio = ratio_words(at)  # type: ignore[arg-type]
    return f"{head}: {'; '.join(parts)}" + (f"; {ratio}." if ratio else ".")
