"""Which keys each query sees, decided once at set-up so no timed step builds a mask.

Legend: L new queries, T keys visible in the step (cache positions [0, T)).

Self-attention: query i sits at absolute position ``q_offset + i`` and sees keys ``<= q_offset + i``
(prefill: ``q_offset = 0``; decode: ``q_offset`` = tokens already cached). Cross-attention: every
query sees every memory key (``q_offset is None``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AttnMask:
    q_len: int  # L
    kv_len: int  # T
    q_offset: int | None  # None: no causal mask (cross-attention)
    keep_LT: Tensor | None  # True where attention is allowed; built only when a kernel needs it

    @property
    def full(self) -> bool:
        """Every query sees every key: no masking at all."""
        return self.q_offset is None or (self.q_len == 1 and self.q_offset + 1 == self.kv_len)

    @property
    def square_causal(self) -> bool:
        """Plain lower-triangular causal mask, which fused kernels implement without a tensor."""
        return self.q_offset == 0 and self.q_len == self.kv_len and self.q_len > 1


def make_mask(*, q_len: int, kv_len: int, q_offset: int | None, device: torch.device | str,
              dense_causal: bool = True) -> AttnMask:
    """``dense_causal=False`` skips the [L, T] tensor for a square causal mask (an L=32k prefill
    would hold a 1 GiB boolean) when the kernel applies that mask itself."""
    mask = AttnMask(q_len, kv_len, q_offset, None)
    if mask.full or (mask.square_causal and not dense_causal):
        return mask
    assert q_offset is not None and q_offset + q_len == kv_len, "self-attention sees the prefix and the new tokens"
    q_pos_L1 = torch.arange(q_offset, q_offset + q_len, device=device).unsqueeze(1)
    k_pos_1T = torch.arange(kv_len, device=device).unsqueeze(0)
    return AttnMask(q_len, kv_len, q_offset, k_pos_1T <= q_pos_L1)
