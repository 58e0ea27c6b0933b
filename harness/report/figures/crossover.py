"""Figure 9: where sparse and compressed attention start to pay: decode latency (measured) and minimum
bytes per step (cost model) against context, dense MLA beside DeepSeek-V3.2's DSA and V4's CSA/HCA.

Each variant is drawn with its fastest implementation at its longest measured context (the best it
can do there; the others are in the tables). The variants may come from different models (DeepSeek-V3.2's
MLA and DSA, DeepSeek-V4's CSA and HCA layers): a panel holds the device, dtype, batch and timing
fixed, and each variant's model is named in the legend. A sparse variant *pays* from the context where its
latency falls below dense MLA's: between two measured contexts the crossing is interpolated on the
log-log curves and marked with a vertical line in the variant's colour.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from attnbench.harness.report.data import DEVICE
from attnbench.harness.report.figures import Drawn, FigureInput, figure
from attnbench.harness.report.figures.axes import context_axis, device_title, log_axis, subtitle
from attnbench.harness.report.figures.canvas import Panel, drawn_rows, new_figure, plot_series
from attnbench.harness.report.figures.legend import legend
from attnbench.harness.report.figures.style import variant_color
from attnbench.harness.report.flagged import with_listing
from attnbench.harness.text import escape
from attnbench.harness.text.units import tokens
from attnbench.variants.registry import families


def crossover_variants(role: str) -> tuple[str, ...]:
    """The variants whose family takes ``role`` (dense or sparse) in this figure (``ReportHints.crossover``)."""
    return tuple(spec.name for family in families() if family.report.crossover == role for spec in family.variants)


HOLD = ("phase", "batch", "dtype", "timing", "decode_len", "kv_dtype")


def crossover_panels(rows: pd.DataFrame) -> list[Panel]:
    """Per device, the slice (``HOLD`` fixed) with dense MLA and the most sparse variants measured at two
    or more contexts each (ties: more contexts); variants may come from different models."""
    out = []
    dense_variant, sparse_variants = crossover_variants("dense")[0], crossover_variants("sparse")
    hold = [c for c in HOLD if c in rows.columns]
    for device, by_device in rows.dropna(subset=["latency_ms", "bytes_min", "seq"]).groupby(DEVICE, sort=True):
        best, best_rank = None, None
        for _, group in by_device.groupby(hold, dropna=False, sort=False):
            contexts = group.groupby("variant")["seq"].nunique()
            sparse = [v for v in sparse_variants if contexts.get(v, 0) >= 2]
            if contexts.get(dense_variant, 0) < 2 or not sparse:
                continue
            rank = (len(sparse), group["seq"].nunique())
            if best_rank is None or rank > best_rank:
                best, best_rank = group, rank
        if best is not None:
            first = best.iloc[0]
            setting = f"{first['phase']}, batch {int(first['batch'])}, {first['dtype']}, models " + \
                ", ".join(f"{v}: {m}" for v, m in best.groupby("variant")["model"].first().items())
            out.append(Panel(str(device), best, setting, 0))
    return out


def leanest(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant, the rows of its implementation fastest at the variant's longest context."""
    keep = []
    for _, group in rows.groupby("variant"):
        longest = group[group["seq"] == group["seq"].max()]
        best = longest.sort_values("latency_ms").iloc[0]
        keep.append(group[(group["impl"] == best["impl"]) & (group["compile"] == best["compile"])])
    return pd.concat(keep)


