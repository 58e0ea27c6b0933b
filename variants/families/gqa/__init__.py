"""Grouped-query attention and its settings MHA (K = N) and MQA (K = 1): one layer, three variants.

Every key it reads is universal (``kv_heads`` included) but Qwen3-Next's gated full-attention options
(``shape.py``: output gate, partial RoPE, q/k norm).
"""

from attnbench.variants.core.family import Family, ReportHints, TraceHints, VariantHints
from attnbench.variants.families.gqa.layer import GQA, GQA_SPEC, MHA, MQA, GQAConfig
from attnbench.variants.families.gqa.shape import GQAShape


def _kv_heads(row) -> int:  # noqa: ANN001 - a row mapping
    """K of the kernel: the variant's setting, not the preset's ``kv_heads`` (MHA ignores it)."""
    if row["variant"] == MHA.name:
        return int(row["heads"])
    if row["variant"] == MQA.name:
        return 1
    kv = row.get("kv_heads")
    return int(kv) if kv is not None and kv == kv else int(row["heads"])  # NaN != NaN: a missing value


FAMILY = Family(
    name="gqa",
    description="multi-head, grouped-query and multi-query attention (Ainslie et al. 2023)",
    # Report order: by KV heads, N, then K, then 1.
    variants=(MHA, GQA_SPEC, MQA),
    shape=GQAShape,
    report=ReportHints(order=10, group="dense", baseline=MHA.name, variants={
        # Okabe-Ito blue, bluish green, orange
        MHA.name: VariantHints(color="#0072B2"), GQA_SPEC.name: VariantHints(color="#009E73"),
        MQA.name: VariantHints(color="#E69F00")}),
    trace=TraceHints(op_type="gqa_dense", kv_heads=_kv_heads),
)

__all__ = ["FAMILY", "GQA", "GQAConfig", "GQAShape", "GQA_SPEC", "MHA", "MQA"]
