"""Analytic sizes of a variant at a row's shape, from the ``variants`` library itself.

A layer is built on the meta device (no weights allocated) and asked for its KV bytes per token
and its parameters, so the numbers are the ones the harness measured against and work at any
context or batch, measured or not. Whole-model figures multiply one layer by ``num_layers``: the
layers of a decoder are identical in attention shape, and the cache holds one entry per layer, except
that a window layer of swa (``ModelShape.layer_windows``) holds at most its ring of positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd
import torch

import variants
from harness.measure.case import DTYPES
from harness.report.data import SHAPE_COLUMNS
from harness.results import schema
from variants.cache import CacheLayout
from variants.shape import ModelShape, check_choice

# The cache layout each variant needs at least: MLA caches its latent (eager, sdpa and absorbed
# all read it); "expanded" (decompressed K/V per head) is a choice of implementation, not of the variant.
PATH = "standard"


@dataclass(frozen=True)
class ModelCost:
    variant: str
    num_layers: int
    kv_bytes_per_token_layer: int
    weight_bytes_layer: int
    layout: CacheLayout  # one layer's cache: its bytes are a function of the context (rings, pages)
    dtype: torch.dtype

    def cache_bytes_layer(self, *, batch: int, tokens: int) -> int:
        return self.layout.nbytes(batch=batch, context=tokens, dtype=self.dtype)
    # Layers whose cache is a ring of ``ring_positions`` rows (swa's window layers in the model's
    # schedule): they cost at most that many positions, not the context.
    ring_layers: int = 0
    ring_positions: int = 0

    @property
    def kv_bytes_per_token_model(self) -> int:
        return self.kv_bytes_per_token_layer * self.num_layers

    def kv_bytes_layer_at(self, tokens: int) -> int:
        """One sequence's cache in one layer of the variant (a window layer when it has a ring)."""
        return self.kv_bytes_per_token_layer * (min(tokens, self.ring_positions) if self.ring_layers else tokens)

    def kv_bytes_model_at(self, tokens: int) -> int:
        """One sequence's cache in all layers at ``tokens`` of context, honouring the layer schedule."""
        growing = (self.num_layers - self.ring_layers) * tokens
        return self.kv_bytes_per_token_layer * (growing + self.ring_layers * min(tokens, self.ring_positions))

    @property
    def weight_bytes_model(self) -> int:
        return self.weight_bytes_layer * self.num_layers

    def model_bytes(self, *, batch: int, tokens: int) -> int:
        """Attention weights and KV cache of all layers for ``batch`` sequences of ``tokens``."""
        if not self.ring_layers:  # one layout for every layer: its own function of the context
            return self.weight_bytes_model + self.num_layers * self.cache_bytes_layer(batch=batch, tokens=tokens)
        # A schedule: the window layers hold their ring, the others every position.
        return self.weight_bytes_model + batch * self.kv_bytes_model_at(tokens)


def shape_of(row: pd.Series | dict) -> ModelShape:
    """The ``ModelShape`` a row was measured at (its resolved shape columns)."""
    values: dict[str, object] = {}
    for key in SHAPE_COLUMNS:
        value = row.get(key)
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            continue  # the field's default: null kv_heads means heads; rows before rope_* had the defaults
        kind = schema.BY_NAME[key].kind
        values[key] = int(value) if kind == "int64" else float(value) if kind == "float64" else (
            bool(value) if kind == "bool" else str(value))
    return ModelShape.from_dict(values)


def model_cost(variant: str, shape: ModelShape, dtype: str) -> ModelCost:
    check_choice("dtype", dtype, tuple(DTYPES))
    return _cost(variant, shape, dtype)


@lru_cache(maxsize=256)
def _cost(variant: str, shape: ModelShape, dtype: str) -> ModelCost:
    torch_dtype = DTYPES[dtype]
    layer = variants.build(variant, shape, dtype=torch_dtype, device="meta")
    weights = sum(p.numel() for p in layer.parameters()) * torch_dtype.itemsize
    # A bounded layout (a ring) applies to the schedule's window layers; the others grow with the context.
    unbounded = 2 ** 62
    rows = layer.cache_layout(PATH).positions(unbounded)
    ring_layers = sum(w is not None for w in shape.layer_windows()) if rows < unbounded else 0
    return ModelCost(variant, shape.num_layers, layer.kv_bytes_per_token(PATH, torch_dtype), weights,
                     layer.cache_layout(PATH), torch_dtype, ring_layers, rows if ring_layers else 0)
