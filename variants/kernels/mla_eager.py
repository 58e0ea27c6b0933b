"""MLA's latent attention with explicit matmuls and a float32 softmax (see ``variants.kernel.MLAKernel``).

Legend: B batch, L queries, T keys, N query heads, C latent, R rotary dim, G rotary keys per token,
n = N / G query heads per rotary key, M = N·L query rows, J = G·R.

The latent is one key and one value shared by every head (MQA with a single kv head), so the
heads fold into the rows of one matmul per score term: ``q_lat·c_kv`` (width C) plus, per rotary
key, ``q_rope·k_rope_g`` (width R) for that key's n heads. Nothing is concatenated and no rotary
slot is zero-padded; the cache pieces are read in place (strided views of the packed rows).
"""

from __future__ import annotations

import torch
from torch import Tensor

from variants.mask import AttnMask


class EagerMLAKernel:
    name = "eager"
    dense_causal = True
    packed_cache = False

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        return True

    def __call__(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, c_kv_BTC: Tensor, k_rope_BTJ: Tensor, *,
                 scale: float, mask: AttnMask, kv_BTE: Tensor | None = None) -> Tensor:
        B, L, N, C = q_lat_BLNC.shape
        R = q_rope_BLNR.shape[-1]
        T = c_kv_BTC.shape[1]
        G = k_rope_BTJ.shape[-1] // R
        rows = N // G * L  # query rows that share one rotary key
        # Row m = n·L + l (head-major), so each rotary key's heads are consecutive rows. The scale
        # goes on the N·L query rows rather than on the N·L·T scores.
        q_lat_BMC = (q_lat_BLNC.transpose(1, 2) * scale).reshape(B, N * L, C)
        q_rope_BMR = (q_rope_BLNR.transpose(1, 2) * scale).reshape(B, N * L, R)
        k_rope_BTGR = k_rope_BTJ.unflatten(-1, (G, R))
        # The small rotary term first, written straight into the score buffer, one matmul per
        # rotary key; then the latent term accumulates onto it (beta = 1) in one pass over c_kv.
        rope_BMT = q_lat_BMC.new_empty(B, N * L, T)
        for g in range(G):
            torch.bmm(q_rope_BMR[:, g * rows:(g + 1) * rows], k_rope_BTGR[:, :, g].transpose(1, 2),
                      out=rope_BMT[:, g * rows:(g + 1) * rows])
        scores_BMT = torch.baddbmm(rope_BMT, q_lat_BMC, c_kv_BTC.transpose(1, 2))
        # Softmax in (at least) float32 whatever the input dtype, as the checkpoints' code does.
        acc_dtype = torch.promote_types(q_lat_BLNC.dtype, torch.float32)
        scores_BNLT = scores_BMT.view(B, N, L, T).to(acc_dtype)
        if not mask.full:
            assert mask.keep_LT is not None, "the eager kernel needs a dense mask"
            scores_BNLT = scores_BNLT.masked_fill(mask.keep_LT.logical_not(), float("-inf"))
        probs_BMT = torch.softmax(scores_BNLT, dim=-1).to(c_kv_BTC.dtype).view(B, N * L, T)
        o_lat_BMC = torch.bmm(probs_BMT, c_kv_BTC)
        return o_lat_BMC.view(B, N, L, C).transpose(1, 2)
