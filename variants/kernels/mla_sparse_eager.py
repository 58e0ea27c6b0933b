"""MLA's absorbed attention over each query's selected cache rows, explicit matmuls (see
``attnbench.variants.families.mla.kernel.SparseMLAKernel``).

Legend: B batch, L queries, T cache rows, N query heads, C latent, R rotary dim, K selected rows per
query, n queries in a block, X = B·n (batch and query folded).

Each query gathers its K rows of ``c_kv`` and ``k_rope`` (a copy of K·(C + R) values: the work
and the traffic are proportional to K, not to T), then, as ``EagerMLAKernel`` does on the whole
cache, folds the N heads into the rows of one matmul per score term (every head shares the latent
key) and takes the softmax in float32. Unused slots (-1) are masked. The gathered rows of a block of
queries stay under ``gather_bytes`` (a prefill of L queries would otherwise gather L·K rows at once),
in at most ``attnbench.variants.topk.MAX_BLOCKS`` blocks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.variants.topk import block_rows


def gather_rows(x_BTF: Tensor, idx_BnK: Tensor) -> Tensor:
    """``[B, n, K, F]``: row ``idx[b, i, j]`` of ``x[b]`` (an unused slot, -1, reads row 0, masked later)."""
    batch_B11 = torch.arange(x_BTF.shape[0], device=x_BTF.device).view(-1, 1, 1)
    return x_BTF[batch_B11, idx_BnK.clamp_min(0)]


def query_blocks(num_queries: int, row_bytes: int, budget: int) -> list[tuple[int, int]]:
    """Query ranges ``[l0, l1)`` whose gathered rows (``row_bytes`` per query) stay within ``budget``,
    at most ``attnbench.variants.topk.MAX_BLOCKS`` of them (larger blocks rather than a million-step loop)."""
    step = block_rows(num_queries, row_bytes, budget)
    return [(l0, min(l0 + step, num_queries)) for l0 in range(0, num_queries, step)]


class EagerSparseMLAKernel:
    name = "eager"
    packed_cache = False

    def __init__(self, *, gather_bytes: int = 64 << 20) -> None:
        self.gather_bytes = gather_bytes

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        return True  # [B, L, N, K] scores, K rather than T keys

    def __call__(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, c_kv_BTC: Tensor, k_rope_BTJ: Tensor,
                 idx_BLK: Tensor, *, scale: float, kv_BTE: Tensor | None = None) -> Tensor:
        B, L, N, C = q_lat_BLNC.shape
        R, K = q_rope_BLNR.shape[-1], idx_BLK.shape[-1]
        assert k_rope_BTJ.shape[-1] == R, "the sparse kernel takes one rotary key per token"
        # Softmax in (at least) float32 whatever the input dtype, as the checkpoints' code does.
        acc_dtype = torch.promote_types(q_lat_BLNC.dtype, torch.float32)
        # The scale goes on the N·L query rows rather than on the N·L·K scores.
        q_lat_BLNC, q_rope_BLNR = q_lat_BLNC * scale, q_rope_BLNR * scale
        outs = []
        for l0, l1 in query_blocks(L, B * K * (C + R) * c_kv_BTC.element_size(), self.gather_bytes):
            X = B * (l1 - l0)
            idx_BnK = idx_BLK[:, l0:l1]
            c_XKC = gather_rows(c_kv_BTC, idx_BnK).view(X, K, C)
            r_XKR = gather_rows(k_rope_BTJ, idx_BnK).view(X, K, R)
            # The small rotary term first, then the latent term accumulates onto it (beta = 1).
            rope_XNK = torch.bmm(q_rope_BLNR[:, l0:l1].reshape(X, N, R), r_XKR.transpose(1, 2))
            scores_XNK = torch.baddbmm(rope_XNK, q_lat_BLNC[:, l0:l1].reshape(X, N, C), c_XKC.transpose(1, 2))
            unused_X1K = (idx_BnK < 0).view(X, 1, K)
            scores_XNK = scores_XNK.to(acc_dtype).masked_fill(unused_X1K, float("-inf"))
            probs_XNK = torch.softmax(scores_XNK, dim=-1).to(c_XKC.dtype)
            outs.append(torch.bmm(probs_XNK, c_XKC).view(B, l1 - l0, N, C))
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
