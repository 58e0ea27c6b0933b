"""A model's layers by its schedule: which layer each letter of ``ModelShape.layer_kinds`` holds.

A variant whose models mix layer kinds (swa: window and full layers; DeepSeek-V4: window-only, CSA
and HCA layers) says which layer a letter holds (``VariantSpec.layer_for_kind``); any other variant
is its one layer ``num_layers`` times. Whole-model figures (KV bytes, weights) sum the schedule's
layers, each with its own cache layout, so a window layer costs its ring and a compressed layer its
entries, never ``tokens x bytes per token`` of one layer.
"""

from __future__ import annotations

import torch

from attnbench.variants.build import build
from attnbench.variants.cache import CacheLayout
from attnbench.variants.layer import AttentionLayer
from attnbench.variants.registry import VARIANTS
from attnbench.variants.shape import AttentionKind, ModelShape


def layers_by_kind(variant: str, shape: ModelShape, *, attention: AttentionKind = "self",
                   dtype: torch.dtype = torch.float32) -> dict[str, AttentionLayer]:
    """One layer per distinct letter of the schedule, on the meta device (no weights allocated);
    a variant without a schedule: its one layer under every letter."""
    spec = VARIANTS.get(variant)
    kinds = sorted(set(shape.layer_kinds()))
    if spec.layer_for_kind is None:
        layer = build(variant, shape, attention=attention, dtype=dtype, device="meta")
        return dict.fromkeys(kinds, layer)
    out = {}
    for kind in kinds:
        with torch.device("meta"):
            out[kind] = spec.layer_for_kind(shape, kind, attention).to(dtype=dtype)
    return out


def model_layouts(variant: str, shape: ModelShape, *, path: str = "standard") -> tuple[CacheLayout, ...]:
    """Each layer's cache layout, in the schedule's order. ``path`` is the implementation's, which
    runs the variant's own layers; a hybrid's other layers (Qwen3-Next's gated GQA beside ``gdn``
    run ``chunked``) keep the cache their standard path stores."""
    by_kind = layers_by_kind(variant, shape)
    return tuple(_layout(by_kind[kind], path) for kind in shape.layer_kinds())


def _layout(layer: AttentionLayer, path: str) -> CacheLayout:
    return layer.cache_layout(path if path in layer.paths else "standard")


def model_kv_bytes_per_token(variant: str, shape: ModelShape, dtype: torch.dtype, *, path: str = "standard") -> int:
    """Cache bytes a token adds over all layers (a ring's rows included, compressed fields' growth)."""
    return sum(layout.bytes_per_token(dtype) for layout in model_layouts(variant, shape, path=path))


def model_params(variant: str, shape: ModelShape) -> int:
    """Attention parameters over all layers of the schedule."""
    by_kind = layers_by_kind(variant, shape)
    return sum(sum(p.numel() for p in by_kind[kind].parameters()) for kind in shape.layer_kinds())
