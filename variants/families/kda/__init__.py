"""Kimi Delta Attention (Kimi Linear's linear-attention layers): one folder, registered as variant ``kda``.

It reuses the gdn folder's delta rule, state cache and step (``attnbench.variants.families.gdn``); this folder
holds what differs: the per-channel forget gate, separate q/k/v projections, the sigmoid-gated norm
with its low-rank gate (``layer.py``), their cost and ``from_hf`` for ``KimiLinearDeltaAttention``
(``hf.py``).
"""

from __future__ import annotations

from attnbench.variants.core.family import Family, ReportHints, VariantHints
from attnbench.variants.families.gdn.shape import LinearShape, reduce_linear
from attnbench.variants.families.kda import hf
from attnbench.variants.families.kda.layer import KDA, KDAConfig
from attnbench.variants.layer import AttentionLayer
from attnbench.variants.registry import VARIANTS, register_variant
from attnbench.variants.shape import AttentionKind, ModelShape
from attnbench.variants.variant import VariantSpec

SHAPE_KEYS: tuple[str, ...] = ("hidden", "heads", "head_dim", "linear_num_key_heads", "linear_key_head_dim",
                               "linear_conv_kernel_dim", "kv_dtype")


def config_from_shape(shape: ModelShape) -> KDAConfig:
    """Heads: linear_num_key_heads (``_validate`` first); dim: linear_key_head_dim (else head_dim); values alike."""
    heads = shape.linear_num_key_heads
    dim = shape.linear_key_head_dim or shape.head_dim
    return KDAConfig(hidden=shape.hidden, key_heads=heads, value_heads=heads, k_dim=dim, v_dim=dim,
                     conv_kernel=shape.linear_conv_kernel_dim, kv_dtype=shape.kv_dtype)


def _validate(shape, variant: str) -> str | None:  # noqa: ANN001 - a ModelShape
    if shape.linear_num_key_heads is None:
        return (f"variant={variant} needs linear_num_key_heads in the model shape; {shape.name} has none (presets "
                "with the linear keys: qwen3_next_80b_a3b, kimi_linear_48b_a3b)")
    key = shape.linear_num_key_heads
    if shape.linear_num_value_heads not in (None, key):
        return (f"variant={variant} has as many value heads as key heads; {shape.name} has "
                f"linear_num_value_heads={shape.linear_num_value_heads} and {key} key heads")
    return None


def make(shape: ModelShape, attention: AttentionKind) -> KDA:
    if attention != "self":
        raise ValueError(f"attention={attention!r} is not allowed for kda: a linear-attention layer is self only")
    reason = _validate(shape, "kda")
    if reason is not None:
        raise ValueError(reason)
    return KDA(config_from_shape(shape))


def layer_for_kind(shape: ModelShape, kind: str, attention: AttentionKind = "self") -> AttentionLayer:
    """The layer a letter of a hybrid schedule holds: F Kimi Linear's MLA layer (the mla variant at the
    shape), any other letter this linear layer."""
    return VARIANTS.get("mla").make(shape, attention) if kind == "F" else make(shape, attention)


KDA_SPEC = register_variant(VariantSpec(
    "kda", KDA, "Kimi Delta Attention (Kimi Linear): gated delta rule, per-channel decay, fixed-size state", make,
    SHAPE_KEYS, layer_for_kind=layer_for_kind))


FAMILY = Family(
    name="kda",
    description="Kimi Delta Attention (Kimi Linear's linear attention)",
    variants=(KDA_SPEC,),
    shape=LinearShape,  # the same keys as gdn (value heads and dim must equal the key ones)
    reduce=reduce_linear,
    reference_impl="eager",  # the recurrent form
    validate=_validate,
    report=ReportHints(order=71, group="linear", variants={KDA_SPEC.name: VariantHints(color="#7F7F7F")}),
    from_hf={name: hf.from_hf for name in hf.HF_CLASSES},
)
