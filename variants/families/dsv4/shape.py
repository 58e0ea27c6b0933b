"""DeepSeek-V4's shape keys: MLA's, the indexer's and the window's, plus compression and grouped output."""

from __future__ import annotations

import math
from dataclasses import dataclass

from attnbench.variants.core.family import shape_field
from attnbench.variants.families.dsa.shape import IndexerShape, check_indexer, reduce_indexer
from attnbench.variants.families.mla.shape import MLAShape, check_latent
from attnbench.variants.families.swa.shape import WindowShape, check_window, reduce_window
from attnbench.variants.shape import check_positive, check_theta


@dataclass(frozen=True)
class DSV4Shape(MLAShape, IndexerShape, WindowShape):
    csa_rate: int = shape_field(4, unit="tokens", meaning="CSA: tokens per compressed entry", column=True)
    hca_rate: int = shape_field(128, unit="tokens", meaning="HCA: tokens per compressed entry", column=True)
    o_groups: int | None = shape_field(None, meaning="groups of the grouped output projection (null: one projection)", column=True)
    o_rank: int | None = shape_field(None, meaning="rank of each output group (null: none)", column=True)
    compress_rope_theta: float | None = shape_field(None, meaning="RoPE base of compressed layers (null: rope_theta)", column=True)

    def __post_init__(self) -> None:
        check_latent(self)
        check_indexer(self)
        check_window(self)
        for name in ("csa_rate", "hca_rate"):
            check_positive(name, getattr(self, name))
        for name in ("o_groups", "o_rank"):
            check_positive(name, getattr(self, name), optional=True)
        if self.compress_rope_theta is not None:
            check_theta("compress_rope_theta", self.compress_rope_theta)


def reduce_dsv4(shape) -> dict[str, object]:  # noqa: ANN001 - a ModelShape, its heads already reduced
    """Output groups that divide the fewer heads, a smaller rank, and compression rates that divide the
    shorter window (HCA's 128 becomes 8: the gate's 24 tokens close three entries); the window's and the
    indexer's own reductions."""
    changes: dict[str, object] = {**reduce_indexer(shape), **reduce_window(shape)}
    if shape.o_groups is not None:
        changes["o_groups"] = math.gcd(shape.o_groups, shape.heads)
    if shape.o_rank is not None:
        changes["o_rank"] = min(shape.o_rank, 32)
    window = changes.get("sliding_window")
    if window is not None:
        changes.update(csa_rate=math.gcd(shape.csa_rate, window), hca_rate=math.gcd(shape.hca_rate, window))
    return changes
