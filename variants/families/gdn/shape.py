"""The linear-attention shape keys (HF config names), declared once for gdn and kda alike."""

from __future__ import annotations

from dataclasses import dataclass

from attnbench.variants.core.family import shape_field
from attnbench.variants.shape import check_positive


@dataclass(frozen=True)
class LinearShape:
    linear_num_key_heads: int | None = shape_field(
        None, meaning="gdn/kda key heads (null: no linear layer; gdn and kda need it)")
    linear_num_value_heads: int | None = shape_field(None, meaning="gdn value heads, one state each (null: the "
                                                     "key heads; kda: equal to them)")
    linear_key_head_dim: int | None = shape_field(None, meaning="gdn/kda key head dim d_k (null: head_dim)")
    linear_value_head_dim: int | None = shape_field(None, meaning="gdn value head dim d_v (null: the key head dim)")
    linear_conv_kernel_dim: int = shape_field(4, meaning="gdn/kda short causal convolution's kernel over q, k, v")

    def __post_init__(self) -> None:
        for name in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim"):
            check_positive(name, getattr(self, name), optional=True)
        check_positive("linear_conv_kernel_dim", self.linear_conv_kernel_dim)


def reduce_linear(shape) -> dict[str, object]:  # noqa: ANN001 - a ModelShape
    """At most 2 key heads of at most 2 value heads each (GDN's grouping kept); head dims and the
    kernel define the math and stay."""
    if shape.linear_num_key_heads is None:
        return {}  # the key heads are the (already reduced) heads
    key = shape.linear_num_key_heads
    group = (shape.linear_num_value_heads or key) // key
    small = min(key, 2)
    return {"linear_num_key_heads": small,
            "linear_num_value_heads": None if shape.linear_num_value_heads is None else small * min(group, 2)}
