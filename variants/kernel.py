"""The inner attention kernel: the one piece an implementation swaps without touching a layer.

Legend: B batch, L queries, T visible keys, N query heads, K kv heads (N % K == 0),
E query/key dim, V value dim.

Tensors arrive in the cache's native layout ``[B, T, K, E]`` (usually strided views of the
preallocated cache, never copied by the layer), queries as ``[B, L, N, E]``; the kernel returns
``[B, L, N, V]``. Query head n reads kv head ``n // (N / K)``, the grouping GQA defines.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from variants.mask import AttnMask


class Kernel(Protocol):
    name: str
    # Whether a square causal mask must arrive as a tensor (False: the kernel applies it itself).
    dense_causal: bool

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        """Whether the kernel builds the [B, N, L, T] score matrix (for memory prediction)."""
        ...

    def __call__(self, q_BLNE: Tensor, k_BTKE: Tensor, v_BTKV: Tensor, *, scale: float,
                 mask: AttnMask) -> Tensor: ...
