"""The report's tables, each as raw numbers (for CSV, units in the column names) and as the text a
reader sees (markdown, LaTeX, HTML: units in the headers, three significant digits).

Setting columns that hold one value over the whole table (one device, one dtype, ...) are moved
from the shown table into its caption, so a column-width table keeps only what varies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from harness.report.data import DEVICE
from harness.report.style import impl_sort_key, variant_sort_key
from harness.report.units import byte_unit, number, tokens

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
                   "mem_ratio", "run_root", "case_id"]
    raw = pd.DataFrame({c: _col(ok, c) for c in raw_columns})
    flop_unit, flop_scale = _scaled(raw["tflops"] * 1e12, FLOP_UNITS)
    mem_unit, mem_scale = byte_unit(raw["peak_mem_bytes"])
    kv_unit, kv_scale = byte_unit(raw["kv_cache_bytes"])
    shown = pd.DataFrame({
        **_settings(ok), "batch": raw["batch"].map(number), "context": raw["seq"].map(tokens),
        "variant": raw["variant"], "impl": raw["impl"],
        "latency (ms) [95% CI]": [_with_ci(m, lo, hi) for m, lo, hi in zip(
            raw["latency_ms"], raw["latency_ci_low_ms"], raw["latency_ci_high_ms"], strict=True)],
        "GB/s": raw["gbps"].map(number),
        "of BW ceiling": raw["frac_peak_bandwidth"].map(_percent),
        flop_unit: (raw["tflops"] * 1e12 / flop_scale).map(number),
        f"peak mem ({mem_unit})": (raw["peak_mem_bytes"] / mem_scale).map(number),
        f"KV cache ({kv_unit})": (raw["kv_cache_bytes"] / kv_scale).map(number),
        "speed-up": raw["speedup"].map(_times), "mem ratio": raw["mem_ratio"].map(_times),
    })
    caption = (f"Measured cases (one layer). Latency: median step time with its 95% confidence interval; "
               f"bandwidth counts the cost model's minimum bytes; speed-up = {baseline_label} latency / latency "
               f"and mem ratio = peak memory / {baseline_label} peak memory at the same shape, context, batch, "
               "phase, dtype, compile mode and device (empty: no baseline row).")
    shown, caption = _fold_constants(ok, shown, caption)
    return Table("cases", "Measured cases", raw, shown, caption)


def not_measured_table(rows: pd.DataFrame) -> Table:
    rows = _sorted(rows)
    raw_columns = [DEVICE, "model", "phase", "dtype", "compile", "attention", "decode_len", "batch", "seq",
                   "seq_lens", "page_size", "variant", "impl", "status", "reason", "run_root", "case_id"]
    raw = pd.DataFrame({c: _col(rows, c) for c in raw_columns})
    shown = pd.DataFrame({**_settings(rows), "batch": raw["batch"].map(number), "context": raw["seq"].map(tokens),
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
        "batch": raw["batch"].map(number), "longest context (tokens)": raw["max_context_tokens"].map(_count),
        f"KV per token, model ({kv_unit})": (raw["kv_bytes_per_token_model"] / kv_scale).map(number),
        f"attn. weights ({weights_unit})": (raw["weight_bytes_model"] / weights_scale).map(number),
        "measured at": raw["measured_seq"].map(tokens), "leanest impl": raw["measured_impl"].fillna(""),
        f"measured peak, 1 layer ({peak_unit})": (pd.to_numeric(raw["measured_peak_bytes"]) / peak_scale).map(number),
        f"model, 1 layer ({peak_unit})": (pd.to_numeric(raw["model_bytes_layer_at_measured_seq"]) / peak_scale)
        .map(number),
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
    shown, caption = _fold_constants(raw, shown, caption)
    return Table("capacity", "Capacity", raw, shown, caption)


def sources_table(rows: pd.DataFrame) -> Table:
    """Where the rows came from, per device: runs, hosts, software and commits."""
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
    return Table("sources", "Where the rows came from", raw, raw.copy(),
                 "Devices, runs, hosts, software versions and git commits of the rows in this report.")


def _values(frame: pd.DataFrame, column: str) -> str:
    if column not in frame.columns:
        return ""
    return ", ".join(sorted(frame[column].dropna().astype(str).unique()))


def _with_ci(median: object, low: object, high: object) -> str:
    text = number(median)
    if not text:
        return ""
    bounds = number(low), number(high)
    return f"{text} [{bounds[0]}, {bounds[1]}]" if all(bounds) else text


def _percent(value: object) -> str:
    text = number(100 * float(value)) if value is not None and pd.notna(value) else ""  # type: ignore[arg-type]
    return f"{text}%" if text else ""


def _times(value: object) -> str:
    text = number(value)
    return f"{text}×" if text else ""


def _gib(value: object) -> str:
    return f"{number(float(value) / 2**30)} GiB" if value is not None and pd.notna(value) else ""  # type: ignore[arg-type]


def _count(value: object) -> str:
    return f"{int(value):,}" if value is not None and pd.notna(value) else ""  # type: ignore[call-overload]
