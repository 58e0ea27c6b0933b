"""Perplexity of a causal LM on a fixed token sequence, in non-overlapping windows.

Legend: T tokens, W window, V vocabulary.

Each window of ``window`` tokens is read from position 0 (no state carried between windows) and
scores its tokens 2..W given the ones before; the perplexity is ``exp`` of the mean negative
log-likelihood over every scored token of every window. Windowing keeps the sequence inside the
positions a model was trained on and keeps the cost linear in T.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def perplexity(model: nn.Module, ids_T: Tensor, *, window: int) -> float:
    if window < 2 or ids_T.numel() < 2:
        raise ValueError(f"window={window} with {ids_T.numel()} tokens: both must be at least 2")
    total_nll, scored = 0.0, 0
    for start in range(0, ids_T.numel() - 1, window):
        chunk_T = ids_T[start:start + window]
        if chunk_T.numel() < 2:
            break
        logits_TV = model(input_ids=chunk_T.unsqueeze(0), use_cache=False).logits[0].float()
        total_nll += F.cross_entropy(logits_TV[:-1], chunk_T[1:], reduction="sum").item()
        scored += chunk_T.numel() - 1
    return math.exp(total_nll / scored)
