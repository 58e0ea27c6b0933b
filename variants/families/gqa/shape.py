"""GQA's own shape keys: Qwen3-Next's gated full-attention layer (transformers' ``Qwen3NextAttention``).

Every other key GQA reads is universal (``kv_heads`` included).
"""

from __future__ import annotations

from dataclasses import dataclass

from attnbench.variants.core.family import shape_field
from attnbench.variants.shape import check_choice

QK_NORMS: tuple[str, ...] = ("none", "rms", "zero_centered")


@dataclass(frozen=True)
class GQAShape:
    attn_output_gate: bool = shape_field(False, meaning="gqa: sigmoid output gate from the query projection "
                                                        "(Qwen3-Next)")
    partial_rotary_factor: float = shape_field(1.0, meaning="gqa: fraction of head_dim that RoPE rotates "
                                                            "(Qwen3-Next: 0.25)")
    qk_norm: str = shape_field("none", meaning="gqa: RMSNorm of each q and k head: none, rms (w) or "
                                               "zero_centered (1 + w, Qwen3-Next)")

    def __post_init__(self) -> None:
        check_choice("qk_norm", self.qk_norm, QK_NORMS)
        if isinstance(self.partial_rotary_factor, bool) or not 0 < self.partial_rotary_factor <= 1:
            raise ValueError(f"partial_rotary_factor={self.partial_rotary_factor!r} is not allowed: it must be in "
                             "(0, 1]")
