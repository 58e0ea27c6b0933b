"""The inner attention kernel: the one piece an implementation swaps without touching a layer.

Legend: B batch, L queries, T visible keys, N query heads, K kv heads (N % K == 0),
E query/key dim, V value dim.

Tensors arrive in the cache's native layout ``[B, T, K, E]`` (usually strided views of the
preallocated cache, never copied by the layer), queries as ``[B, L, N, E]``; the kernel returns
``[B, L, N, V]``. Query head n reads kv head ``n // (N / K)``, the grouping GQA defines.

The mask's dense form ``keep_LT`` is ``[L, T]``, or ``[B, 1, L, T]`` in a ragged decode batch
(each sequence its own length; see ``variants.cache``). A kernel is injected into a family's step
runner when an implementation plans (``variants.implementation``): whatever it needs set up once
belongs in the plan, not in ``__call__``.

A kernel with ``learned_sinks = True`` also takes ``sinks_N``, one logit per query head that joins
the softmax as a column with no value (gpt-oss); a layer with sinks refuses any other kernel, and a
kernel without the attribute is taken not to apply them. A kernel with ``takes_step_mask = False``
applies only a mask it was given at set-up (flex's ``BlockMask``), not ``mask.keep_LT`` built in the
step (DeepSeek-V4's per-query entry picks); without the attribute it is taken to apply it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from variants.mask import AttnMask


class Kernel(Protocol):
    name: str
    # Whether a square causal mask must arrive as a tensor (False: the kernel applies it itself).
    dense_causal: bool
    # Whether ``__call__`` takes ``sinks_N`` (read with getattr: kernels from before it lack it).
    learned_sinks: bool

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        """Whether the kernel builds the [B, N, L, T] score matrix (for memory prediction)."""
        ...

    def __call__(self, q_BLNE: Tensor, k_BTKE: Tensor, v_BTKV: Tensor, *, scale: float,
                 mask: AttnMask, sinks_N: Tensor | None = None) -> Tensor: ...


@runtime_checkable
class MLAKernel(Protocol):
    """The inner kernel of MLA's absorbed path, given the pieces of the latent attention as they are.

    Legend: B batch, L queries, T visible keys, N query heads, C latent (d_c), R rotary dim,
    G rotary keys per token (query head n uses key ``n // (N / G)``), J = G·R, E = C + J.

    ``q_lat_BLNC`` is ``q_nope·W_UK`` per head and ``q_rope_BLNR`` the rotated rotary query, never
    concatenated by the layer; ``c_kv_BTC`` and ``k_rope_BTJ`` are strided views of the cache, never
    copied. The kernel returns ``o_lat_BLNC = softmax(scale·(q_lat·c_kv + q_rope·k_rope_g))·c_kv``.
    A kernel with ``packed_cache = True`` also receives ``kv_BTE``, the cache rows ``[c_kv; k_rope]``
    as one view (FlashMLA's layout: one key whose first C columns are the value); it then builds the
    query that row needs itself.
    """

    name: str
    dense_causal: bool  # as ``Kernel.dense_causal``
    packed_cache: bool  # whether the kernel wants ``kv_BTE``, the packed rows

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool: ...

    def __call__(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, c_kv_BTC: Tensor, k_rope_BTJ: Tensor, *,
                 scale: float, mask: AttnMask, kv_BTE: Tensor | None = None) -> Tensor: ...
