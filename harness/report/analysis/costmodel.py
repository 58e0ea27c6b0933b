"""Analytic sizes of a variant at a row's shape, from the ``variants`` library itself.

A layer is built on the meta device (no weights allocated) and asked for its KV bytes per token
and its parameters, so the numbers are the ones the harness measured against and work at any
context or batch, measured or not. Whole-model figures follow the model's layer schedule
(``ModelShape.layer_kinds``): a variant that says which layer each letter holds
(``VariantSpec.layer_for_kind``: swa's window and full layers, DeepSeek-V4's window-only, CSA and
HCA layers) contributes each layer's own cache layout and weights; any other variant is the same
layer ``num_layers`` times. Each layout's bytes are a function of the context (rings, compressed
entries, pages).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd
import torch

from attnbench import variants
from attnbench.harness.measure.case import DTYPES
from attnbench.harness.report.data import SHAPE_COLUMNS
from attnbench.harness.results import schema
from attnbench.variants.cache import CacheLayout
from attnbench.variants.schedule import model_layouts, model_params
from attnbench.variants.shape import ModelShape, check_choice

# The cache layout each variant needs at least: MLA caches its latent (eager, sdpa and absorbed
# all read it); "expanded" (decompressed K/V per head) is a choice of implementation, not of the variant.
PATH = "standard"


@dataclass(frozen=True)
class ModelCost:
    variant: str
    num_layers: int
    kv_bytes_per_token_layer: int
    weight_bytes_layer: int
    layout: CacheLayout  # the variant's own layer's cache: its bytes are a function of the context
    dtype: torch.dtype
    # The schedule's layers, one layout each, and their weights together; None: every layer is the
    # variant's own (``layout``, ``weight_bytes_layer``).
    layouts: tuple[CacheLayout, ...] | None = None
    schedule_weight_bytes: int | None = None

    def cache_bytes_layer(self, *, batch: int, tokens: int) -> int:
        return self.layout.nbytes(batch=batch, context=tokens, dtype=self.dtype)

    def layer_layouts(self) -> tuple[CacheLayout, ...]:
        return self.layouts if self.layouts is not None else (self.layout,) * self.num_layers

    @property
    def ring_layers(self) -> int:
        """Layers whose cache stops growing with the context (rings only: swa's window layers)."""
        return sum(not layout.growing for layout in self.layer_layouts())

    @property
    def kv_bytes_per_token_model(self) -> int:
        """Cache bytes per token over the layers: a row of each per-position field (a ring's rows
        included), the growth of each compressed one (DeepSeek-V4: entries only)."""
        return sum(layout.bytes_per_token(self.dtype) for layout in self.layer_layouts())

    def kv_bytes_layer_at(self, tokens: int) -> int:
        """One sequence's cache in one layer of the variant."""
        return self.layout.bytes_at(tokens, self.dtype)

    def kv_bytes_model_at(self, tokens: int) -> int:
        """One sequence's cache in all layers at ``tokens`` of context, honouring the layer schedule."""
        return sum(layout.bytes_at(tokens, self.dtype) for layout in self.layer_layouts())

    @property
    def weight_bytes_model(self) -> int:
        if self.schedule_weight_bytes is not None:
            return self.schedule_weight_bytes
        return self.weight_bytes_layer * self.num_layers

    def model_bytes(self, *, batch: int, tokens: int) -> int:
        """Attention weights and KV cache of all layers for ``batch`` sequences of ``tokens``."""
        if self.layouts is None:  # one layout for every layer: its own function of the context
            return self.weight_bytes_model + self.num_layers * self.cache_bytes_layer(batch=batch, tokens=tokens)
        return self.weight_bytes_model + sum(layout.nbytes(batch=batch, context=tokens, dtype=self.dtype)
                                             for layout in self.layouts)


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
    # The family keys the row's variant uses that have no column of their own (absent: their defaults).
    family = row.get("family_shape")
    if isinstance(family, str) and family:
        values.update(json.loads(family))
    return ModelShape.from_dict(values)


def model_cost(variant: str, shape: ModelShape, dtype: str) -> ModelCost:
    check_choice("dtype", dtype, tuple(DTYPES))
    return _cost(variant, shape, dtype)


@lru_cache(maxsize=256)
def _cost(variant: str, shape: ModelShape, dtype: str) -> ModelCost:
    torch_dtype = DTYPES[dtype]
    layer = variants.build(variant, shape, dtype=torch_dtype, device="meta")
    weights = sum(p.numel() for p in layer.parameters()) * torch_dtype.itemsize
    layouts, schedule_weights = None, None
    if variants.VARIANTS.get(variant).layer_for_kind is not None:  # the schedule's letters, each its own layer
        layouts = model_layouts(variant, shape, path=PATH)
        schedule_weights = model_params(variant, shape) * torch_dtype.itemsize
    return ModelCost(variant, shape.num_layers, layer.kv_bytes_per_token(PATH, torch_dtype), weights,
                     layer.cache_layout(PATH), torch_dtype, layouts, schedule_weights)
