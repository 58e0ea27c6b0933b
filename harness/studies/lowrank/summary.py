"""The study's headline table: per method and d_c, perplexity, mean activation error and KV bytes."""

from __future__ import annotations

import pandas as pd


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, d_r, d_c) of whole-model results, the source model first."""
    model = df[df["scope"] == "model"].copy()
    model["kv_vs_source"] = model["kv_bytes_per_token"] / model["source_kv_bytes_per_token"]
    model["ppl_vs_source"] = model["perplexity"] / model["source_perplexity"]
    source = model[model["method"] == "source"]
    columns = ["method", "d_r", "d_c", "kv_bytes_per_token", "kv_vs_source", "perplexity", "ppl_vs_source",
               "act_rel_err", "weight_rel_err", "status"]
    converted = model[model["method"] != "source"].sort_values(["d_r", "method", "d_c"])
    return pd.concat([source, converted])[columns].reset_index(drop=True)
