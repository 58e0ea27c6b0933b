"""MLA's kernel protocols: what the absorbed path (and dsa's sparse one) hands its inner kernel.

Kept in the family that defines the latent attention, as a linear family keeps its ``DeltaRuleKernel``:
an implementation's kernels (``attnbench.variants.kernels.mla_*``, FlashMLA and FlashInfer wrappers
in ``docs/examples/``) meet these; the generic ``attnbench.variants.kernel.Kernel`` is for
attention on per-head keys and values.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from attnbench.variants.cache_view import CacheView
from attnbench.variants.mask import AttnMask


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

    A kernel may have ``sparse``, its ``SparseMLAKernel`` counterpart reading the same layout: what
    a layer that attends on selected tokens only (``dsa``) calls in its place (read with getattr;
    FlashMLA ships the pair, its dense and its sparse decode kernels).

    The layer hands the kernel the cache as a ``attnbench.variants.cache_view.CacheView`` (storage or page
    pool, block table, lengths, fp8 scales, where ``c_kv`` and ``k_rope`` lie in a row), through
    ``attend_latent``. A kernel with ``reads_view = True`` has ``attend_view(q_lat_BLNC, q_rope_BLNR,
    view, *, scale, mask)`` and reads the view itself (FlashMLA's and FlashInfer's contract: a
    paged or fp8 cache read in place); any other kernel gets the pieces above gathered from it
    (views of a contiguous cache, a copy of a paged or fp8 one). Both read with getattr.
    """

    name: str
    dense_causal: bool  # as ``Kernel.dense_causal``
    packed_cache: bool  # whether the kernel wants ``kv_BTE``, the packed rows

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool: ...

    def __call__(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, c_kv_BTC: Tensor, k_rope_BTJ: Tensor, *,
                 scale: float, mask: AttnMask, kv_BTE: Tensor | None = None) -> Tensor: ...


@runtime_checkable
class SparseMLAKernel(Protocol):
    """MLA's absorbed attention over selected cache rows only, one set per query (DeepSeek-V3.2's DSA).

    Legend: B batch, L queries, T cache rows readable, N query heads, C latent (d_c), R rotary dim
    (one rotary key per token), K selected rows per query, E = C + R.

    ``idx_BLK`` (int64) holds, per query, the cache rows it attends to, -1 for none (a query that
    sees fewer than K tokens, as FlashMLA's sparse kernels mark an unused slot); causality is in the
    indices, so no mask is passed. The pieces arrive as for ``MLAKernel``: ``q_lat_BLNC`` and
    ``q_rope_BLNR`` (never concatenated by the layer), ``c_kv_BTC`` and ``k_rope_BTJ`` views of the
    cache, and with ``packed_cache = True`` also ``kv_BTE``, the packed rows. The kernel gathers the
    K rows of each query (work and traffic proportional to K, not to T) and returns
    ``o_lat_BLNC = softmax(scale·(q_lat·c_kv_s + q_rope·k_rope_s))·c_kv_s`` over them.
    """

    name: str
    packed_cache: bool  # whether the kernel wants ``kv_BTE``, the packed rows

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool: ...

    def __call__(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, c_kv_BTC: Tensor, k_rope_BTJ: Tensor,
                 idx_BLK: Tensor, *, scale: float, kv_BTE: Tensor | None = None) -> Tensor: ...


def attend_latent(kernel: MLAKernel, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, view: CacheView, *,
                  scale: float, mask: AttnMask) -> Tensor:
    """Run an MLA kernel on a cache view: one that ``reads_view`` reads it where it lies; any other
    gets ``c_kv``, ``k_rope`` (and with ``packed_cache`` the packed rows) gathered from it."""
    if getattr(kernel, "reads_view", False):
        return kernel.attend_view(q_lat_BLNC, q_rope_BLNR, view, scale=scale, mask=mask)  # type: ignore[attr-defined]
    kv_BTE = view.gather_buffer(view.layout.slot("c_kv").buffer) if kernel.packed_cache else None
    c_kv_BTC = view.rows("c_kv", 0, view.kv_len, kv_BTE)
    k_rope_BTJ = view.rows("k_rope", 0, view.kv_len, kv_BTE)
    return kernel(q_lat_BLNC, q_rope_BLNR, c_kv_BTC, k_rope_BTJ, scale=scale, mask=mask, kv_BTE=kv_BTE)