def crossing(dense: pd.DataFrame, sparse: pd.DataFrame) -> tuple[str, float | None]:
    """Where ``sparse`` starts to beat ``dense`` in latency over their common contexts: ("from", the
    interpolated context), ("below", smallest context) if it is faster throughout, ("never", None)."""
    both = dense.set_index("seq")["latency_ms"].to_frame("dense").join(
        sparse.set_index("seq")["latency_ms"].to_frame("sparse"), how="inner").sort_index()
    if both.empty:
        return "never", None
    ratio = np.log(both["sparse"].astype(float) / both["dense"].astype(float))
    contexts = np.log(both.index.to_numpy(dtype=float))
    if ratio.iloc[0] < 0:
        return "below", float(both.index[0])
    for i in range(1, len(ratio)):
        if ratio.iloc[i] < 0 <= ratio.iloc[i - 1]:
            # Straight lines between the measured points on log-log axes: where the log ratio is 0.
            t = ratio.iloc[i - 1] / (ratio.iloc[i - 1] - ratio.iloc[i])
            return "from", float(math.exp(contexts[i - 1] + t * (contexts[i] - contexts[i - 1])))
    return "never", None


@figure(name="sparse_crossover", order=9, title="Where sparse attention starts to pay",
        needs=("latency_ms", "bytes_min", "seq"),
        why_missing="measure the dense variant and a sparse one (their families' crossover roles) in decode "
                    "at two or more contexts")
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    dense_variant, sparse_variants = crossover_variants("dense")[0], crossover_variants("sparse")
    rows = data.ok[(data.ok["phase"] == "decode") & data.ok["variant"].isin((dense_variant, *sparse_variants))]
    drawn = crossover_panels(rows)
    if not drawn:
        return Drawn(None, "Where sparse attention starts to pay: left out, no device has dense MLA and a sparse "
                           "variant (dsa, csa, hca) measured in decode at two or more contexts of one setting.")
    drawn = [type(p)(p.device, leanest(p.rows), p.setting, p.others) for p in drawn]
    fig, axes = new_figure(width, width_in, panels=2 * len(drawn), ncols=2)
    marks: list[Line2D] = []
    notes: list[str] = []
    for i, panel in enumerate(drawn):
        ax_t, ax_b = axes[2 * i], axes[2 * i + 1]
        plot_series(ax_t, panel.rows, "seq", "latency_ms")
        plot_series(ax_b, panel.rows, "seq", "bytes_min", scale=1 / 2**20)
        dense = panel.rows[panel.rows["variant"] == dense_variant]
        for variant in sparse_variants:
            sparse = panel.rows[panel.rows["variant"] == variant]
            if sparse.empty:
                continue
            kind, at = crossing(dense, sparse)
            if kind == "never":
                notes.append(f"{variant} is not faster than {dense_variant} at any measured context ({panel.device})")
                continue
            words = f"{variant} pays from ~{tokens(round(at))}" if kind == "from" else \
                f"{variant} faster from {tokens(round(at))} (all measured)"
            notes.append(f"{words} ({panel.device})")
            for ax in (ax_t, ax_b):
                ax.axvline(at, color=variant_color(variant), linestyle=(0, (1, 1.5)), linewidth=1.0)
            if i == 0:
                marks.append(Line2D([], [], color=variant_color(variant), linestyle=(0, (1, 1.5)),
                                    label=escape.mathtext(words)))
        for ax, label in ((ax_t, "decode step (ms)"), (ax_b, "min. bytes/step (MiB)")):
            context_axis(ax, "context (tokens)")
            log_axis(ax, "y")
            ax.set_ylabel(label)
        device_title(ax_t, panel.device, "single")
    subtitle(fig, drawn_rows(drawn), device=drawn[0].device if len(drawn) == 1 else None, held=("seq",))
    legend(fig, drawn_rows(drawn), extra=marks)
    return Drawn(fig, with_listing("Decode step latency of one layer (measured, left) and its minimum bytes (cost model: weights, "
                      "the cache rows it reads, right) against context; each variant with its fastest implementation "
                      "at its longest context; dotted verticals: where a sparse variant's latency falls below dense "
                      f"MLA's (interpolated on the log-log curves). {'; '.join(notes)}. "
                      + "; ".join(f"{p.device}: {p.setting}" for p in drawn) + ".", drawn_rows(drawn)))
