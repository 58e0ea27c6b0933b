"""How long a context each variant fits in a memory budget, from the cost model, per batch size.

For a model of ``num_layers`` attention layers at the rows' shape and dtype, the longest context is
the largest L with

    weights + num_layers * cache_bytes(batch, L)  <=  (1 - reserve) * budget

where ``cache_bytes`` follows the model's layer schedule, each layer's own layout
(``ModelCost.model_bytes``): ``batch * L * kv_bytes_per_token`` for a layer that keeps every
position, at most its ring of ``W`` positions for a sliding-window layer, one entry per m tokens
beside a fixed window and state for DeepSeek-V4's compressed layers. It never decreases in L, so L
is found by bisection.
``weights`` are the attention layers' own parameters (``num_layers`` times one layer's): the rest of
a model (MLP, embeddings) is not in the cost model, so pass a smaller budget to leave room for it.
``reserve`` (default 10%) is the allowance for activations, allocator fragmentation and the CUDA
context, the share vLLM also holds back by default (``gpu_memory_utilization=0.9``); a decode
step's activations are a few rows of the batch, small beside the cache at long contexts.
KV bytes per token are those of the variant's own cache (MLA: the latent ``d_c + d_r``).

Beside each estimate, where decode cases of that variant and batch were measured, the table puts
the leanest implementation's measured peak (one layer) at the longest measured context, and the
cost model's one-layer weights + cache at that context, so the two can be compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from attnbench.harness.report.analysis.costmodel import ModelCost, model_cost, shape_of
from attnbench.harness.report.data import DEVICE, SHAPE_COLUMNS
from attnbench.harness.report.order import variant_sort_key

RESERVE = 0.10
MAX_CONTEXT = 2 ** 40  # tokens: the answer for a cache whose size stops growing with the context
DEFAULT_BATCHES = (1, 8, 64)
GROUP = (DEVICE, "model", *SHAPE_COLUMNS, "dtype")


def longest_context(cost: ModelCost, *, batch: int, budget_bytes: int, reserve: float = RESERVE) -> int:
    """The closed form above; 0 when the weights alone exceed the usable budget."""
    if not 0 <= reserve < 1:
        raise ValueError(f"reserve={reserve!r} is not allowed: it must be in [0, 1)")
    if batch <= 0:
        raise ValueError(f"batch={batch!r} is not allowed: it must be a positive integer")
    usable = (1 - reserve) * budget_bytes

    def fits(tokens: int) -> bool:
        return cost.model_bytes(batch=batch, tokens=tokens) <= usable

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):
        if high >= MAX_CONTEXT:  # a cache that stops growing (rings only) fits any context: say the cap
            return MAX_CONTEXT
        low, high = high, high * 2
    while high - low > 1:  # fits(low), not fits(high)
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def largest_batch(cost: ModelCost, *, tokens: int, budget_bytes: int, reserve: float = RESERVE) -> int:
    """The largest batch of sequences of ``tokens`` cache positions whose attention weights and cache
    of all layers fit ``(1 - reserve) * budget_bytes``; 0 when not even one does."""
    if not 0 <= reserve < 1:
        raise ValueError(f"reserve={reserve!r} is not allowed: it must be in [0, 1)")
    usable = (1 - reserve) * budget_bytes

    def fits(batch: int) -> bool:
        return cost.model_bytes(batch=batch, tokens=tokens) <= usable

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):
        if high >= MAX_CONTEXT:  # a cache that holds nothing per sequence: any batch fits; say the cap
            return MAX_CONTEXT
        low, high = high, high * 2
    while high - low > 1:  # fits(low), not fits(high)
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def capacity_table(rows: pd.DataFrame, ok: pd.DataFrame, *, budget_bytes: int | None,
                   batches: Sequence[int] | None = None, reserve: float = RESERVE) -> tuple[pd.DataFrame, list[str]]:
    """One row per device, shape, variant and batch. ``rows``: every row (their shapes and variants);
    ``ok``: measured rows; ``budget_bytes`` None: each GPU's own memory (``device_mem_total_bytes``); CPU
    rows then have no capacity, only a note that says how to give a budget."""
    notes: list[str] = []
    if rows.empty:
        return pd.DataFrame(), notes
    batch_list = sorted(set(batches) if batches else set(DEFAULT_BATCHES) | set(ok.get("batch", pd.Series()).dropna()
                                                                                 .astype(int)))
    out = []
    for key, group in rows.groupby(list(GROUP), dropna=False, sort=True):
        where = dict(zip(GROUP, key, strict=True))
        budget = budget_bytes if budget_bytes is not None else device_memory(group)
        if budget is None:
            notes.append(f"Capacity on {where[DEVICE]} is left out: {NO_BUDGET}; {HOW_TO_BUDGET}.")
            continue
        shape = shape_of(group.iloc[0])
        for variant in sorted(group["variant"].unique(), key=variant_sort_key):
            cost = model_cost(variant, shape, str(where["dtype"]))
            for batch in batch_list:
                out.append({DEVICE: where[DEVICE], "model": where["model"], "dtype": where["dtype"],
                            "num_layers": shape.num_layers, "variant": variant, "batch": batch,
                            "budget_bytes": budget, "reserve": reserve,
                            "weight_bytes_model": cost.weight_bytes_model,
                            "kv_bytes_per_token_model": cost.kv_bytes_per_token_model,
                            "window_layers": cost.ring_layers,
                            "max_context_tokens": longest_context(cost, batch=batch, budget_bytes=budget,
                                                                  reserve=reserve),
                            **_measured(ok, where, variant, batch, cost)})
    if budget_bytes is None and out:
        notes.append("Capacity budget: each GPU's own memory.")
    return pd.DataFrame(out), notes


def device_memory(rows: pd.DataFrame) -> int | None:
    """The accelerator's total memory as the rows record it; None for CPU rows (and rows that record
    none): the host's RAM is no budget anyone runs attention in (it proposed batch=172210 and
    million-token contexts), so a CPU budget must be given with ``--budget``."""
    on_device = ~rows.get("device", pd.Series("", index=rows.index)).astype(str).str.startswith("cpu")
    values = pd.to_numeric(rows.loc[on_device].get("device_mem_total_bytes"), errors="coerce").dropna()
    return int(values.max()) if not values.empty else None


NO_BUDGET = "no memory budget (CPU rows only get a given one: the host's RAM is no budget anyone runs attention in)"
HOW_TO_BUDGET = "give one with --budget (e.g. --budget 16GiB)"


def _measured(ok: pd.DataFrame, where: dict, variant: str, batch: int, cost: ModelCost) -> dict[str, object]:
    empty = {"measured_seq": None, "measured_impl": None, "measured_peak_bytes": None,
             "model_bytes_layer_at_measured_seq": None}
    if ok.empty:
        return empty
    mask = (ok["variant"] == variant) & (ok["batch"] == batch) & (ok["phase"] == "decode")
    for column, value in where.items():
        mask &= ok[column].isna() if _missing(value) else ok[column] == value
    rows = ok[mask & ok["peak_mem_bytes"].notna()]
    if rows.empty:
        return empty
    longest = rows[rows["seq"] == rows["seq"].max()]
    lean = longest.loc[longest["peak_mem_bytes"].astype(float).idxmin()]
    tokens = int(lean["seq"]) + int(lean["decode_len"])  # the cache is allocated for the new tokens too
    model_bytes = cost.weight_bytes_layer + cost.cache_bytes_layer(batch=batch, tokens=tokens)
    return {"measured_seq": int(lean["seq"]), "measured_impl": lean["impl"],
            "measured_peak_bytes": int(lean["peak_mem_bytes"]), "model_bytes_layer_at_measured_seq": model_bytes}


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
