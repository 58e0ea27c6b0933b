"""DeepSeek-V3.2's sparse attention in float64, written from the equations (no cache, no kernels).

Independent of ``variants``' code and of transformers': plain loops over tokens and heads. Weights
are read from a layer's parameters by name (``indexer.wq_b``, ``indexer.wk``, ``indexer.k_norm``,
``indexer.weights_proj``, and MLA's), everything cast to float64 first.

Legend: T tokens, D hidden, H indexer heads, I indexer head dim, R rotary dims, k top-k.

The lightning indexer (DeepSeek-V3.2-Exp): ``c_q = RMSNorm(W_DQ x)`` (MLA's compressed query),
``q_{t,h} = W_q c_q``, ``k_s = LayerNorm(W_k x_s)``, RoPE on the first R dims of both (half-split
pairs), ``w_{t,h} = W_w x_t / sqrt(H)``, ``I[t,s] = sum_h w_{t,h} ReLU(q_{t,h}·k_s / sqrt(I))``
for ``s <= t``; query t attends, by MLA's equations, to its ``min(k, t + 1)`` highest-scoring tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tests.reference import attend, linear, mla_heads, rms_norm, rope


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.double() + bias.double()


def index_scores(layer, x_TD: Tensor) -> Tensor:
    """``[T, T]`` indexer scores ``I[t, s]``, -inf where ``s > t``."""
    c, ix = layer.config, layer.indexer
    x = x_TD.double()
    T = x.shape[0]
    H, I, R = c.index_heads, c.index_head_dim, c.d_r
    c_q = rms_norm(linear(x, layer, "q_a_proj"), layer.q_a_norm.weight.detach(), c.norm_eps)
    q = linear(c_q, ix, "wq_b").view(T, H, I)
    k = layer_norm(linear(x, ix, "wk"), ix.k_norm.weight.detach(), ix.k_norm.bias.detach(), ix.k_norm.eps)
    q = torch.stack([torch.cat([rope(q[t, :, :R], t, c.rope_theta, "half"), q[t, :, R:]], dim=-1)
                     for t in range(T)])
    k = torch.stack([torch.cat([rope(k[s, :R], s, c.rope_theta, "half"), k[s, R:]]) for s in range(T)])
    w = linear(x, ix, "weights_proj") / math.sqrt(H)
    scores = torch.full((T, T), float("-inf"), dtype=torch.float64)
    for t in range(T):
        for s in range(t + 1):
            scores[t, s] = sum(w[t, h] * torch.relu(q[t, h] @ k[s] / math.sqrt(I)) for h in range(H))
    return scores


def top_k(scores_TT: Tensor, k: int) -> list[list[int]]:
    """Brute force: for each query, its visible tokens sorted by score, the first ``min(k, t + 1)``."""
    selected = []
    for t in range(scores_TT.shape[0]):
        ranked = sorted(range(t + 1), key=lambda s: -scores_TT[t, s].item())
        selected.append(sorted(ranked[:min(k, t + 1)]))
    return selected


def dsa(layer, x_TD: Tensor) -> Tensor:
    """MLA (DeepSeek-V2 eqs. 9-19) with query t attending only to the tokens its indexer selects."""
    q_full, k_full, v_c, scale = mla_heads(layer, x_TD)
    keys = top_k(index_scores(layer, x_TD), layer.config.index_topk)
    o = attend(q_full, k_full, v_c, scale, causal=True, keys=keys)
    return linear(o.reshape(o.shape[0], -1), layer, "o_proj")


def reference_dsa(layer, x_BTD: Tensor) -> Tensor:
    return torch.stack([dsa(layer, x_BTD[b]) for b in range(x_BTD.shape[0])])
