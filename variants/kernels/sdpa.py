"""``torch.nn.functional.scaled_dot_product_attention``: torch picks its fused backend.

Legend: B batch, L queries, T keys, N query heads, K kv heads, E query/key dim, V value dim.

GQA goes through ``enable_gqa`` so that the backends that support it (flash on CPU and CUDA) read
the K kv heads without copying them; a square causal mask goes as ``is_causal`` so fused kernels
skip the masked blocks; any other mask (a sliding window) goes as the dense boolean.

Learned sinks are not applied: SDPA returns no log-sum-exp to rescale by, and an extra value-less
key column would mean copying the cache each step (``learned_sinks = False``: declared unsupported).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnbench.variants.mask import AttnMask


class SdpaKernel:
    name = "sdpa"
    dense_causal = False
    learned_sinks = False

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        # torch's fused CPU kernel needs equal key and value widths; otherwise SDPA runs its math
        # fallback, which builds the score matrix (and repeats kv heads for GQA).
        return device_type == "cpu" and qk_dim != v_dim

    def __call__(self, q_BLNE: Tensor, k_BTKE: Tensor, v_BTKV: Tensor, *, scale: float,
                 mask: AttnMask) -> Tensor:
        N, K = q_BLNE.shape[2], k_BTKE.shape[2]
        attn_mask = None if mask.full or mask.square_causal else mask.keep_LT
        o_BNLV = F.scaled_dot_product_attention(
            q_BLNE.transpose(1, 2), k_BTKE.transpose(1, 2), v_BTKV.transpose(1, 2),
            attn_mask=attn_mask, is_causal=mask.square_causal, scale=scale, enable_gqa=K != N)
        return o_BNLV.transpose(1, 2)
