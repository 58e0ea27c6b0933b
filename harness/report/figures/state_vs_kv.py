"""Figure 10: state against KV (issue 21): what a sequence costs a hybrid and the models it is chosen against.

Three panels. Left: one sequence's cache over the whole model in bf16 against context for the seven
models of ``attnbench.harness.report.analysis.state_kv.models()`` (cost model: each layer's own layout at the context;
solid up to 128k, the contexts a CPU measures, dashed beyond, to 1M). Middle: one decode step of one layer of
each kind, measured (the rows of the models and variants the experiment names). Right: where one linear
layer's fixed state (float32 ``N·K·V``) equals one full layer's growing KV, for each hybrid (a dotted
vertical at the crossing: 1,024 tokens for Qwen3-Next, ~1,820 for Kimi Linear, in bf16).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D

from attnbench.harness.report import flagged
from attnbench.harness.text import escape
from attnbench.harness.report.figures import Drawn, FigureInput, figure
from attnbench.harness.report.figures.axes import bytes_axis, context_axis, log_axis, subtitle
from attnbench.harness.report.figures.canvas import new_figure
from attnbench.harness.report.figures.legend import header, place_legend
from attnbench.harness.report.analysis.state_kv import MODEL_CONTEXTS, available, crossover_tokens, layer_bytes, model_bytes, models
from attnbench.harness.report.figures.style import variant_color
from attnbench.harness.text.units import tokens
from attnbench.variants.registry import families

MEASURED_MAX = 131072  # the longest context the experiment measures on a CPU; the cost model goes on
# One colour per model of ``models()`` (matplotlib's tab10): variants' own colours repeat among seven models.
MODEL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def linear_variants() -> frozenset[str]:
    """The variants of the families the report groups as linear: a fixed per-sequence state, no growing KV."""
    return frozenset(name for family in families() if family.report.group == "linear" for name in family.variant_names)


def kind_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Decode rows of a layer kind: a (model, variant) pair of ``models()``, and every variant of a model
    that has a linear layer's rows (a hybrid's full layers beside its linear ones, at any preset)."""
    decode = rows[rows["phase"] == "decode"].dropna(subset=["latency_ms", "seq"])
    pairs = {(m.preset, v) for m in models() for v, _ in m.kinds.values()}
    hybrids = set(decode.loc[decode["variant"].isin(linear_variants()), "model"])
    keep = [(m, v) in pairs or m in hybrids for m, v in zip(decode["model"], decode["variant"], strict=True)]
    return decode[keep]


def _memory_panel(ax) -> list[str]:
    notes = []
    for model, color in zip(models(), MODEL_COLORS, strict=True):
        reason = available(model)
        if reason:
            notes.append(reason)
            continue
        x = np.array(MODEL_CONTEXTS)
        y = np.array([model_bytes(model, c) for c in MODEL_CONTEXTS], dtype=float)
        inside = x <= MEASURED_MAX
        ax.plot(x[inside], y[inside], color=color, label=escape.mathtext(model.label))
        beyond = x >= MEASURED_MAX
        ax.plot(x[beyond], y[beyond], color=color, linestyle="--")
    ax.axvspan(MEASURED_MAX, MODEL_CONTEXTS[-1], color="0.92", zorder=0, linewidth=0)
    context_axis(ax, "context (tokens)")
    bytes_axis(ax, "model cache / sequence")
    return notes


def _latency_panel(ax, rows: pd.DataFrame, title: str) -> pd.DataFrame:
    """One series per (model, variant): its fastest implementation at each context; returns the rows drawn."""
    drawn = []
    for (model, variant), group in rows.groupby(["model", "variant"], sort=True):
        fastest = group.loc[group.groupby("seq")["latency_ms"].idxmin()].sort_values("seq")
        # A flagged row (noisy, busy, fallback) keeps its place on the line but as a hollow grey marker,
        # as in every figure, so a doubtful point never reads like a clean one.
        drawn.append(fastest)
        doubt = flagged.mask(fastest).to_numpy()
        ax.plot(fastest["seq"], fastest["latency_ms"].astype(float), color=variant_color(str(variant)), marker="o",
                markersize=3, linestyle="-" if variant in linear_variants() else ":",
                markevery=[i for i, f in enumerate(doubt) if not f], label=escape.mathtext(f"{variant} ({model})"))
        if doubt.any():
            ax.plot(fastest["seq"][doubt], fastest["latency_ms"][doubt].astype(float), linestyle="", marker="o",
                    markersize=3, markerfacecolor="none", markeredgecolor=flagged.FLAGGED_EDGE,
                    gid=flagged.FLAGGED_GID)
    context_axis(ax, "context (tokens)")
    log_axis(ax, "y")
    ax.set_ylabel("decode step (ms)")
    ax.set_title(title, loc="left", fontsize=7)
    return pd.concat(drawn)


