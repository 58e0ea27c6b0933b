"""The inner attention kernel: the one piece an implementation swaps without touching a layer.

Legend: B batch, L queries, T visible keys, N query heads, K kv heads (N % K == 0),
E query/key dim, V value dim.

Tensors arrive in the cache's native layout ``[B, T, K, E]`` (usually strided views of the
preallocated cache, never copied by the layer), queries as ``[B, L, N, E]``; the kernel returns
``[B, L, N, V]``. Query head n reads kv head ``n // (N / K)``, the grouping GQA defines.

The mask's dense form ``keep_LT`` is ``[L, T]``, or ``[B, 1, L, T]`` in a ragged decode batch
(each sequence its own length; see ``attnbench.variants.cache``). A kernel is injected into a family's step
runner when an implementation plans (``attnbench.variants.implementation``): whatever it needs set up once
belongs in the plan, not in ``__call__``.

A kernel with ``learned_sinks = True`` also takes ``sinks_N``, one logit per query head that joins
the softmax as a column with no value (gpt-oss); a layer with sinks refuses any other kernel, and a
kernel without the attribute is taken not to apply them. A kernel with ``takes_step_mask = False``
applies only a mask it was given at set-up (flex's ``BlockMask``), not ``mask.keep_LT`` built in the
step (DeepSeek-V4's per-query entry picks, the tokens DeepSeek-V3.2's indexer selects); without the
attribute it is taken to apply it.

MLA's absorbed path hands its kernel other pieces (the latent query, the cache as a view): its
protocols, ``MLAKernel`` and ``SparseMLAKernel``, are the family's (``attnbench.variants.families.mla.kernel``).
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from attnbench.variants.mask import AttnMask


class Kernel(Protocol):
    name: str
    # Whether a square causal mask must arrive as a tensor (False: the kernel applies it itself).
    dense_causal: bool
    # Whether ``__call__`` takes ``sinks_N`` (read with getattr: kernels from before it lack it).
    learned_sinks: bool
    # Whether ``__call__`` applies ``mask.keep_LT`` built in the step (read with getattr; default True).
    takes_step_mask: bool

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        """Whether the kernel builds the [B, N, L, T] score matrix (for memory prediction)."""
        ...

    def __call__(self, q_BLNE: Tensor, k_BTKE: Tensor, v_BTKV: Tensor, *, scale: float,
                 mask: AttnMask, sinks_N: Tensor | None = None) -> Tensor: ...
