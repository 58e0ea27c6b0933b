"""MLA's absorbed attention over each query's selected rows through ``scaled_dot_product_attention``
on the packed cache rows (see ``attnbench.variants.families.mla.kernel.SparseMLAKernel``).

Legend: B batch, L queries, T cache rows, N query heads, C latent, R rotary dim, E = C + R,
K selected rows per query, n queries in a block, X = B·n (batch and query folded).

Each query gathers its K packed rows ``[c_kv; k_rope]`` (FlashMLA's layout), which serve as key
and value of one width, as torch's fused kernels require; the output's rotary columns are dropped
and the extra value FLOPs are counted by the cost model. Every head shares the latent key, so per
query the N heads are N rows of a single head against that query's own K keys: one fused call
over X = B·n "batches" of N rows each. Unused slots (-1) are masked out by a boolean ``attn_mask``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.variants.kernels.mla_sparse_eager import gather_rows, query_blocks


class SdpaSparseMLAKernel:
    name = "sdpa"
    packed_cache = True

    def __init__(self, *, gather_bytes: int = 64 << 20) -> None:
        self.gather_bytes = gather_bytes

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        # As SdpaMLAKernel: key and value have one width here, so the fused CPU kernel takes them.
        return device_type == "cpu" and qk_dim != v_dim

    def __call__(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, c_kv_BTC: Tensor, k_rope_BTJ: Tensor,
                 idx_BLK: Tensor, *, scale: float, kv_BTE: Tensor | None = None) -> Tensor:
        assert kv_BTE is not None, "the packed-row kernel needs the packed cache view"
        B, L, N, C = q_lat_BLNC.shape
        E, K = kv_BTE.shape[-1], idx_BLK.shape[-1]
        assert E == C + q_rope_BLNR.shape[-1], "the sparse kernel takes one rotary key per token"
        q_BLNE = torch.cat((q_lat_BLNC, q_rope_BLNR), dim=-1)
        outs = []
        for l0, l1 in query_blocks(L, B * K * E * kv_BTE.element_size(), self.gather_bytes):
            X = B * (l1 - l0)
            idx_BnK = idx_BLK[:, l0:l1]
            kv_X1KE = gather_rows(kv_BTE, idx_BnK).view(X, 1, K, E)
            keep_X11K = (idx_BnK >= 0).view(X, 1, 1, K)
            o_X1NE = F.scaled_dot_product_attention(q_BLNE[:, l0:l1].reshape(X, 1, N, E), kv_X1KE, kv_X1KE,
                                                    attn_mask=keep_X11K, scale=scale)
            outs.append(o_X1NE.view(B, l1 - l0, N, E)[..., :C])
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
