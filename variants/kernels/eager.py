"""Explicit matmuls and a float32 softmax: the readable baseline every other kernel is checked against.

Legend: B batch, L queries, T keys, N query heads, K kv heads, G = N / K query heads per kv head,
M = G * L query rows per kv head, E query/key dim, V value dim.

Learned sinks (gpt-oss): one logit per query head joins each row's softmax as an extra column
with no value, ``softmax([scores, sink])`` with the sink column dropped, as transformers'
``GptOssAttention`` computes it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.variants.mask import AttnMask


class EagerKernel:
    name = "eager"
    dense_causal = True
    learned_sinks = True

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        return True

    def __call__(self, q_BLNE: Tensor, k_BTKE: Tensor, v_BTKV: Tensor, *, scale: float,
                 mask: AttnMask, sinks_N: Tensor | None = None) -> Tensor:
        B, L, N, E = q_BLNE.shape
        K = k_BTKE.shape[2]
        G = N // K
        # Fold the G query heads that share a kv head into the row dimension, so each kv head's
        # keys are multiplied once per group instead of being repeated G times (HF's repeat_kv).
        q_BKME = q_BLNE.view(B, L, K, G, E).permute(0, 2, 3, 1, 4).reshape(B, K, G * L, E)
        # einsum rather than matmul on permuted views: inductor's attention pattern rewrite
        # miscompiles the latter in torch 2.13 ("Expected size for first two dimensions of batch2").
        # Softmax in (at least) float32 whatever the input dtype, as the checkpoints' code does.
        acc_dtype = torch.promote_types(q_BLNE.dtype, torch.float32)
        scores_BKMT = torch.einsum("bkme,btke->bkmt", q_BKME, k_BTKE).to(acc_dtype) * scale
        if not mask.full:
            assert mask.keep_LT is not None, "the eager kernel needs a dense mask"
            scores_BKGLT = scores_BKMT.view(B, K, G, L, -1)
            # [L, T], or [B, 1, L, T] for a ragged batch: then one more axis for the group dim.
            keep = mask.keep_LT if mask.keep_LT.dim() == 2 else mask.keep_LT.unsqueeze(2)
            scores_BKMT = torch.where(keep, scores_BKGLT, float("-inf")).view(B, K, G * L, -1)
        if sinks_N is None:
            probs_BKMT = torch.softmax(scores_BKMT, dim=-1).to(v_BTKV.dtype)
        else:
            # Query head n = k * G + g: the sink of row (k, g * L + l) is sinks_N[k * G + g].
            sink_BKM1 = sinks_N.to(acc_dtype).view(1, K, G, 1, 1).expand(B, K, G, L, 1).reshape(B, K, G * L, 1)
            probs_BKMT = torch.softmax(torch.cat([scores_BKMT, sink_BKM1], dim=-1), dim=-1)[..., :-1]
            probs_BKMT = probs_BKMT.to(v_BTKV.dtype)
        o_BKMV = torch.einsum("bkmt,btkv->bkmv", probs_BKMT, v_BTKV)
        V = o_BKMV.shape[-1]
        return o_BKMV.view(B, K, G, L, V).permute(0, 3, 1, 2, 4).reshape(B, L, N, V)
