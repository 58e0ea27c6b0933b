"""Gated DeltaNet (Qwen3-Next's linear-attention layers): one folder, registered as variant ``gdn``.

- ``layer.py``: the layer (``GDN``) and the base every delta-rule layer shares (``DeltaRuleLayer``);
- ``rule.py``: the gated delta rule, recurrent and chunked, and the kernel protocol fla plugs into;
- ``state.py``: the fixed-size state cache (``StateCache``, ``StateLayout``);
- ``cost.py``: FLOPs, bytes and parameters beside the math, ``state_bytes_per_sequence``;
- ``hf.py``: ``from_hf`` for transformers' ``Qwen3NextGatedDeltaNet``;
- ``shape.py``: the shape keys (``LinearShape``, HF config names) and the numerics gate's reduction.
"""

from __future__ import annotations

from attnbench.variants.core.family import Family, ReportHints, VariantHints
from attnbench.variants.families.gdn import hf
from attnbench.variants.families.gdn.layer import GDN, GDNConfig
from attnbench.variants.families.gdn.shape import LinearShape, reduce_linear
from attnbench.variants.layer import AttentionLayer
from attnbench.variants.registry import VARIANTS, register_variant
from attnbench.variants.shape import AttentionKind, ModelShape
from attnbench.variants.variant import VariantSpec

SHAPE_KEYS: tuple[str, ...] = ("hidden", "heads", "head_dim", "linear_num_key_heads", "linear_num_value_heads",
                               "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim", "kv_dtype")


def config_from_shape(shape: ModelShape) -> GDNConfig:
    """The linear layer of ``shape`` (``_validate`` first): its key heads, value heads (else the key heads),
    dims (else head_dim)."""
    key_heads = shape.linear_num_key_heads
    k_dim = shape.linear_key_head_dim or shape.head_dim
    return GDNConfig(hidden=shape.hidden, key_heads=key_heads, value_heads=shape.linear_num_value_heads or key_heads,
                     k_dim=k_dim, v_dim=shape.linear_value_head_dim or k_dim, conv_kernel=shape.linear_conv_kernel_dim,
                     kv_dtype=shape.kv_dtype)


def _validate(shape, variant: str) -> str | None:  # noqa: ANN001 - a ModelShape
    if shape.linear_num_key_heads is None:
        return (f"variant={variant} needs linear_num_key_heads in the model shape; {shape.name} has none (presets "
                "with the linear keys: qwen3_next_80b_a3b, kimi_linear_48b_a3b)")
    key = shape.linear_num_key_heads
    value = shape.linear_num_value_heads or key
    if value % key:
        return (f"variant={variant} needs linear_num_value_heads a multiple of linear_num_key_heads; {shape.name} has "
                f"{value} and {key}")
    return None


def make(shape: ModelShape, attention: AttentionKind) -> GDN:
    if attention != "self":
        raise ValueError(f"attention={attention!r} is not allowed for gdn: a linear-attention layer is self only")
    reason = _validate(shape, "gdn")
    if reason is not None:
        raise ValueError(reason)
    return GDN(config_from_shape(shape))


def layer_for_kind(shape: ModelShape, kind: str, attention: AttentionKind = "self") -> AttentionLayer:
    """The layer a letter of a hybrid schedule holds: F Qwen3-Next's full attention (the gqa variant at
    the shape), any other letter this linear layer."""
    return VARIANTS.get("gqa").make(shape, attention) if kind == "F" else make(shape, attention)


GDN_SPEC = register_variant(VariantSpec(
    "gdn", GDN, "Gated DeltaNet (Qwen3-Next): gated delta rule, per-head decay, fixed-size state", make, SHAPE_KEYS,
    layer_for_kind=layer_for_kind))


FAMILY = Family(
    name="gdn",
    description="Gated DeltaNet (Qwen3-Next's linear attention)",
    variants=(GDN_SPEC,),
    shape=LinearShape,
    reduce=reduce_linear,
    reference_impl="eager",  # the recurrent form
    validate=_validate,
    # Okabe-Ito's colours are spent: a darkened green, apart from them and from kda's grey in greyscale.
    report=ReportHints(order=70, group="linear", variants={GDN_SPEC.name: VariantHints(color="#4B6E2E")}),
    from_hf={name: hf.from_hf for name in hf.HF_CLASSES},
)
