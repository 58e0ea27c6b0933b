"""Selecting tokens, for any layer that does: a deterministic top-k and the blocking of long prompts.

A sparse family's indexer (DeepSeek-V3.2's lightning indexer, ``attnbench.variants.families.dsa.indexer``;
DeepSeek-V4's compressed-entry picks) and the sparse kernels that read its picks use these; they name
no family.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Query blocks per step, at most: a million-token prompt holds larger blocks rather than loop a
# million times in Python (the memory prediction's dry run runs that loop too).
MAX_BLOCKS = 64


def block_rows(num_queries: int, row_bytes: int, budget: int) -> int:
    """Queries per block: as many as ``budget`` bytes hold at ``row_bytes`` each, and enough for at
    most ``MAX_BLOCKS`` blocks."""
    return max(1, budget // max(1, row_bytes), -(-num_queries // MAX_BLOCKS))


def stable_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of the last dim, best first, as (values, indices); equal scores by the
    lower index first, so -inf padding comes last and a row's picks do not depend on its length: the
    first k of a stable descending sort.

    ``torch.topk`` breaks ties in an order that depends on the row's length: a causal prefill's row
    (padded with -inf) and a decode step's row (exactly the visible entries) can keep different tokens
    of equal score. ReLU-weighted indexer scores tie often (exactly 0 wherever every head's ReLU is at
    its floor: 1 in 4 entries with 2 heads). sglang and llama.cpp break DeepSeek's ties by the lower
    index too. A full sort of a 128k-entry row costs ~6x a topk on a CPU core, so: a topk (its set is right
    but for the entries equal to its k-th value), those slots refilled with the lowest-index entries
    of that value (the m-th one found by a search of the row's running count), then a stable sort of
    the k picks by index and by score. (X: any leading dims.)"""
    if k == 0:
        return scores[..., :0], torch.zeros_like(scores[..., :0], dtype=torch.long)
    values_XK, idx_XK = scores.topk(k, dim=-1)
    kth_X1 = values_XK[..., -1:]
    at_kth_XK = values_XK == kth_X1  # the last slots, one per entry of the k-th value it kept
    m_XK = torch.arange(1, k + 1, device=scores.device) - (k - at_kth_XK.sum(-1, keepdim=True))
    count_XT = (scores == kth_X1).cumsum(-1)  # entries of the k-th value up to each index
    mth_XK = torch.searchsorted(count_XT, m_XK.clamp_min(1))  # the index of the m-th such entry
    idx_XK = torch.where(at_kth_XK, mth_XK, idx_XK).sort(dim=-1).values
    # -0.0 and +0.0 are equal scores (a negative head weight times a ReLU's 0 gives -0.0), but a radix
    # sort on the bits may order them: make every zero +0.0 first.
    values_XK = scores.gather(-1, idx_XK)
    values_XK, order_XK = torch.where(values_XK == 0, 0.0, values_XK).sort(dim=-1, descending=True, stable=True)
    return values_XK, idx_XK.gather(-1, order_XK)
