"""``torch.nn.attention.flex_attention``, compiled once, masked by a ``BlockMask`` built at set-up.

Legend: B batch, L queries, T keys, N query heads, K kv heads, E query/key dim, V value dim.

The ``BlockMask`` comes from the layer's mask function (``attnbench.variants.mask.block_mask``), so a window,
sink tokens or a ring cache's row positions cost flex nothing per step beyond skipping blocks.
Learned sinks (gpt-oss) are applied from the log-sum-exp flex returns: with a sink logit ``s`` the
softmax over ``[scores, s]`` without the sink column is ``softmax(scores) * sigmoid(lse - s)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from attnbench.variants.mask import AttnMask

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask


class FlexCompiler:
    """Holds ``torch.compile(flex_attention)``, made on first use (at set-up), never at import."""

    def __init__(self) -> None:
        self._compiled: Callable[..., Any] | None = None

    def __call__(self) -> Callable[..., Any]:
        if self._compiled is None:
            from torch.nn.attention.flex_attention import flex_attention

            # Compiled: uncompiled flex_attention runs a slow reference loop (and warns so).
            self._compiled = torch.compile(flex_attention, dynamic=False)
        return self._compiled


@dataclass(frozen=True)
class FlexKernel:
    """One step's flex kernel: the compiled function and the step's ``BlockMask`` (None: unmasked)."""

    flex: Callable[..., Any]
    block_mask: BlockMask | None
    name: str = "flex"
    dense_causal: bool = False  # the BlockMask carries every mask
    learned_sinks: bool = True
    # A mask computed in the step (DeepSeek-V4's indexer picks) cannot reach a BlockMask built at set-up.
    takes_step_mask: bool = False

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        return False  # flex tiles the scores like a fused kernel

    def __call__(self, q_BLNE: Tensor, k_BTKE: Tensor, v_BTKV: Tensor, *, scale: float,
                 mask: AttnMask, sinks_N: Tensor | None = None) -> Tensor:
        N, K = q_BLNE.shape[2], k_BTKE.shape[2]
        out = self.flex(q_BLNE.transpose(1, 2), k_BTKE.transpose(1, 2), v_BTKV.transpose(1, 2),
                        block_mask=self.block_mask, scale=scale, enable_gqa=N != K, return_lse=sinks_N is not None)
        if sinks_N is None:
            return out.transpose(1, 2)
        o_BNLV, lse_BNL = out
        keep_BNL = torch.sigmoid(lse_BNL - sinks_N.to(lse_BNL.dtype).view(1, -1, 1))
        return (o_BNLV * keep_BNL.unsqueeze(-1).to(o_BNLV.dtype)).transpose(1, 2)
