"""Decode throughput at a memory budget: each variant at the largest batch whose whole model fits.

DeepSeek-V2 (arXiv:2405.04434, section 3.2.3) reports 5.76x the maximum generation throughput of
DeepSeek 67B: in a fixed memory a smaller KV cache holds more sequences, and a decode step over more
sequences emits more tokens. For a budget and a context (one decode setting of the rows), per variant:

    batch     = the largest B with  attention weights + KV cache of all layers at B sequences of
                context + new tokens  <=  (1 - reserve) * budget          (capacity.largest_batch)
    latency   = one layer's measured decode step at that batch, by the fastest implementation whose
                cache is the variant's own (MLA's latent, not ``expanded``'s per-head K/V); where that
                batch was not measured, interpolated linearly in batch between the two measured
                batches around it (a decode step reads the weights once and each sequence's cache,
                so its time is close to affine in the batch) and marked "interpolated"
    tokens/s  = batch * new tokens per step / (latency * num_layers)

Every layer is taken to take the measured layer's time, except in a hybrid (gdn, kda: a schedule whose
full layers are another variant's, gqa or mla, measured in the same setting): there the step is the sum
over the schedule of each kind's measured step (Qwen3-Next: 36 Gated DeltaNet steps and 12 gated GQA
steps), each kind by its fastest implementation at the batch, over the batches every kind measured. The
MLP, embeddings and output head are neither timed nor counted in memory (as in ``capacity``). A batch
outside the measured range is never extrapolated: the row says which batch to add to the sweep.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from attnbench.harness.report.analysis.capacity import HOW_TO_BUDGET, NO_BUDGET, device_memory, largest_batch
from attnbench.harness.report.analysis.costmodel import ModelCost, model_cost, shape_of
from attnbench.harness.report.data import CASE_COLUMNS, DEVICE, SHAPE_COLUMNS
from attnbench.harness.report.order import impl_sort_key, variant_sort_key
from attnbench.variants.registry import VARIANTS
from attnbench.variants.shape import ModelShape

# A decode setting: everything but the batch (and what is compared: variant, implementation, compile mode;
# family_shape holds only the keys its row's variant uses, so variants at one model differ there).
SETTING = (DEVICE, *(c for c in (*CASE_COLUMNS, *SHAPE_COLUMNS)
                     if c not in ("variant", "impl", "compile", "batch", "family_shape", DEVICE)))
MEASURED, INTERPOLATED = "measured", "interpolated"


@dataclass(frozen=True)
class Ladder:
    """One implementation's measured decode steps of a variant at one setting, by batch."""

    impl: str
    compile: str
    batches: np.ndarray  # increasing
    latency_ms: np.ndarray

    def latency_at(self, batch: int) -> tuple[float, str, int, int] | None:
        """(latency, measured or interpolated, the batches below and above); None outside the ladder."""
        if not self.batches[0] <= batch <= self.batches[-1]:
            return None
        hit = np.flatnonzero(self.batches == batch)
        if hit.size:
            return float(self.latency_ms[hit[0]]), MEASURED, batch, batch
        high = int(np.searchsorted(self.batches, batch))
        b0, b1 = int(self.batches[high - 1]), int(self.batches[high])
        t0, t1 = float(self.latency_ms[high - 1]), float(self.latency_ms[high])
        return t0 + (t1 - t0) * (batch - b0) / (b1 - b0), INTERPOLATED, b0, b1

    @property
    def label(self) -> str:
        return self.impl if self.compile == "none" else f"{self.impl} (compile {self.compile})"


@dataclass(frozen=True)
class VariantAtSetting:
    """A variant's ladders at one decode setting, and the cost model that sizes its batches."""

    variant: str
    cost: ModelCost
    tokens: int  # cache positions per sequence: the context and the step's new tokens
    new_tokens: int  # per sequence per step
    ladders: tuple[Ladder, ...]

    def tokens_per_s(self, batch: int, latency_ms: float) -> float:
        return batch * self.new_tokens / (latency_ms / 1e3 * self.cost.num_layers)

    def budget_for(self, batch: int, reserve: float) -> float:
        """The smallest budget in which ``batch`` sequences fit: the inverse of ``largest_batch``."""
        return self.cost.model_bytes(batch=batch, tokens=self.tokens) / (1 - reserve)

    def best_at(self, batch: int) -> tuple[Ladder, tuple[float, str, int, int]] | None:
        """The fastest implementation whose ladder reaches ``batch``."""
        found = [(ladder, at) for ladder in self.ladders if (at := ladder.latency_at(batch)) is not None]
        return min(found, key=lambda item: item[1][0]) if found else None

    @property
    def measured_range(self) -> tuple[int, int]:
        return (min(int(lad.batches[0]) for lad in self.ladders), max(int(lad.batches[-1]) for lad in self.ladders))


