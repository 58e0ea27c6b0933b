"""One interface for every low-rank method: ``W ≈ up @ down`` at a given rank.

Legend: O rows of the matrix (output channels), D its columns (hidden, the input), Q the rank,
T calibration tokens.

A method is one file in ``variants/convert/methods/`` that registers a ``LowRankMethod``; other
packages add theirs through the ``attnbench.lowrank_methods`` entry point, as implementations do.
Methods receive float64 tensors and return float64 factors; data-aware ones also get the
calibration activations ``X_TD`` (rows are the inputs the matrix multiplies: ``y = W x``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from attnbench.variants.registry import Registry


class Factorize(Protocol):
    def __call__(self, W_OD: Tensor, rank: int, *, X_TD: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(up_OQ, down_QD)`` with ``up_OQ @ down_QD`` of rank at most ``rank`` approximating ``W_OD``."""
        ...


@dataclass(frozen=True)
class LowRankMethod:
    name: str
    description: str
    factorize: Factorize
    uses_data: bool = False  # needs X_TD: it minimises the error on activations, not on weights

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"method name {self.name!r} is not allowed: use a Python identifier")


METHODS: Registry = Registry("low-rank method", package="attnbench.variants.convert.methods",
                             entry_point_group="attnbench.lowrank_methods")


def register_method(method: LowRankMethod) -> LowRankMethod:
    return METHODS.add(method.name, method)


def method_names() -> list[str]:
    return METHODS.names()