def _crossover_panel(ax) -> list[str]:
    notes = []
    x = np.geomspace(256, 16384, 25)
    for model, color in zip(models(), MODEL_COLORS, strict=True):
        if "L" not in model.kinds or available(model):
            continue
        state = layer_bytes(model, "L", 0, torch.bfloat16)
        full = np.array([layer_bytes(model, "F", int(c), torch.bfloat16) for c in x], dtype=float)
        at = crossover_tokens(model)
        ax.plot(x, np.full_like(x, state), color=color, linestyle="-")
        ax.plot(x, full, color=color, linestyle="--")
        ax.axvline(at, color=color, linestyle=(0, (1, 1.5)), linewidth=1.0)
        notes.append(f"{model.label}: one linear layer's state equals one full layer's KV at {at:,.0f} tokens")
    context_axis(ax, "context (tokens)")
    bytes_axis(ax, "one layer's cache / seq.")
    return notes


@figure(name="state_vs_kv", order=10, title="State against KV: hybrids beside MLA, DSA, CSA/HCA, SWA and GQA",
        needs=("latency_ms", "seq"),
        why_missing="measure a linear variant in decode: attnbench -m experiment=state_vs_kv")
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    rows = kind_rows(data.ok)
    linear = linear_variants()
    hybrid = rows["model"].isin(set(rows.loc[rows["variant"].isin(linear), "model"]))
    if not hybrid.any():
        return Drawn(None, "State against KV: left out, no decode rows of a linear layer (gdn at qwen3_next_80b_a3b "
                           "or kda at kimi_linear_48b_a3b); run attnbench -m experiment=state_vs_kv.")
    others = rows[~hybrid]
    fig, axes = new_figure(width, width_in, panels=3 + (not others.empty), ncols=1 if width == "single" else 2)
    memory_lines = _memory_panel(axes[0])
    axes[0].set_title("whole model, bf16, cost model", loc="left", fontsize=7)
    notes = memory_lines + _crossover_panel(axes[1])
    axes[1].set_title("linear layer vs full layer, bf16", loc="left", fontsize=7)
    measured = [_latency_panel(axes[2], rows[hybrid], "hybrids' layers, one step, measured")]
    if not others.empty:
        measured.append(_latency_panel(axes[3], others, "other models' layers, measured"))
    handles = [header("model (cost model; dashed: beyond 128k)")]
    handles += [h for h in axes[0].get_lines() if not h.get_label().startswith("_")]
    handles += [header("one layer"), Line2D([], [], color="0.3", linestyle="-", label="linear layer's state"),
                Line2D([], [], color="0.3", linestyle="--", label="full layer's KV"),
                Line2D([], [], color="0.3", linestyle=(0, (1, 1.5)), label="where they are equal")]
    handles.append(header("measured decode step"))
    handles += [h for ax in axes[2:] for h in ax.get_lines() if not h.get_label().startswith("_")]
    subtitle(fig, rows[hybrid].sort_values("variant", key=lambda v: ~v.isin(linear)),
             device=", ".join(sorted(rows["device"].astype(str).unique())) if "device" in rows else None, held=("seq",))
    place_legend(fig, handles)
    return Drawn(fig, flagged.with_listing("One sequence's cache over the whole model in bf16 against context (cost model: each layer's "
                      "own layout, a linear layer's fixed state, a full layer's growing KV, a window layer's ring; "
                      f"solid to {tokens(MEASURED_MAX)}, the contexts a CPU measures, dashed and shaded beyond), "
                      "where one linear layer's state equals one full layer's KV (dotted verticals), and one "
                      "layer's decode step per layer kind, measured (solid: linear layers, dotted: full or window "
                      f"layers; each its fastest implementation per context). {'; '.join(notes)}.", pd.concat(measured)))
