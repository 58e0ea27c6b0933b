"""Figures of a low-rank study's rows (``schema.COLUMNS``): each function returns a matplotlib Figure.

Built on ``matplotlib.figure.Figure`` (no pyplot state, no display backend); one colour per method,
the same in every figure; a second ``d_r`` in the rows shows as a line style.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

METHOD_ORDER = ("svd", "rsvd", "qr", "cur", "whitened")


def _hue(rows: pd.DataFrame) -> dict:
    """Seaborn keywords giving each method one colour, in one order, across all figures."""
    methods = set(rows["method"])
    ordered = [m for m in METHOD_ORDER if m in methods] + sorted(methods - set(METHOD_ORDER))
    palette = dict(zip(ordered, sns.color_palette("colorblind", len(ordered)), strict=True))
    return {"hue": "method", "hue_order": ordered, "palette": palette,
            "style": "d_r" if rows["d_r"].nunique() > 1 else None}


def _legend_outside(ax) -> None:  # noqa: ANN001
    """Legend right of the axes, so it never hides a curve."""
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _dc_axis(ax, rows: pd.DataFrame) -> None:  # noqa: ANN001
    ticks = sorted(rows["d_c"].unique())
    ax.set_xticks(ticks, labels=[str(v) for v in ticks])


def _ok(df: pd.DataFrame, scope: str) -> pd.DataFrame:
    rows = df[(df["scope"] == scope) & (df["status"] == "ok") & (df["method"] != "source")].copy()
    rows["d_c"] = rows["d_c"].astype(int)
    rows["d_r"] = rows["d_r"].astype(int)
    return rows


def _title(rows: pd.DataFrame) -> str:
    d_r = ", ".join(str(v) for v in sorted(rows["d_r"].unique()))
    return f"{rows['model'].iloc[0]}, d_r = {d_r}"


def error_vs_dc(df: pd.DataFrame) -> Figure:
    """Mean over layers of the weight-space and the attention-output relative error against d_c."""
    rows = _ok(df, "layer")
    mean = rows.groupby(["method", "d_c", "d_r", "model"], as_index=False)[["weight_rel_err", "act_rel_err"]].mean()
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for ax, column, label in ((axes[0], "weight_rel_err", "weight-space relative error ‖W − UD‖/‖W‖"),
                              (axes[1], "act_rel_err", "attention-output relative error, held-out")):
        sns.lineplot(mean, x="d_c", y=column, **_hue(mean), marker="o", ax=ax, legend=ax is axes[1])
        if ax is axes[1]:
            _legend_outside(ax)
        ax.set(xlabel="latent size d_c (elements)", ylabel=label, ylim=(0, None))
        _dc_axis(ax, mean)
    fig.suptitle(f"GQA -> MLA conversion error, mean over layers, {_title(mean)}")
    return fig


def perplexity_vs_dc(df: pd.DataFrame) -> Figure:
    """Whole-model perplexity with every layer converted, against d_c; the source as a line."""
    rows = _ok(df, "model")
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    sns.lineplot(rows, x="d_c", y="perplexity", **_hue(rows), marker="o", ax=ax)
    source = df[(df["method"] == "source") & (df["scope"] == "model")]
    if len(source):
        ax.axhline(float(source["source_perplexity"].iloc[0]), color="black", linestyle=":", label="source GQA")
        ax.legend()
    _legend_outside(ax)
    ax.set(xlabel="latent size d_c (elements)", ylabel="perplexity (eval text)", yscale="log",
           title=f"Perplexity, all layers converted, {_title(rows)}")
    _dc_axis(ax, rows)
    return fig


def tradeoff(df: pd.DataFrame) -> Figure:
    """KV cache bytes per token against perplexity: one curve per method, the source GQA a star."""
    rows = _ok(df, "model").sort_values("kv_bytes_per_token")
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    sns.lineplot(rows, x="kv_bytes_per_token", y="perplexity", **_hue(rows), sort=True, marker="o", ax=ax)
    source = df[(df["method"] == "source") & (df["scope"] == "model")]
    if len(source):
        ax.scatter(source["source_kv_bytes_per_token"].astype(float), source["source_perplexity"].astype(float),
                   marker="*", s=250, color="black", zorder=5, label="source GQA")
        ax.legend()
    _legend_outside(ax)
    kv_dtype = rows["kv_dtype"].iloc[0] if len(rows) else "?"
    ax.set(xlabel=f"KV cache bytes per token per layer ({kv_dtype})", ylabel="perplexity (eval text)",
           yscale="log", title=f"Cache size vs quality, {_title(rows)}")
    return fig


def save_all(df: pd.DataFrame, folder: Path) -> list[Path]:
    """The three figures as PNG files in ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in (("error_vs_dc", error_vs_dc), ("perplexity_vs_dc", perplexity_vs_dc), ("tradeoff", tradeoff)):
        path = folder / f"{name}.png"
        draw(df).savefig(path, dpi=150)
        paths.append(path)
    return paths
