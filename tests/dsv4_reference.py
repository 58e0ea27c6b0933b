"""A float64 reference for DeepSeek-V4's attention, written from the equations, independent of ``variants``.

DeepSeek-V4 technical report, section 2.3 (transformers 5.23's ``DeepseekV4Attention`` documents the
same math): per-token, per-head loops over the whole sequence, no cache, no rings, no gathers; the
compressed entries evaluated window by window from the pooling formula, the indexer's picks by
sorting each query's visible scores. Weights are read from a layer's parameters by name.

Legend: T tokens, D hidden, N heads, H head dim, R rotary dims (a head's trailing R), m tokens per
entry, S entries, J indexer heads, I indexer head dim, G output groups, O rank per group.
"""

from __future__ import annotations

import math
import torch
from torch import Tensor

from tests.reference import rms_norm, rope


def _p(layer, name: str) -> Tensor:
    return layer.get_parameter(name).detach().double()


def layer_freqs(layer) -> list[float]:
    """The layer's rotary frequencies (data, like its weights)."""
    return [float(v) for v in layer.rope.inv_freq.double()]


def rope_tail(vec: Tensor, position: int, freqs: list[float]) -> Tensor:
    """RoPE (interleaved pairs) on the trailing 2·len(freqs) dims; a negative position undoes it."""
    R = 2 * len(freqs)
    out = vec.clone()
    out[..., -R:] = rope(vec[..., -R:], position, 1.0, "interleaved", freqs)
    return out


def pooled_entries(x_TD: Tensor, layer, prefix: str, *, width: int, rate: int, overlap: bool,
                   eps: float, freqs: list[float]) -> Tensor:
    """Entry w of each closed window: ``RMSNorm(sum_j softmax_j(gate_j + bias_j) * kv_j)`` per channel,
    over window w's tokens (HCA), or over window w-1's first-series and window w's second-series
    slots (CSA, ``overlap``); then RoPE at position w·m."""
    C, m = width, rate
    kv = x_TD @ _p(layer, f"{prefix}kv_proj.weight").T
    gate = x_TD @ _p(layer, f"{prefix}gate_proj.weight").T
    bias = _p(layer, f"{prefix}position_bias")
    entries = []
    for w in range(x_TD.shape[0] // m):
        slots_kv, slots_score = [], []
        if overlap and w > 0:
            for j in range((w - 1) * m, w * m):
                slots_kv.append(kv[j, :C])
                slots_score.append(gate[j, :C] + bias[j - (w - 1) * m, :C])
        for j in range(w * m, (w + 1) * m):
            lo = C if overlap else 0
            slots_kv.append(kv[j, lo:lo + C])
            slots_score.append(gate[j, lo:lo + C] + bias[j - w * m, lo:lo + C])
        weights = torch.softmax(torch.stack(slots_score), dim=0)  # over the slots, per channel
        pooled = (weights * torch.stack(slots_kv)).sum(0)
        entries.append(rope_tail(rms_norm(pooled, _p(layer, f"{prefix}kv_norm.weight"), eps), w * m, freqs))
    return torch.stack(entries) if entries else torch.zeros(0, C, dtype=torch.float64)


def brute_force_topk(scores: list[float], visible: int, k: int) -> set[int]:
    """The ``k`` best of the first ``visible`` entries, by sorting."""
    order = sorted(range(visible), key=lambda s: scores[s], reverse=True)
    return set(order[:k])


def dsv4(layer, x_TD: Tensor) -> Tensor:
    c = layer.config
    x = x_TD.double()
    T = x.shape[0]
    N, H, W, G, O, eps = c.heads, c.head_dim, c.window, c.o_groups, c.o_rank, c.norm_eps
    freqs = layer_freqs(layer)
    q_res = rms_norm(x @ _p(layer, "q_a_proj.weight").T, _p(layer, "q_a_norm.weight"), eps)
    q = (q_res @ _p(layer, "q_b_proj.weight").T).view(T, N, H)
    q = q / torch.sqrt((q * q).mean(-1, keepdim=True) + eps)  # unweighted, per head
    q = torch.stack([rope_tail(q[t], t, freqs) for t in range(T)])
    kv = rms_norm(x @ _p(layer, "kv_proj.weight").T, _p(layer, "kv_norm.weight"), eps)
    kv = torch.stack([rope_tail(kv[t], t, freqs) for t in range(T)])
    m = {"C": c.csa_rate, "H": c.hca_rate}.get(c.kind)
    entries = None
    if m is not None:
        entries = pooled_entries(x, layer, "compressor.", width=H, rate=m, overlap=c.kind == "C", eps=eps,
                                 freqs=freqs)
    visible_of = [0 if m is None else (t + 1) // m for t in range(T)]
    chosen = [set(range(n)) for n in visible_of]  # HCA: every closed entry
    if c.kind == "C":
        J, I = c.index_heads, c.index_head_dim
        keys = pooled_entries(x, layer, "indexer.compressor.", width=I, rate=m, overlap=True, eps=eps, freqs=freqs)
        q_i = (q_res @ _p(layer, "indexer.q_b_proj.weight").T).view(T, J, I)
        w_i = x @ _p(layer, "indexer.weights_proj.weight").T / math.sqrt(J)
        chosen = []
        for t in range(T):
            q_t = rope_tail(q_i[t], t, freqs)
            # I[t, s] = sum_h w_{t,h} ReLU(q_{t,h} . K_s) / sqrt(I), every entry s at once
            scores = ((q_t @ keys.T).clamp_min(0) * w_i[t].unsqueeze(1)).sum(0) / math.sqrt(I)
            scores = [float(v) for v in scores]
            chosen.append(brute_force_topk(scores, visible_of[t], c.index_topk))
    sinks = _p(layer, "sinks") if layer.sinks is not None else None
    o = torch.zeros(T, N, H, dtype=torch.float64)
    for t in range(T):
        keys_t = [kv[p] for p in range(max(0, t - W + 1), t + 1)]
        keys_t += [entries[s] for s in sorted(chosen[t])]
        K = torch.stack(keys_t)  # keys are also the values
        for n in range(N):
            logits = K @ q[t, n] / math.sqrt(H)
            e = torch.exp(logits)
            p = e / (e.sum() + (torch.exp(sinks[n]) if sinks is not None else 0.0))
            o[t, n] = rope_tail(p @ K, -t, freqs)  # undo the rotation V = K carried
    w_a = _p(layer, "o_a_proj.weight")  # [G·O, N·H/G], group g in rows [g·O, (g+1)·O)
    per_group = N * H // G
    flat = o.reshape(T, N * H)
    mid = torch.cat([flat[:, g * per_group:(g + 1) * per_group] @ w_a[g * O:(g + 1) * O].T for g in range(G)], dim=1)
    return mid @ _p(layer, "o_b_proj.weight").T


def reference(layer, x_BTD: Tensor) -> Tensor:
    return torch.stack([dsv4(layer, x_BTD[b]) for b in range(x_BTD.shape[0])])
