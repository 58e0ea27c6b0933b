"""MLA's latent attention through ``scaled_dot_product_attention`` on the packed cache rows.

Legend: B batch, L queries, T keys, N query heads, C latent, R rotary dim, G rotary keys per token,
J = G·R, E = C + J.

Asks for the packed rows ``[c_kv; k_rope_0; ...; k_rope_{G-1}]`` (``packed_cache``): key and value
are that one view, so they have one width, which torch's fused CPU and CUDA kernels require
(FlashMLA lays out its cache the same way); the output's rotary columns are dropped, and the
extra value FLOPs are counted by the cost model. The query that row needs is built here:
``[q_lat; q_rope in its rotary key's slot, zeros in the others]``.

When every query sees every key (a one-token decode, cross-attention), the N heads fold into
N·L rows of a single head, so the fused kernel reads each cached row once instead of once per
head (FlashMLA's decode does the same). Otherwise the heads stay heads and ``enable_gqa`` maps
them onto the one latent key, which is how the causal masks reach the kernel.

Given the cache as a view (``attend_view``): a contiguous cache is read in place (the packed rows as
a view); a paged one, in a one-token decode step on CPU, is read in place, each sequence's runs of
consecutive pages as views of the pool (``attnbench.variants.kernels.page_runs``); where the runs are short,
split-KV, a group of pages at a time copied out of the pool through the block table, each through the fused CPU kernel that also returns its
log-sum-exp (``aten._scaled_dot_product_flash_attention_for_cpu``), combined by
``attnbench.variants.kernels.split_kv``. A paged prefill (several queries under a causal mask) or a paged
cache on another device is gathered first, as a kernel without a paged read would need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.variants.cache_view import CacheView
from attnbench.variants.families.mla.kernel import SparseMLAKernel
from attnbench.variants.kernels import page_runs
from attnbench.variants.kernels.split_kv import CHUNK_BYTES, LseCombine, chunk_tokens
from attnbench.variants.mask import AttnMask


def slot_rope_query(q_rope_BLNR: Tensor, groups: int) -> Tensor:
    """``[B, L, N, G·R]``: head n's rotary query in its rotary key's slot, zeros elsewhere, so that
    against the packed row it gives exactly ``q_lat·c_kv + q_rope·k_rope_g``."""
    if groups == 1:
        return q_rope_BLNR
    B, L, N, R = q_rope_BLNR.shape
    G = groups
    q_BLGnHR = q_rope_BLNR.new_zeros(B, L, G, N // G, G, R)
    # The diagonal over the two group dims (appended last by ``diagonal``) is group g's own slot.
    q_BLGnHR.diagonal(dim1=2, dim2=4).copy_(q_rope_BLNR.unflatten(2, (G, N // G)).permute(0, 1, 3, 4, 2))
    return q_BLGnHR.flatten(4).flatten(2, 3)


class SdpaMLAKernel:
    name = "sdpa"
    dense_causal = False
    packed_cache = True
    reads_view = True

    def __init__(self, *, sparse: SparseMLAKernel | None = None, chunk_bytes: int | None = None) -> None:
        self.sparse = sparse  # the kernel a layer attending on selected tokens only (dsa) calls instead
        self.chunk_bytes = chunk_bytes  # a paged view's split-KV chunk budget (None: split_kv.CHUNK_BYTES)

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        # As SdpaKernel: the fused CPU kernel needs equal key and value widths (the packed value has them).
        return device_type == "cpu" and qk_dim != v_dim

    def __call__(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, c_kv_BTC: Tensor, k_rope_BTJ: Tensor, *,
                 scale: float, mask: AttnMask, kv_BTE: Tensor | None = None) -> Tensor:
        assert kv_BTE is not None, "the packed-row kernel needs the packed cache view"
        B, L, N, C = q_lat_BLNC.shape
        G = k_rope_BTJ.shape[-1] // q_rope_BLNR.shape[-1]
        q_BLNE = torch.cat((q_lat_BLNC, slot_rope_query(q_rope_BLNR, G)), dim=-1)
        kv_B1TE = kv_BTE.unsqueeze(1)
        if mask.full:
            q_B1ME = q_BLNE.reshape(B, 1, L * N, -1)  # row l·N + n
            o_B1ME = F.scaled_dot_product_attention(q_B1ME, kv_B1TE, kv_B1TE, scale=scale)
            return o_B1ME.view(B, L, N, -1)[..., :C]
        attn_mask = None if mask.square_causal else mask.keep_LT
        o_BNLE = F.scaled_dot_product_attention(q_BLNE.transpose(1, 2), kv_B1TE, kv_B1TE, attn_mask=attn_mask,
                                                is_causal=mask.square_causal, scale=scale, enable_gqa=N != 1)
        return o_BNLE.transpose(1, 2)[..., :C]

    def attend_view(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, view: CacheView, *,
                    scale: float, mask: AttnMask) -> Tensor:
        """As ``__call__``, reading the packed rows from ``view`` (see the module's docstring)."""
        buffer = view.layout.slot("c_kv").buffer
        decode = mask.full or q_lat_BLNC.shape[1] == 1
        if not view.layout.paged or not decode or q_lat_BLNC.device.type != "cpu":
            kv_BTE = view.gather_buffer(buffer)  # a view of a contiguous cache
            c_kv_BTC, k_rope_BTJ = view.rows("c_kv", 0, view.kv_len, kv_BTE), view.rows("k_rope", 0, view.kv_len, kv_BTE)
            return self(q_lat_BLNC, q_rope_BLNR, c_kv_BTC, k_rope_BTJ, scale=scale, mask=mask, kv_BTE=kv_BTE)
        # One query per sequence whose mask is its length: its pages read in place, a run at a time.
        runs = None if q_lat_BLNC.shape[1] != 1 or (not mask.full and view.seq_lens_B is None) \
            else page_runs.pieces(view, buffer)
        if runs is not None:
            return self._in_place(q_lat_BLNC, q_rope_BLNR, view, runs, scale=scale)
        return self.split_kv(q_lat_BLNC, q_rope_BLNR, view, scale=scale, mask=mask)

    def _in_place(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, view: CacheView, runs: list[list[Tensor]], *,
                  scale: float) -> Tensor:
        """Each sequence's pieces of the pool (``page_runs``) through the fused kernel, combined by lse."""
        B, L, N, C = q_lat_BLNC.shape
        G = view.layout.slot("k_rope").width // q_rope_BLNR.shape[-1]
        q_B1ME = torch.cat((q_lat_BLNC, slot_rope_query(q_rope_BLNR, G)), dim=-1).reshape(B, 1, L * N, -1)
        acc_dtype = torch.promote_types(q_B1ME.dtype, torch.float32)
        outs = []
        for b, pieces in enumerate(runs):
            q_11ME = q_B1ME[b:b + 1]
            if len(pieces) == 1:
                kv_11tE = pieces[0].view(1, 1, *pieces[0].shape)
                outs.append(F.scaled_dot_product_attention(q_11ME, kv_11tE, kv_11tE, scale=scale)[..., :C])
                continue
            combine = LseCombine(acc_dtype)
            for kv_tE in pieces:
                kv_11tE = kv_tE.view(1, 1, *kv_tE.shape)
                o_11ME, lse_11M = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q_11ME, kv_11tE, kv_11tE, 0.0, False, scale=scale)
                lse_1M1 = lse_11M.view(1, L * N, 1).to(acc_dtype)
                combine.add(o_11ME.view(1, L * N, -1)[..., :C], lse_1M1, torch.ones_like(lse_1M1))
            outs.append(combine.result(q_B1ME.dtype).view(1, 1, L * N, C))
        return torch.cat(outs).view(B, L, N, C)

    def split_kv(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, view: CacheView, *,
                 scale: float, mask: AttnMask, tokens: int | None = None) -> Tensor:
        """A decode step (every query row sees the same keys, up to a per-sequence mask) over ``view``
        in chunks of ``tokens`` rows (None: ``chunk_tokens``), the fused kernel per chunk."""
        B, L, N, C = q_lat_BLNC.shape
        G = view.layout.slot("k_rope").width // q_rope_BLNR.shape[-1]
        q_B1ME = torch.cat((q_lat_BLNC, slot_rope_query(q_rope_BLNR, G)), dim=-1).reshape(B, 1, L * N, -1)
        buffer = view.layout.slot("c_kv").buffer
        if tokens is None:
            row_bytes = q_B1ME.shape[-1] * q_B1ME.element_size()
            # The fused kernel blocks the keys itself: its chunks need not fit a cache level, and each
            # copy of a chunk's pages costs more the larger it is: half the eager kernel's budget (B = 2 and 8, 4k:
            # 1/2 of it 1.14x and 1.22x of contiguous, 4x it 1.16x and 1.39x).
            tokens = chunk_tokens(batch=B, row_bytes=row_bytes,
                                  budget=CHUNK_BYTES // 2 if self.chunk_bytes is None else self.chunk_bytes)
        keep_B11T = None if mask.full else mask.keep_LT
        assert keep_B11T is None or keep_B11T.shape[-2] == 1, "a decode step's mask has one query row"
        acc_dtype = torch.promote_types(q_B1ME.dtype, torch.float32)
        combine = LseCombine(acc_dtype)
        scratch = view.scratch(buffer, tokens)
        for t0, t1 in view.chunks(tokens):
            kv_B1tE = view.buffer_rows(buffer, t0, t1, scratch).unsqueeze(1)
            bias_B11t, seen_B11 = None, None
            if keep_B11T is not None:
                keep_B11t = keep_B11T[..., t0:t1]
                bias_B11t = torch.zeros(keep_B11t.shape, dtype=q_B1ME.dtype).masked_fill_(~keep_B11t, float("-inf"))
                seen_B11 = keep_B11t.any(-1).view(-1, 1, 1) if keep_B11t.dim() == 4 else keep_B11t.any(-1).view(1, 1, 1)
            o_B1ME, lse_B1M = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q_B1ME, kv_B1tE, kv_B1tE, 0.0, False, attn_mask=bias_B11t, scale=scale)
            lse_BM1 = lse_B1M.view(B, L * N, 1).to(acc_dtype)
            sum_BM1 = torch.ones_like(lse_BM1)
            if seen_B11 is not None:
                # The fused kernel reports lse 0 for a row that sees no key here: its weight must be 0.
                sum_BM1 = sum_BM1 * seen_B11
                lse_BM1 = lse_BM1.masked_fill(~seen_B11, torch.finfo(acc_dtype).min)
            combine.add(o_B1ME.view(B, L * N, -1)[..., :C], lse_BM1, sum_BM1)
        return combine.result(q_lat_BLNC.dtype).view(B, L, N, C)
