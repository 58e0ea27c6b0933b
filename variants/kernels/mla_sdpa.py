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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from variants.kernel import SparseMLAKernel
from variants.mask import AttnMask


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

    def __init__(self, *, sparse: SparseMLAKernel | None = None) -> None:
        self.sparse = sparse  # the kernel a layer attending on selected tokens only (dsa) calls instead

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
