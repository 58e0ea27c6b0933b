"""FlashMLA behind attnbench's cache views: the contract a GPU user plugs in, with a CPU stand-in.

Legend: B batch, L queries (s_q), N query heads (h_q), C latent (d_c, head_dim_v), R rotary dim,
D = C + R (FlashMLA's head_dim), Q blocks in the pool, P rows per block (page_block_size), J block
table columns, K picked rows per query (topk), W bytes per row.

FlashMLA (github.com/deepseek-ai/FlashMLA, ``flash_mla/flash_mla_interface.py``) decodes from a
paged cache: ``flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v,
sched_meta, softmax_scale=..., causal=..., is_fp8_kvcache=..., indices=..., attn_sink=...,
extra_k_cache=..., extra_indices_in_kvcache=..., topk_length=..., extra_topk_length=...)``,
``q`` ``[B, L, N, D]``, ``k_cache`` ``[Q, P, 1, D]`` (or its bytes), ``block_table`` int32
``[B, J]``, ``cache_seqlens`` int32 ``[B]``; it returns ``out [B, L, N, head_dim_v]`` and
``lse [B, N, L]``. Row t of sequence b lies in block ``block_table[b, t // P]`` at ``t % P``; the
first ``head_dim_v`` dims of a key are its value (MLA's latent is key and value at once). Sparse
decode takes ``indices [B, L, K]`` instead: ``block · P + offset`` into the pool, -1 for none.
Its fp8 caches, as ``tests/quant.py`` lays them out:

* **V32_FP8Sparse** (DeepSeek-V3.x, D = 576): each token one interleaved row of 656 bytes, 512
  e4m3 latent values, 4 float32 scales (one per 128 values), 64 bf16 rotary values.
* **MODEL1_FP8Sparse** (DeepSeek-V4, D = 512): per entry 448 e4m3 values in 7 tiles of 64 with
  ue8m0 (power-of-two) scales, 64 bf16 rotary values, a pad byte: 584 bytes; a block holds its P
  entries' 576-byte value rows, then their 8-byte scale slots, padded to a multiple of 576 bytes
  (``attnbench.variants.fp8_model1``; the k_cache tensor is ``[Q, P, 1, 584]`` bytes with the padded block
  as its stride).

``FlashMLAKernel`` is an ``MLAKernel`` that reads the view (``reads_view``): it hands FlashMLA the
page pool and block table where they lie (a contiguous cache is a pool of B blocks of S rows, its
block table ``[[0], [1], ...]``), the view's lengths, and the scale as given. attnbench's fp8 MLA
cache keeps its fields apart (e4m3 values, float32 scales, the rotary key in the compute dtype), so
for an fp8 view ``pack_v32`` writes FlashMLA's interleaved rows first: a copy of the cache per step
that a serving engine writing FlashMLA's rows in place does not pay (count it as such). V4's
``kv_dtype=fp8_model1`` cache is already FlashMLA's MODEL1 bytes: ``model1_k_cache`` is a view of
it, no copy. With ``flash_mla`` installed and the tensors on CUDA the kernel calls FlashMLA; else
the CPU stand-in below, which reads the same arguments as FlashMLA reads them (block table,
lengths, fp8 bytes), so the tests check the contract on any machine.

Plugging it in: ``attnbench.variants.registry.register_implementation(FLASHMLA)``, then ``impl=flashmla``
on ``mla`` (a package with an entry point, as ``docs/examples/attnbench_example_impl``, does it
at discovery).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from attnbench.variants import fp8_model1
from attnbench.variants.cache import KVCache
from attnbench.variants.cache_view import CacheView
from attnbench.variants.implementation import KernelImplementation
from attnbench.variants.mask import AttnMask

V32_ROW_BYTES = 512 + 4 * 4 + 64 * 2  # 656: FlashMLA's V32_FP8Sparse token row in bf16


# -- the fp8 layouts -----------------------------------------------------------------------------------
def v32_row_bytes(*, C: int, groups: int, R: int, rope_dtype: torch.dtype) -> int:
    """Bytes of one V32 row: C e4m3, ``groups`` float32 scales, R rotary values (656 at 512/4/64 in bf16)."""
    return C + 4 * groups + R * rope_dtype.itemsize


def pack_v32(view: CacheView) -> tuple[Tensor, Tensor, Tensor]:
    """An fp8 MLA view as FlashMLA's V32 cache: ``(k_cache [Q, P, 1, W] uint8, block_table, seqlens)``,
    one interleaved row per token ``[e4m3 c_kv | float32 scales | k_rope]``, the view's pages and
    block table kept (a copy of every page: attnbench stores the three fields apart)."""
    _, block_table_BJ, seqlens_B = _pool(view, "c_kv")
    values = view.storage[view.layout.slot("c_kv").buffer]  # e4m3 [Q, P, C] (or [B, S, C])
    rope = view.storage[view.layout.slot("k_rope").buffer]  # the compute dtype [Q, P, R]
    rows = torch.cat([values.view(torch.uint8), view.scales["c_kv"].view(torch.uint8),
                      rope.contiguous().view(torch.uint8)], dim=-1)
    return rows.unsqueeze(2), block_table_BJ, seqlens_B


def decode_v32(rows_TW: Tensor, *, C: int, groups: int, dtype: torch.dtype, rope_dtype: torch.dtype) -> Tensor:
    """``[T, C + R]`` keys from V32 rows: each tile of ``C / groups`` values times its float32 scale."""
    values = rows_TW[:, :C].contiguous().view(torch.float8_e4m3fn).to(torch.float32)
    scales = rows_TW[:, C:C + 4 * groups].contiguous().view(torch.float32)
    rope = rows_TW[:, C + 4 * groups:].contiguous().view(rope_dtype)
    latent = (values.unflatten(-1, (groups, -1)) * scales.unsqueeze(-1)).flatten(-2)
    return torch.cat([latent.to(dtype), rope.to(dtype)], dim=-1)


def model1_k_cache(cache: KVCache, name: str) -> tuple[Tensor, fp8_model1.Model1Format]:
    """A V4 ``kv_dtype=fp8_model1`` field as FlashMLA's MODEL1 ``k_cache`` ``[Q, P, 1, 584]`` (bytes, a
    view of the cache: no copy). Sequence b's blocks are ``b·N .. b·N + N - 1`` (a pool whose block
    table is ``arange``): ``indices`` are ``(b·N + row // P) · P + row % P``."""
    rows = cache.model1[name]
    B, N, W = rows.blocks_BNW.shape
    fmt = rows.fmt
    pool_QW = rows.blocks_BNW.view(B * N, W)
    k_cache = pool_QW.as_strided((B * N, fmt.block, 1, fmt.entry_bytes), (W, fmt.entry_bytes, fmt.entry_bytes, 1))
    return k_cache, fmt


def model1_indices(rows_BLK: Tensor, *, blocks_per_seq: int, block: int) -> Tensor:
    """FlashMLA's sparse ``indices`` for rows of each sequence's own blocks (-1 kept: no row)."""
    b_B11 = torch.arange(rows_BLK.shape[0], device=rows_BLK.device).view(-1, 1, 1)
    flat = (b_B11 * blocks_per_seq + rows_BLK // block) * block + rows_BLK % block
    return torch.where(rows_BLK < 0, -1, flat)


def _model1_rows(k_cache: Tensor, fmt: fp8_model1.Model1Format, index_K: Tensor, dtype: torch.dtype) -> Tensor:
    """Rows ``index_K`` (block · P + offset) of a MODEL1 k_cache, dequantized, as FlashMLA reads them:
    the block's bytes, the entry's value row at ``offset · 576``, its scales at ``P · 576 + offset · 8``."""
    Q, P = k_cache.shape[:2]
    blocks_QW = k_cache.as_strided((Q, P * fmt.entry_bytes), (k_cache.stride(0), 1))
    block, offset = index_K // P, index_K % P
    at_K = offset * fmt.value_bytes
    values = blocks_QW[block.unsqueeze(1), at_K.unsqueeze(1) + torch.arange(fmt.value_bytes)]
    at_K = P * fmt.value_bytes + offset * fmt.scale_bytes
    scales = blocks_QW[block.unsqueeze(1), at_K.unsqueeze(1) + torch.arange(fmt.scale_bytes)]
    return fp8_model1.decode(values, scales, fmt, dtype)


# -- the CPU stand-ins: FlashMLA's arguments, read as FlashMLA reads them ----------------------------
def flash_mla_with_kvcache_cpu(q_BLND: Tensor, k_cache: Tensor, block_table_BJ: Tensor, cache_seqlens_B: Tensor,
                               head_dim_v: int, *, softmax_scale: float, causal: bool,
                               decode_rows: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Dense decode: sequence b attends to its rows ``[0, cache_seqlens[b])``, read block by block
    through the block table; ``causal``: query i of L sees rows up to ``seqlen - L + i``.
    ``decode_rows``: how an fp8 row's bytes become a key (None: the rows are keys already)."""
    B, L = q_BLND.shape[:2]
    P = k_cache.shape[1]
    outs, lses = [], []
    for b in range(B):
        n = int(cache_seqlens_B[b])
        pages_J = block_table_BJ[b, :math.ceil(n / P)].long()
        rows_TW = k_cache.index_select(0, pages_J).flatten(0, 1)[:n, 0]
        k_TD = rows_TW if decode_rows is None else decode_rows(rows_TW)
        keep_LT = None
        if causal:
            keep_LT = torch.arange(n).unsqueeze(0) <= (n - L + torch.arange(L)).unsqueeze(1)
        out_LNC, lse_NL = _attend(q_BLND[b], k_TD, head_dim_v, softmax_scale, keep_LT)
        outs.append(out_LNC)
        lses.append(lse_NL)
    return torch.stack(outs), torch.stack(lses)


def flash_mla_sparse_decode_cpu(q_BLND: Tensor, k_cache: Tensor, indices_BLK: Tensor, head_dim_v: int, *,
                                softmax_scale: float, fmt: fp8_model1.Model1Format,
                                attn_sink: Tensor | None = None, extra_k_cache: Tensor | None = None,
                                extra_indices_BLK: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sparse decode on MODEL1 caches: query (b, i) attends to rows ``indices[b, i]`` (-1: none) of
    ``k_cache`` and ``extra_indices[b, i]`` of ``extra_k_cache``; ``attn_sink`` [N] scales the output
    by ``exp(lse) / (exp(lse) + exp(sink))`` (the sink as a softmax column with no value)."""
    B, L, N = q_BLND.shape[:3]
    out = q_BLND.new_zeros(B, L, N, head_dim_v)
    lse = q_BLND.new_zeros(B, N, L, dtype=torch.promote_types(q_BLND.dtype, torch.float32))
    for b in range(B):
        for i in range(L):
            keys = [_model1_rows(k_cache, fmt, _valid(indices_BLK[b, i]), q_BLND.dtype)]
            if extra_k_cache is not None and extra_indices_BLK is not None:
                keys.append(_model1_rows(extra_k_cache, fmt, _valid(extra_indices_BLK[b, i]), q_BLND.dtype))
            o_1NC, lse_N1 = _attend(q_BLND[b, i:i + 1], torch.cat(keys), head_dim_v, softmax_scale, None)
            if attn_sink is not None:
                o_1NC = o_1NC * torch.sigmoid(lse_N1[:, 0] - attn_sink).view(1, N, 1).to(o_1NC.dtype)
            out[b, i], lse[b, :, i] = o_1NC[0], lse_N1[:, 0]
    return out, lse


def _valid(index_K: Tensor) -> Tensor:
    return index_K[index_K >= 0].long()


def _attend(q_LND: Tensor, k_TD: Tensor, head_dim_v: int, scale: float,
            keep_LT: Tensor | None) -> tuple[Tensor, Tensor]:
    acc = torch.promote_types(q_LND.dtype, torch.float32)
    scores_NLT = torch.einsum("lnd,td->nlt", q_LND.to(acc), k_TD.to(acc)) * scale
    if keep_LT is not None:
        scores_NLT = scores_NLT.masked_fill(~keep_LT, float("-inf"))
    lse_NL = torch.logsumexp(scores_NLT, dim=-1)
    probs_NLT = torch.exp(scores_NLT - lse_NL.unsqueeze(-1))
    out_LNC = torch.einsum("nlt,tc->lnc", probs_NLT, k_TD[:, :head_dim_v].to(acc)).to(q_LND.dtype)
    return out_LNC, lse_NL


# -- the kernel an Implementation carries -------------------------------------------------------------------
def _pool(view: CacheView, name: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(pool [Q, P, W], block_table [B, J] int32, seqlens [B] int32)`` of the buffer holding ``name``:
    the view's own (paged), or a contiguous ``[B, S, W]`` buffer as B blocks of S rows."""
    buf = view.storage[view.layout.slot(name).buffer]
    device = buf.device
    seqlens_B = view.seq_lens_B if view.seq_lens_B is not None else torch.full((view.batch,), view.kv_len)
    seqlens_B = seqlens_B.to(device=device, dtype=torch.int32)
    if view.layout.page_size is not None:
        assert view.block_table_BJ is not None
        return buf, view.block_table_BJ, seqlens_B
    return buf, torch.arange(view.batch, dtype=torch.int32, device=device).unsqueeze(1), seqlens_B


class FlashMLAKernel:
    """MLA's absorbed attention by FlashMLA's dense decode (``flash_mla_with_kvcache``), reading the view."""

    name = "flashmla"
    dense_causal = False  # causality is FlashMLA's ``causal`` flag over the lengths, not a mask tensor
    packed_cache = False
    reads_view = True

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        return device_type == "cpu"  # the stand-in builds the scores; FlashMLA tiles them

    def __call__(self, *args: object, **kwargs: object) -> Tensor:
        raise NotImplementedError("FlashMLAKernel reads the cache view (attend_view), not gathered tensors")

    def attend_view(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, view: CacheView, *, scale: float,
                    mask: AttnMask) -> Tensor:
        C, R = view.layout.slot("c_kv").width, view.layout.slot("k_rope").width
        if R != q_rope_BLNR.shape[-1]:
            raise ValueError(f"FlashMLA reads one rotary key per token; this cache holds {R // q_rope_BLNR.shape[-1]}")
        q_BLND = torch.cat([q_lat_BLNC, q_rope_BLNR], dim=-1)
        L = q_BLND.shape[1]
        fp8 = view.layout.slot("c_kv").tile is not None
        if fp8:
            k_cache, block_table_BJ, seqlens_B = pack_v32(view)
            groups = C // view.layout.slot("c_kv").tile
            rope_dtype = view.storage[view.layout.slot("k_rope").buffer].dtype

            def decode_rows(rows_TW: Tensor) -> Tensor:
                return decode_v32(rows_TW, C=C, groups=groups, dtype=view.dtype, rope_dtype=rope_dtype)
        else:  # the packed rows [c_kv; k_rope] are FlashMLA's bf16 rows: the pool as it lies
            assert view.layout.shares_buffer("c_kv", "k_rope"), "FlashMLA reads [c_kv; k_rope] as one row"
            pool_QPW, block_table_BJ, seqlens_B = _pool(view, "c_kv")
            k_cache, decode_rows = pool_QPW.unsqueeze(2), None
        if _flash_mla_runs(q_BLND, fp8):
            import flash_mla  # optional, GPU only

            sched_meta, _ = flash_mla.get_mla_metadata()
            out, _ = flash_mla.flash_mla_with_kvcache(q_BLND, k_cache, block_table_BJ, seqlens_B, C, sched_meta,
                                                      softmax_scale=scale, causal=L > 1, is_fp8_kvcache=fp8)
            return out
        out, _ = flash_mla_with_kvcache_cpu(q_BLND, k_cache, block_table_BJ, seqlens_B, C, softmax_scale=scale,
                                            causal=L > 1, decode_rows=decode_rows)
        return out


def _flash_mla_runs(q: Tensor, fp8: bool) -> bool:
    """FlashMLA itself: installed, on CUDA, bf16 (its dense fp8 path is the V32 layout in bf16)."""
    if q.device.type != "cuda" or q.dtype != torch.bfloat16:
        return False
    try:
        import flash_mla  # noqa: F401
    except ImportError:
        return False
    return True


FLASHMLA = KernelImplementation(
    name="flashmla", path="absorbed", kernel=FlashMLAKernel(), options={"fold_o": False},
    description="MLA absorbed by FlashMLA's paged decode on the cache view (CPU: a stand-in reading as FlashMLA)")