def settings(ok: pd.DataFrame) -> Iterator[tuple[dict[str, object], pd.DataFrame]]:
    """Each decode setting of measured rows with at least two batches in one implementation's ladder."""
    decode = ok[(ok["phase"] == "decode") & ok["latency_ms"].notna()] if not ok.empty else ok
    if decode.empty:
        return
    keys = [c for c in SETTING if c in decode.columns]
    for key, rows in decode.groupby(keys, dropna=False, sort=True):
        if rows.groupby(["variant", "impl", "compile"])["batch"].nunique().max() >= 2:
            yield dict(zip(keys, key, strict=True)), rows


def variants_of(rows: pd.DataFrame) -> tuple[list[VariantAtSetting], list[str]]:
    """The variants of one setting's rows with their ladders; notes on implementations left out
    because their cache is not the variant's own (their footprint is not what the budget sizes)."""
    out, notes = [], []
    first = rows.iloc[0]
    new_tokens = int(first["decode_len"]) if pd.notna(first.get("decode_len")) else 1
    shapes: dict[str, ModelShape] = {}
    for variant in sorted(rows["variant"].unique(), key=variant_sort_key):
        mine = rows[rows["variant"] == variant]
        # The variant's own rows: family_shape holds the keys it uses (a gdn row its linear keys).
        shapes[variant] = shape_of(mine.iloc[0])
        cost = model_cost(variant, shapes[variant], str(first["dtype"]))
        own = pd.to_numeric(mine.get("kv_bytes_per_token"), errors="coerce") == cost.kv_bytes_per_token_layer
        other = sorted(mine.loc[~own, "impl"].unique(), key=impl_sort_key)
        if other:
            notes.append(f"{variant}: {', '.join(other)} left out of the throughput at the budget: its cache differs "
                         f"from {variant}'s own, {cost.kv_bytes_per_token_layer:,} bytes per token and layer.")
        ladders = []
        for (impl, compile_mode), group in mine[own].groupby(["impl", "compile"], sort=False):
            group = group.groupby("batch")["latency_ms"].median().sort_index()
            ladders.append(Ladder(str(impl), str(compile_mode), group.index.to_numpy(dtype=int),
                                  group.to_numpy(dtype=float)))
        if ladders:
            ladders.sort(key=lambda lad: (impl_sort_key(lad.impl), lad.compile))
            out.append(VariantAtSetting(variant, cost, int(first["seq"]) + new_tokens, new_tokens, tuple(ladders)))
    by_variant = {v.variant: v.ladders for v in out}
    for i, found in enumerate(out):
        layers = hybrid_layers(found.variant, shapes[found.variant])
        if not layers:
            continue
        missing = sorted(set(layers) - set(by_variant))
        if missing:
            notes.append(f"{found.variant}: its step is one {found.variant} layer's times {found.cost.num_layers}; "
                         f"measure {', '.join(missing)} in the same setting for the schedule's other layers.")
            continue
        out[i] = VariantAtSetting(found.variant, found.cost, found.tokens, found.new_tokens,
                                  (schedule_ladder(layers, by_variant),))
    return out, notes


def hybrid_layers(variant: str, shape: ModelShape) -> dict[str, int]:
    """Layers per variant in ``variant``'s schedule when it is a hybrid whose other layers are plain
    variants (gdn: {gdn: 36, gqa: 12} at Qwen3-Next's shape); {} otherwise (swa's window and full layers
    are both swa; DeepSeek-V4's csa and hca each hold the whole schedule)."""
    spec = VARIANTS.get(variant)
    if spec.layer_for_kind is None:
        return {}
    counts: dict[str, int] = {}
    for kind in shape.layer_kinds():
        with torch.device("meta"):
            held = spec.layer_for_kind(shape, kind, "self").variant
        counts[held] = counts.get(held, 0) + 1
    others = set(counts) - {variant}
    if not others or any(VARIANTS.get(v).layer_for_kind is not None for v in others):
        return {}
    return counts


