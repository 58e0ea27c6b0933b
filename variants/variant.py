"""A named variant: a family plus the settings that make it (MHA is GQA with K = N)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from attnbench.variants.layer import AttentionLayer
from attnbench.variants.shape import AttentionKind, ModelShape


@dataclass(frozen=True)
class VariantSpec:
    name: str
    family: type[AttentionLayer]
    description: str
    # Builds the layer (default init, float32, current default device) from a model shape.
    make: Callable[[ModelShape, AttentionKind], AttentionLayer]
    # Shape keys this variant reads; a sweep over any other key leaves it unchanged.
    uses: tuple[str, ...]
    # The layer a letter of the model's schedule (``ModelShape.layer_kinds``) holds for this variant,
    # for whole-model figures (swa: its window layers and full layers); None: every layer is ``make``'s.
    layer_for_kind: Callable[[ModelShape, str, AttentionKind], AttentionLayer] | None = None
