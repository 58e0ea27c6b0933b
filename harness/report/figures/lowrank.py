"""Figures 20-22: a low-rank study's rows (``attnbench.harness.studies.lowrank``, columns
``attnbench.harness.studies.lowrank.schema``).

Colour keys the factorization method (``style.METHOD_COLORS``); a second ``d_r`` in the rows shows
as a line style. The source GQA model, unconverted, is the dotted line or the star.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from attnbench.harness.report.figures import Drawn, FigureInput, figure
from attnbench.harness.report.figures.axes import log_axis
from attnbench.harness.report.figures.canvas import MAX_SERIES, new_figure
from attnbench.harness.report.figures.legend import header, place_legend
from attnbench.harness.report.figures.style import method_color, method_sort_key
from attnbench.harness.text import escape

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


def _legend(fig: Figure, rows: pd.DataFrame, extra: tuple[Line2D, ...] = (), *, by_d_r: bool = False) -> None:
    """Headed groups: the methods' colours, the d_r line styles (unless each panel is one d_r), the
    reference lines."""
    handles = [header("method")] + [Line2D([], [], color=method_color(m), linewidth=2.5, label=m)
                                    for m in sorted(rows["method"].unique(), key=method_sort_key)]
    d_rs = sorted(rows["d_r"].unique())
    if len(d_rs) > 1 and not by_d_r:
        handles += [header("d_r")] + [Line2D([], [], color="0.35", linestyle=_D_R_LINES[i % len(_D_R_LINES)],
                                             label=f"d_r = {d_r}") for i, d_r in enumerate(d_rs)]
    if extra:
        handles += [header("reference"), *extra]
    place_legend(fig, handles)


def _subtitle(fig: Figure, rows: pd.DataFrame) -> None:
    """Model, dtype and the evaluation's size, so a PDF alone says what it shows (perplexity runs one
    sequence at a time: batch 1)."""
    first = rows.iloc[0]
    words = [f"model {first['model']}", str(first["dtype"]), "batch 1"]
    if pd.notna(first.get("eval_tokens")):
        words.append(f"{int(first['eval_tokens']):,} eval tokens")
    fig.suptitle(escape.mathtext(", ".join(words)), fontsize=7)  # a "$" in a model name is text


def _by_d_r(rows: pd.DataFrame) -> list[pd.DataFrame]:
    """Small multiples: one panel per d_r when methods x d_r would put more than MAX_SERIES lines in one."""
    if rows.groupby(["method", "d_r"]).ngroups <= MAX_SERIES:
        return [rows]
    return [g for _, g in rows.groupby("d_r", sort=True)]


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
    parts = _by_d_r(mean)
    fig, axes = new_figure(width, width_in, panels=2 * len(parts), ncols=2)
    for i, part in enumerate(parts):
        for ax, column, label in ((axes[2 * i], "weight_rel_err", "weight error ‖W − UD‖/‖W‖"),
                                  (axes[2 * i + 1], "act_rel_err", "output error, held-out")):
            _lines(ax, part, "d_c", column)
            ax.set_ylim(0, None)
            ax.set_ylabel(label)
            _dc_axis(ax, part)
            if len(parts) > 1:
                ax.set_title(f"d_r = {part['d_r'].iloc[0]}", loc="left")
    _subtitle(fig, rows)
    _legend(fig, mean, by_d_r=len(parts) > 1)
    return Drawn(fig, "Mean over layers of the weight-space error of the factorized K/V matrix and of the attention "
                      f"output's error on held-out hidden states, per method ({_setting(rows)}).")


@figure(name="lowrank_perplexity_vs_dc", order=21, title="Perplexity against d_c", needs=("perplexity", "d_c"),
        why_missing=WHY, rows="lowrank")
def perplexity_vs_dc(data: FigureInput, width: str, width_in: float) -> Drawn:
    rows = _converted(data.lowrank, "model")
    if rows.empty:
        return _left_out("Perplexity against d_c")
    parts = _by_d_r(rows)
    fig, axes = new_figure(width, width_in, panels=len(parts), ncols=min(len(parts), 2))
    extra: tuple[Line2D, ...] = ()
    source = _source(data.lowrank)
    for ax, part in zip(axes, parts, strict=True):
        _lines(ax, part, "d_c", "perplexity")
        if len(source):
            ax.axhline(float(source["source_perplexity"].iloc[0]), color="black", linestyle=":")
            extra = (Line2D([], [], color="black", linestyle=":", label="source GQA"),)
        log_axis(ax, "y")
        ax.set_ylabel("perplexity (eval text)")
        _dc_axis(ax, part)
        if len(parts) > 1:
            ax.set_title(f"d_r = {part['d_r'].iloc[0]}", loc="left")
    _subtitle(fig, rows)
    _legend(fig, rows, extra, by_d_r=len(parts) > 1)
    return Drawn(fig, "Whole-model perplexity with every attention layer converted, per method; dotted: the source "
                      f"model ({_setting(rows)}).")


@figure(name="lowrank_tradeoff", order=22, title="KV bytes per token against perplexity",
        needs=("kv_bytes_per_token", "perplexity"), why_missing=WHY, rows="lowrank")
def tradeoff(data: FigureInput, width: str, width_in: float) -> Drawn:
    rows = _converted(data.lowrank, "model")
    if rows.empty:
        return _left_out("KV bytes per token against perplexity")
    parts = _by_d_r(rows)
    fig, axes = new_figure(width, width_in, panels=len(parts), ncols=min(len(parts), 2))
    extra: tuple[Line2D, ...] = ()
    source = _source(data.lowrank)
    for ax, part in zip(axes, parts, strict=True):
        _lines(ax, part, "kv_bytes_per_token", "perplexity")
        if len(source):
            ax.scatter(source["source_kv_bytes_per_token"].astype(float), source["source_perplexity"].astype(float),
                       marker="*", s=80, color="black", zorder=5)
            extra = (Line2D([], [], color="black", marker="*", linestyle="", markersize=8, label="source GQA"),)
        log_axis(ax, "y")
        ax.set_xlabel(f"KV bytes/token/layer ({rows['kv_dtype'].iloc[0]})")
        ax.set_ylabel("perplexity (eval text)")
        if len(parts) > 1:
            ax.set_title(f"d_r = {part['d_r'].iloc[0]}", loc="left")
    _subtitle(fig, rows)
    _legend(fig, rows, extra, by_d_r=len(parts) > 1)
    return Drawn(fig, "The trade-off: KV-cache bytes per token and layer against perplexity, one curve per method, "
                      f"the source GQA model as a star ({_setting(rows)}).")
