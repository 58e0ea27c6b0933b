"""The lightning indexer's shape keys (DeepSeek-V3.2), shared by DeepSeek-V4's CSA layers."""

from __future__ import annotations

from dataclasses import dataclass

from attnbench.variants.core.family import shape_field
from attnbench.variants.families.mla.shape import MLAShape, check_latent
from attnbench.variants.shape import check_positive


@dataclass(frozen=True)
class IndexerShape:
    index_heads: int = shape_field(64, meaning="lightning indexer heads (dsa, csa)", column=True)
    index_head_dim: int = shape_field(128, meaning="lightning indexer head dim (dsa, csa)", column=True)
    index_topk: int = shape_field(2048, meaning="tokens (dsa) or compressed entries (csa) each query attends to", column=True)

    def __post_init__(self) -> None:
        check_indexer(self)


def check_indexer(shape: IndexerShape) -> None:
    for name in ("index_heads", "index_head_dim", "index_topk"):
        check_positive(name, getattr(shape, name))


@dataclass(frozen=True)
class DSAShape(MLAShape, IndexerShape):
    def __post_init__(self) -> None:
        check_latent(self)
        check_indexer(self)


def reduce_indexer(shape) -> dict[str, object]:  # noqa: ANN001 - a ModelShape
    """An indexer keeping at most 8 of the numerics gate's 24 tokens, so that its selection is exercised
    (8 or fewer tokens would select everything); at most 16 heads, enough that a score is exactly 0 (every
    head's ReLU at its floor, a tie round-off cannot order) 2^-16 of the time."""
    return {"index_topk": min(shape.index_topk, 8), "index_heads": min(shape.index_heads, 16)}
