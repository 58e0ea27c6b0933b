"""MLA's shape keys (DeepSeek-V2 section 2.1), shared as they are by dsa and DeepSeek-V4's layers."""

from __future__ import annotations

from dataclasses import dataclass

from attnbench.variants.core.family import shape_field
from attnbench.variants.shape import check_positive


@dataclass(frozen=True)
class MLAShape:
    d_c: int = shape_field(512, meaning="MLA latent c_kv width", column=True)  # DeepSeek-V2: 4 * d_h
    d_r: int = shape_field(64, meaning="MLA decoupled RoPE width", column=True)  # DeepSeek-V2: d_h / 2
    q_rank: int | None = shape_field(None, meaning="MLA query compression rank (null: plain query projection)", column=True)
    nope_head_dim: int | None = shape_field(None, meaning="MLA qk_nope_head_dim (null: head_dim)", column=True)
    v_head_dim: int | None = shape_field(None, meaning="MLA v_head_dim (null: head_dim)", column=True)
    mla_use_nope: bool = shape_field(False, meaning="mla: no RoPE on the decoupled query and key dims (Kimi Linear)")

    def __post_init__(self) -> None:
        check_latent(self)


def check_latent(shape: MLAShape) -> None:
    for name in ("d_c", "d_r"):
        check_positive(name, getattr(shape, name))
    for name in ("q_rank", "nope_head_dim", "v_head_dim"):
        check_positive(name, getattr(shape, name), optional=True)
