"""Figures 20-22: a low-rank study's rows (``studies.lowrank``, columns ``studies.lowrank.schema``).

Colour keys the factorization method (``style.METHOD_COLORS``); a second ``d_r`` in the rows shows
as a line style. The source GQA model, unconverted, is the dotted line or the star.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.report.figures import Drawn, FigureInput, figure
from harness.report.plotting import log_axis, new_figure
from harness.report.style import method_color, method_sort_key

WHY = "the study writes them for converted layers that ran (status ok)"
_D_R_LINES: tuple[object, ...] = ("-", "--", ":", "-.")


def _converted(rows: pd.DataFrame, scope: str) -> pd.DataFrame:
    ok = rows[(rows["scope"] == scope) & (rows["status"] == "ok") & (rows["method"] != "source")].copy()
    ok["d_c"] = ok["d_c"].astype(int)
    ok["d_r"] = ok["d_r"].astype(int)
    return ok


def _source(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[(rows["method"] == "source") & (rows["scope"] == "model")]


def _setting(rows: pd.DataFrame) -> str:
    d_r = ", ".join(str(v) for v in sorted(rows["d_r"].unique()))
    return f"{', '.join(sorted(rows['model'].astype(str).unique()))}, d_r = {d_r}"


def _lines(ax: Axes, rows: pd.DataFrame, x: str, y: str) -> None:
    """One line per method and d_r, in a fixed colour per method."""
    d_rs = sorted(rows["d_r"].unique())
    for (method, d_r), line in rows.groupby(["method", "d_r"], sort=False):
        line = line.sort_values(x)
        ax.plot(line[x].astype(float), line[y].astype(float), color=method_color(str(method)), marker="o",
                linestyle=_D_R_LINES[d_rs.index(d_r) % len(_D_R_LINES)], label=f"{method}/d_r={d_r}")


def _legend(fig: Figure, rows: pd.DataFrame, extra: tuple[Line2D, ...] = ()) -> None:
    handles = [Line2D([], [], color=method_color(m), linewidth=2.5, label=m)
               for m in sorted(rows["method"].unique(), key=method_sort_key)]
    d_rs = sorted(rows["d_r"].unique())
    if len(d_rs) > 1:
        handles += [Line2D([], [], color="0.35", linestyle=_D_R_LINES[i % len(_D_R_LINES)], label=f"d_r = {d_r}")
                    for i, d_r in enumerate(d_rs)]
    handles += list(extra)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3 if fig.get_figwidth() < 5 else 8))


def _dc_axis(ax: Axes, rows: pd.DataFrame) -> None:
    ticks = sorted(rows["d_c"].unique())
    ax.set_xticks(ticks, labels=[str(v) for v in ticks])
    ax.set_xlabel("latent size d_c (elements)")


def _left_out(title: str) -> Drawn:
    return Drawn(None, f"{title}: left out, no converted setting ran (every row skipped or failed).")


@figure(name="lowrank_error_vs_dc", order=20, title="Conversion error against d_c",
        needs=("weight_rel_err", "act_rel_err", "d_c"), why_missing=WHY, rows="lowrank")
def error_vs_dc(data: FigureInput, width: str, width_in: float) -> Drawn:
    rows = _converted(data.lowrank, "layer")
    if rows.empty:
        return _left_out("Conversion error against d_c")
    mean = rows.groupby(["method", "d_c", "d_r"], as_index=False, sort=False)[["weight_rel_err", "act_rel_err"]].mean()
    fig, axes = new_figure(width, width_in, panels=2)
    for ax, column, label in ((axes[0], "weight_rel_err", "weight error ‖W − UD‖/‖W‖"),
                              (axes[1], "act_rel_err", "output error, held-out")):
        _lines(ax, mean, "d_c", column)
        ax.set_ylim(0, None)
        ax.set_ylabel(label)
        _dc_axis(ax, mean)
    _legend(fig, mean)
    return Drawn(fig, "Mean over layers of the weight-space error of the factorized K/V matrix and of the attention "
                      f"output's error on held-out hidden states, per method ({_setting(rows)}).")


@figure(name="lowrank_perplexity_vs_dc", order=21, title="Perplexity against d_c", needs=("perplexity", "d_c"),
        why_missing=WHY, rows="lowrank")
def perplexity_vs_dc(data: FigureInput, width: str, width_in: float) -> Drawn:
    rows = _converted(data.lowrank, "model")
    if rows.empty:
        return _left_out("Perplexity against d_c")
    fig, (ax,) = new_figure(width, width_in, panels=1)
    _lines(ax, rows, "d_c", "perplexity")
    extra: tuple[Line2D, ...] = ()
    source = _source(data.lowrank)
    if len(source):
        ax.axhline(float(source["source_perplexity"].iloc[0]), color="black", linestyle=":")
        extra = (Line2D([], [], color="black", linestyle=":", label="source GQA"),)
    log_axis(ax, "y")
    ax.set_ylabel("perplexity (eval text)")
    _dc_axis(ax, rows)
    _legend(fig, rows, extra)
    return Drawn(fig, "Whole-model perplexity with every attention layer converted, per method; dotted: the source "
                      f"model ({_setting(rows)}).")


@figure(name="lowrank_tradeoff", order=22, title="KV bytes per token against perplexity",
        needs=("kv_bytes_per_token", "perplexity"), why_missing=WHY, rows="lowrank")
def tradeoff(data: FigureInput, width: str, width_in: float) -> Drawn:
    rows = _converted(data.lowrank, "model")
    if rows.empty:
        return _left_out("KV bytes per token against perplexity")
    fig, (ax,) = new_figure(width, width_in, panels=1)
    _lines(ax, rows, "kv_bytes_per_token", "perplexity")
    extra: tuple[Line2D, ...] = ()
    source = _source(data.lowrank)
    if len(source):
        ax.scatter(source["source_kv_bytes_per_token"].astype(float), source["source_perplexity"].astype(float),
                   marker="*", s=80, color="black", zorder=5)
        extra = (Line2D([], [], color="black", marker="*", linestyle="", markersize=8, label="source GQA"),)
    log_axis(ax, "y")
    ax.set_xlabel(f"KV cache bytes per token per layer ({rows['kv_dtype'].iloc[0]})")
    ax.set_ylabel("perplexity (eval text)")
    _legend(fig, rows, extra)
    return Drawn(fig, "The trade-off: KV-cache bytes per token and layer against perplexity, one curve per method, "
                      f"the source GQA model as a star ({_setting(rows)}).")
