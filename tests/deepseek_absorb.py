"""A peer for MLA's absorbed decode: DeepSeek-V3's reference inference MLA in its ``absorb`` mode.

Legend: B batch, L new queries, S cache positions, T visible keys, D hidden, N heads, C latent
(kv_lora_rank), R rotary dim, P qk_nope_head_dim, V v_head_dim.

Written from the facts of ``inference/model.py`` in deepseek-ai/DeepSeek-V3 (``attn_impl =
"absorb"``), not copied from it: the latent and the rotary key live in two separate caches, each
written in place and read as a prefix slice; ``q_nope`` is multiplied by W_UK per head (a slice of
``wkv_b``'s weight); the scores are one einsum over the latent cache plus one over the rotary cache;
softmax in float32; the probabilities meet the latent cache, then W_UV and W_O. It takes an
attnbench ``MLA`` layer's modules (projections, norms, RoPE), so both compute the same function
and their outputs can be compared before they are timed against each other.

DeepSeek's layer has one rotary key shared by all heads: ``rope_heads > 1`` (converted layers) has
no counterpart there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.variants.families.mla import MLA


class DeepSeekAbsorbPeer:
    """DeepSeek-V3's absorb-mode attention over its own two caches, on an attnbench layer's weights."""

    def __init__(self, layer: MLA, *, batch: int, max_len: int) -> None:
        c = layer.config
        if c.rope_heads != 1:
            raise ValueError(f"rope_heads={c.rope_heads}: DeepSeek's absorb mode has one rotary key per token")
        if layer.attention != "self":
            raise ValueError("DeepSeek's absorb mode is self-attention only")
        self.layer = layer
        # The reference registers kv_cache [B, S, C] and pe_cache [B, S, R] as two buffers.
        self.kv_cache_BSC = torch.zeros(batch, max_len, c.d_c, dtype=layer.dtype, device=layer.device)
        self.pe_cache_BSR = torch.zeros(batch, max_len, c.d_r, dtype=layer.dtype, device=layer.device)
        layer.rope.reserve(max_len, dtype=layer.dtype, device=layer.device)

    def load(self, c_kv_BTC: Tensor, k_rope_BTR: Tensor) -> None:
        """Copy a filled prefix (for instance attnbench's cache) into the peer's own caches."""
        T = c_kv_BTC.shape[1]
        self.kv_cache_BSC[:, :T].copy_(c_kv_BTC)
        self.pe_cache_BSR[:, :T].copy_(k_rope_BTR)

    @torch.no_grad()
    def forward(self, x_BLD: Tensor, start: int) -> Tensor:
        """L tokens at positions [start, start + L), each seeing the cache up to itself."""
        layer, c = self.layer, self.layer.config
        B, L, _ = x_BLD.shape
        end = start + L
        N, C, R, P, V = c.heads, c.d_c, c.d_r, c.nope_head_dim, c.v_head_dim
        if layer.q_proj is not None:
            q_BLX = layer.q_proj(x_BLD)
        else:
            q_BLX = layer.q_b_proj(layer.q_a_norm(layer.q_a_proj(x_BLD)))
        q_nope_BLNP, q_pe_BLNR = q_BLX.view(B, L, N, P + R).split([P, R], dim=-1)
        q_pe_BLNR = layer.rope(q_pe_BLNR, start)
        kv_BLC, k_pe_BLR = layer.kv_a_proj(x_BLD).split([C, R], dim=-1)
        k_pe_BLR = layer.rope(k_pe_BLR.unsqueeze(2), start).squeeze(2)
        # W_UK and W_UV are slices of kv_b_proj's weight viewed per head, taken inside the step
        # as the reference does (a view: nothing is copied).
        w_NXC = layer.kv_b_proj.weight.view(N, P + V, C)
        q_lat_BLNC = torch.einsum("blnp,npc->blnc", q_nope_BLNP, w_NXC[:, :P])
        self.kv_cache_BSC[:, start:end] = layer.kv_a_norm(kv_BLC) if layer.kv_a_norm is not None else kv_BLC
        self.pe_cache_BSR[:, start:end] = k_pe_BLR
        kv_BTC, pe_BTR = self.kv_cache_BSC[:, :end], self.pe_cache_BSR[:, :end]
        scores_BLNT = (torch.einsum("blnc,btc->blnt", q_lat_BLNC, kv_BTC)
                       + torch.einsum("blnr,btr->blnt", q_pe_BLNR, pe_BTR)) * layer.scale
        if L > 1:
            # Query i (position start + i) sees keys <= start + i; the reference adds a -inf triangle.
            mask_LT = torch.full((L, end), float("-inf"), device=x_BLD.device).triu_(start + 1)
            scores_BLNT += mask_LT.unsqueeze(1)
        # The reference's softmax runs in float32; "at least float32" keeps a float64 test exact
        # and is the same thing for the float32 and bfloat16 steps that are timed.
        acc_dtype = torch.promote_types(x_BLD.dtype, torch.float32)
        probs_BLNT = scores_BLNT.softmax(dim=-1, dtype=acc_dtype).type_as(x_BLD)
        o_lat_BLNC = torch.einsum("blnt,btc->blnc", probs_BLNT, kv_BTC)
        o_BLNV = torch.einsum("blnc,nvc->blnv", o_lat_BLNC, w_NXC[:, P:])
        return layer.o_proj(o_BLNV.flatten(2))
