"""The report's tables, each as raw numbers (for CSV, units in the column names) and as the text a
reader sees (markdown, LaTeX, HTML: units in the headers, never in the cells).

Every number of a shown column has three significant digits with its trailing zeros (``0.240``,
``12.0``, ``1,234``), and a confidence interval's bounds have the decimals of its median, so a
column reads alike. Setting columns that hold one value over the whole table (one device, one
dtype, ...) are moved from the shown table into its caption, and columns empty in every row are
dropped, so a column-width table keeps only what varies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from attnbench.harness.report import flagged
from attnbench.harness.report.data import DEVICE
from attnbench.harness.report.order import impl_sort_key, variant_sort_key
from attnbench.harness.text.units import byte_unit, count, like, significant, tokens

# Folded into the caption when constant; always shown otherwise.
SETTING_COLUMNS = {DEVICE: "device", "model": "model", "dtype": "dtype", "compile": "compile",
                   "phase": "phase", "attention": "attention", "decode_len": "new tokens per step",
                   "seq_lens": "ragged lengths", "page_size": "page size"}
# Said only where a row has them (a ragged batch, a paged cache), not as "none" for every row.
OPTIONAL_SETTINGS = ("seq_lens", "page_size")
CASE_ORDER = (DEVICE, "model", "phase", "dtype", "compile", "attention", "decode_len", "batch", "seq", "seq_lens",
              "page_size", "variant", "impl")


@dataclass(frozen=True)
class Table:
    name: str  # file stem: tables/<name>.{md,tex,csv}
    title: str
    raw: pd.DataFrame  # numbers, unit-named columns
    shown: pd.DataFrame  # strings, unit-labelled headers
    caption: str
    below: str = ""  # stated under the table: what its numbers assume

    def __post_init__(self) -> None:
        # A column empty in every row says nothing (no ceiling calibrated, no CUDA on a CPU).
        if len(self.shown):
            empty = [c for c in self.shown.columns if not self.shown[c].map(lambda v: str(v).strip()).any()]
            object.__setattr__(self, "shown", self.shown.drop(columns=empty))


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in CASE_ORDER if c in frame.columns]

    def key(column: pd.Series) -> pd.Series:
        if column.name == "variant":
            return column.map(variant_sort_key)
        if column.name == "impl":
            return column.map(impl_sort_key)
        return column.astype(str) if column.dtype == object else column

    return frame.sort_values(keys, key=key, kind="stable").reset_index(drop=True)


def _fold_constants(frame: pd.DataFrame, shown: pd.DataFrame, caption: str) -> tuple[pd.DataFrame, str]:
    constant = []
    for column, label in SETTING_COLUMNS.items():
        if column in frame.columns and label in shown.columns and frame[column].astype(str).nunique() <= 1:
            if column in OPTIONAL_SETTINGS and frame[column].isna().all():
                shown = shown.drop(columns=label)
                continue
            constant.append(f"{label} {frame[column].astype(str).iloc[0]}" if len(frame) else label)
            shown = shown.drop(columns=label)
    return shown, caption + (f" All rows: {'; '.join(constant)}." if constant else "")


def _scaled(values: pd.Series, units: tuple[tuple[str, float], ...]) -> tuple[str, float]:
    """The unit in which the median of ``values`` reads as 1 or more (the smallest unit otherwise)."""
    typical = pd.to_numeric(values, errors="coerce").dropna().median()
    return next(((u, s) for u, s in units if typical >= s), units[-1]) if pd.notna(typical) else units[-1]


FLOP_UNITS = (("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6), ("kFLOP/s", 1e3))


def _settings(frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {label: frame[column].map(lambda v: "" if pd.isna(v) else str(v)) if column in OPTIONAL_SETTINGS
            else frame[column].astype(str) for column, label in SETTING_COLUMNS.items() if column in frame}


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series([float("nan")] * len(frame), index=frame.index)


def cases_table(ok: pd.DataFrame, *, baseline_label: str) -> Table:
    """Per measured case: latency with its CI, bandwidth and its share of the ceiling, FLOP rate,
    peak memory, KV-cache bytes, speed-up and memory ratio against the baseline."""
    ok = _sorted(ok)
    raw_columns = [DEVICE, "model", "phase", "dtype", "compile", "attention", "decode_len", "batch", "seq",
                   "seq_lens", "page_size", "variant", "impl", "latency_ms", "latency_ci_low_ms", "latency_ci_high_ms", "n_reps", "gbps",
                   "ceiling_copy_gbps", "frac_peak_bandwidth", "tflops", "ceiling_matmul_tflops", "frac_peak_flops",
                   "peak_mem_bytes", "kv_cache_bytes", "kv_bytes_per_token_model", "tokens_per_s", "speedup",
                   "mem_ratio", "flags", "run_root", "case_id", "repro"]
    raw = pd.DataFrame({c: _col(ok, c) for c in raw_columns})
    flop_unit, flop_scale = _scaled(raw["tflops"] * 1e12, FLOP_UNITS)
    mem_unit, mem_scale = byte_unit(raw["peak_mem_bytes"])
    kv_unit, kv_scale = byte_unit(raw["kv_cache_bytes"])
    latency = raw["latency_ms"].map(significant)
    shown = pd.DataFrame({
        **_settings(ok), "batch": raw["batch"].map(count), "context": raw["seq"].map(tokens),
        # One column, named as the figures name a series: a page-wide table has no room to spare.
        "variant/impl": flagged.daggered(raw["variant"].astype(str) + "/" + raw["impl"].astype(str), raw),
        "latency (ms)": latency,
        "95% CI (ms)": [_ci(lo, hi, m) for lo, hi, m in zip(raw["latency_ci_low_ms"], raw["latency_ci_high_ms"],
                                                             latency, strict=True)],
        "GB/s": raw["gbps"].map(significant),
        "of BW ceiling (%)": (100 * pd.to_numeric(raw["frac_peak_bandwidth"])).map(significant),
        flop_unit: (raw["tflops"] * 1e12 / flop_scale).map(significant),
        f"peak mem ({mem_unit})": (raw["peak_mem_bytes"] / mem_scale).map(significant),
        f"KV cache ({kv_unit})": (raw["kv_cache_bytes"] / kv_scale).map(significant),
        "speed-up (×)": raw["speedup"].map(significant), "mem ratio (×)": raw["mem_ratio"].map(significant),
    })
    caption = (f"Measured cases (one layer). Latency: median step time with its 95% confidence interval (blank: too "
               "few repetitions to bound it); "
               f"bandwidth counts the cost model's minimum bytes; speed-up = {baseline_label} latency / latency "
               f"and mem ratio = peak memory / {baseline_label} peak memory at the same shape, context, batch, "
               "phase, dtype, compile mode and device (empty: no baseline row).")
    if flagged.mask(raw).any():
        caption += (f" {flagged.DAGGER}: a flagged row (noisy, fallback, busy or above_ceiling; the flags column of "
                    "cases.csv says which).")
    shown, caption = _fold_constants(ok, shown, caption)
    return Table("cases", "Measured cases", raw, shown, caption)


def not_measured_table(rows: pd.DataFrame) -> Table:
    rows = _sorted(rows)
    raw_columns = [DEVICE, "model", "phase", "dtype", "compile", "attention", "decode_len", "batch", "seq",
                   "seq_lens", "page_size", "variant", "impl", "status", "reason", "run_root", "case_id"]
    raw = pd.DataFrame({c: _col(rows, c) for c in raw_columns})
    shown = pd.DataFrame({**_settings(rows), "batch": raw["batch"].map(count), "context": raw["seq"].map(tokens),
                          "variant": raw["variant"], "impl": raw["impl"], "status": raw["status"],
                          "reason": raw["reason"].fillna("")})
    shown, caption = _fold_constants(rows, shown, "Cases not measured, with the harness's reason.")
    return Table("not_measured", "Cases not measured", raw, shown, caption)


def capacity_view(capacity: pd.DataFrame) -> Table:
    raw = _sorted(capacity)
    weights_unit, weights_scale = byte_unit(raw["weight_bytes_model"])
    kv_unit, kv_scale = byte_unit(raw["kv_bytes_per_token_model"])
    peak_unit, peak_scale = byte_unit(pd.concat([raw["measured_peak_bytes"],
                                                 raw["model_bytes_layer_at_measured_seq"]]))
    shown = pd.DataFrame({
        **_settings(raw), "budget": raw["budget_bytes"].map(_gib), "variant": raw["variant"],
        "batch": raw["batch"].map(count), "longest context (tokens)": raw["max_context_tokens"].map(count),
        f"KV per token, model ({kv_unit})": (raw["kv_bytes_per_token_model"] / kv_scale).map(significant),
        f"attn. weights ({weights_unit})": (raw["weight_bytes_model"] / weights_scale).map(significant),
        "measured at": raw["measured_seq"].map(tokens), "leanest impl": raw["measured_impl"].fillna(""),
        f"measured peak, 1 layer ({peak_unit})": (pd.to_numeric(raw["measured_peak_bytes"]) / peak_scale)
        .map(significant),
        f"model, 1 layer ({peak_unit})": (pd.to_numeric(raw["model_bytes_layer_at_measured_seq"]) / peak_scale)
        .map(significant),
    })
    layers = ", ".join(sorted(raw["num_layers"].astype(str).unique()))
    reserve = ", ".join(f"{r:.0%}" for r in sorted(raw["reserve"].unique()))
    caption = (f"Longest context that fits, from the cost model: attention weights and KV cache of all "
               f"{layers} layers within the budget less a {reserve} reserve for activations and the runtime. "
               "Measured: the leanest implementation's peak (one layer, decode) at the longest measured context, "
               "beside the cost model's one-layer weights + cache there.")
    if raw["budget_bytes"].nunique() == 1:
        shown = shown.drop(columns="budget")
        caption += f" Budget: {_gib(raw['budget_bytes'].iloc[0])}."
    dtypes = ", ".join(sorted(raw["dtype"].astype(str).unique()))
    below = (f"What the longest context assumes: only the attention layers' memory, their weights (the query, key, "
             f"value and output projections; MLA's down- and up-projections) and the KV cache of each variant's own "
             f"layout (MLA's is the latent d_c + d_r per token), for {layers} layers in {dtypes}; every sequence of "
             f"the batch at that context, in one contiguous cache; {reserve} of the budget held back for activations, "
             "the allocator and the runtime. Not counted: the MLP or experts, embeddings, the output head, "
             "activations beyond the reserve, paging and fragmentation; nor whether the model was trained for such "
             "a context. Give a smaller --budget to leave room for what is not counted.")
    shown, caption = _fold_constants(raw, shown, caption)
    return Table("capacity", "Capacity", raw, shown, caption, below)


def throughput_view(rows: pd.DataFrame) -> Table:
    """``attnbench.harness.report.analysis.budget.throughput_table``:
    each variant at the largest batch that fits the budget."""
    raw = _sorted(rows)
    mem_unit, mem_scale = byte_unit(raw["model_bytes"])
    base = str(raw["baseline_variant"].iloc[0])

    def source(row: pd.Series) -> str:
        if pd.isna(row["latency_from"]):
            return str(row["reason"])
        if row["latency_from"] == "interpolated":
            return f"interpolated, batches {int(row['batch_low']):,}-{int(row['batch_high']):,}"
        return "measured"

    impl = [("" if pd.isna(i) else str(i)) + ("" if pd.isna(c) or c == "none" else f" (compile {c})")
            for i, c in zip(raw["impl"], raw["compile"], strict=True)]
    shown = pd.DataFrame({
        **_settings(raw.drop(columns="compile")), "budget": raw["budget_bytes"].map(_gib),
        "context": raw["seq"].map(tokens),
        "variant": raw["variant"], "batch": raw["batch"].map(count),
        f"weights + KV ({mem_unit})": (pd.to_numeric(raw["model_bytes"]) / mem_scale).map(significant),
        "impl": impl, "step, 1 layer (ms)": raw["latency_ms"].map(significant),
        "latency": raw.apply(source, axis=1) if len(raw) else [],
        "tokens/s": raw["tokens_per_s"].map(significant), f"vs {base} (×)": raw["vs_baseline"].map(significant),
    })
    layers = ", ".join(sorted(raw["num_layers"].astype(str).unique()))
    reserve = ", ".join(f"{r:.0%}" for r in sorted(raw["reserve"].unique()))
    caption = (f"Each variant at the largest batch whose attention weights and "
               f"KV cache of all {layers} layers fit the budget less a {reserve} reserve, by its fastest "
               f"implementation there. tokens/s = batch x new tokens per step / (one layer's step latency x "
               f"{layers} layers): the layer's latency is measured at that batch, or interpolated linearly in "
               f"batch between the two measured batches around it (never extrapolated).")
    if raw["budget_bytes"].nunique() == 1:
        shown = shown.drop(columns="budget")
        caption += f" Budget: {_gib(raw['budget_bytes'].iloc[0])}."
    below = ("Every layer is taken to take the measured layer's time; the MLP, embeddings and output head are "
             "neither timed nor counted in memory, so the absolute tokens/s are an upper bound for a whole model "
             "and the ratios between variants are the result.")
    shown, caption = _fold_constants(raw, shown, caption)
    return Table("throughput_budget", "Decode throughput at a memory budget", raw, shown, caption, below)


def sources_table(rows: pd.DataFrame) -> Table:
    """Where the rows came from, per device: runs, hosts, software and commits (shown by their first
    twelve hex digits, enough to name a commit in any repository this size; the CSV keeps all 40)."""
    columns: dict[str, Callable[[pd.DataFrame], str]] = {
        "runs": lambda g: _values(g, "run_root"), "hosts": lambda g: _values(g, "env_host"),
        "torch": lambda g: _values(g, "env_torch"), "CUDA": lambda g: _values(g, "env_cuda"),
        "driver": lambda g: _values(g, "env_driver"), "git commits": lambda g: _values(g, "env_git_commit"),
        "measured": lambda g: str(int((g["status"] == "ok").sum())),
        "not measured": lambda g: str(int((g["status"] != "ok").sum())),
    }
    out = [{"device": device, **{name: fn(group) for name, fn in columns.items()}}
           for device, group in rows.groupby(DEVICE, sort=True)]
    raw = pd.DataFrame(out)
    shown = raw.copy()
    if "git commits" in shown:
        shown["git commits"] = shown["git commits"].str.replace(r"\b([0-9a-f]{12})[0-9a-f]{28}\b", r"\1", regex=True)
    return Table("sources", "Where the rows came from", raw, shown,
                 "Devices, runs, hosts, software versions and git commits of the rows in this report.")


def _values(frame: pd.DataFrame, column: str) -> str:
    if column not in frame.columns:
        return ""
    return ", ".join(sorted(frame[column].dropna().astype(str).unique()))


def _ci(low: object, high: object, median: str) -> str:
    """``[0.240, 0.260]`` with the median's decimals; blank where the loop could not bound it."""
    bounds = like(low, median), like(high, median)
    return f"[{bounds[0]}, {bounds[1]}]" if median and all(bounds) else ""


def _gib(value: object) -> str:
    if value is None or pd.isna(value):  # type: ignore[arg-type]
        return ""
    return f"{significant(float(value) / 2**30)} GiB"  # type: ignore[arg-type]