def schedule_ladder(layers: dict[str, int], ladders: dict[str, tuple[Ladder, ...]]) -> Ladder:
    """The schedule's mean layer step at each batch every kind measured: sum of count x each kind's fastest
    measured step, over all layers (so ``tokens_per_s``'s latency x num_layers is the model's step)."""
    fastest = {v: pd.concat([pd.Series(lad.latency_ms, index=lad.batches) for lad in ladders[v]], axis=1).min(axis=1)
               for v in layers}
    common = sorted(set.intersection(*(set(f.index) for f in fastest.values())))
    total = sum(layers.values())
    latency = np.array([sum(n * float(fastest[v][b]) for v, n in layers.items()) / total for b in common])
    label = " + ".join(f"{n} {v}" for v, n in layers.items())
    return Ladder(f"schedule ({label})", "none", np.array(common, dtype=int), latency)


def budget_of(rows: pd.DataFrame, budget_bytes: int | None) -> int | None:
    """The budget given, else the GPU's own memory as the rows record it (None: CPU rows, or not recorded)."""
    return budget_bytes if budget_bytes is not None else device_memory(rows)


def at_budget(found: VariantAtSetting, *, budget_bytes: int, reserve: float) -> dict[str, object]:
    """One variant's row: its batch in the budget, the fastest implementation's latency there, tokens/s."""
    batch = largest_batch(found.cost, tokens=found.tokens, budget_bytes=budget_bytes, reserve=reserve)
    row: dict[str, object] = {"variant": found.variant, "batch": batch, "budget_bytes": budget_bytes,
                              "reserve": reserve, "num_layers": found.cost.num_layers,
                              "model_bytes": (found.cost.model_bytes(batch=batch, tokens=found.tokens)
                                              if batch else None),
                              "impl": None, "compile": None, "latency_ms": None, "latency_from": None,
                              "batch_low": None, "batch_high": None, "tokens_per_s": None, "reason": None}
    low, high = found.measured_range
    if batch == 0:
        row["reason"] = "the attention weights alone exceed the budget less the reserve"
        return row
    best = found.best_at(batch)
    if best is None:
        where = (f"batch {batch:,} is above the largest measured ({high:,})" if batch > high else
                 f"batch {batch:,} is below the smallest measured ({low:,})" if batch < low else
                 f"no implementation was measured at batches on both sides of {batch:,}")
        row["reason"] = f"{where}: add batch={batch} to the sweep"
        return row
    ladder, (latency, source, b0, b1) = best
    row.update(impl=ladder.impl, compile=ladder.compile, latency_ms=latency, latency_from=source,
               batch_low=b0, batch_high=b1, tokens_per_s=found.tokens_per_s(batch, latency))
    return row


def throughput_table(ok: pd.DataFrame, *, budget_bytes: int | None, reserve: float,
                     baseline_variant: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per decode setting (with a batch ladder) and variant; notes for the reader."""
    out, notes = [], []
    for where, rows in settings(ok):
        budget = budget_of(rows, budget_bytes)
        if budget is None:
            notes.append(f"Throughput at a budget on {where[DEVICE]} is left out: {NO_BUDGET}; {HOW_TO_BUDGET}.")
            continue
        found, left_out = variants_of(rows)
        notes += left_out
        table = [{**where, **at_budget(v, budget_bytes=budget, reserve=reserve)} for v in found]
        base = next((r["tokens_per_s"] for r in table if r["variant"] == baseline_variant), None)
        for r in table:
            r["vs_baseline"] = (r["tokens_per_s"] / base if base and r["tokens_per_s"] is not None else None)
            r["baseline_variant"] = baseline_variant
        out += table
    return pd.DataFrame(out), notes


def ratios(rows: pd.DataFrame) -> list[tuple[str, str, float]]:
    """(a, b, tokens/s of a / tokens/s of b) for every pair of variants of one setting with a
    throughput, a after b in the report's order (mla/mha, mla/gqa, gqa/mha, ...)."""
    have = rows.dropna(subset=["tokens_per_s"])
    order = sorted(have["variant"], key=variant_sort_key)
    rate = dict(zip(have["variant"], have["tokens_per_s"].astype(float), strict=True))
    return [(order[i], b, rate[order[i]] / rate[b]) for i in reversed(range(len(order))) for b in order[:i]]


def ratio_words(rows: pd.DataFrame, names: Sequence[str] | None = None) -> str:
    """``mla/mha 7.1×, mla/gqa 1.6×`` (pairs whose first is in ``names``, or every pair)."""
    return ", ".join(f"{a}/{b} {r:.2f}×" for a, b, r in ratios(rows) if names is None or a in names)
