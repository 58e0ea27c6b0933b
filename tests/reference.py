"""A float64 reference written from the papers' equations, independent of ``variants``' code.

Plain per-token, per-head loops over the full sequence (no cache, no kernels, no grouping tricks),
so that it shares no bug with the optimized paths it checks. Weights are read from a layer's
parameters by name; everything is cast to float64 first.

Legend: T tokens, D hidden, N heads, K kv heads, H head dim, C latent, R rotary, P nope, V value,
G rotary key heads of MLA (query head n uses rotary key n // (N / G)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _w(layer, name: str) -> Tensor | None:
    module = getattr(layer, name)
    return None if module is None else module.weight.detach().double()


def _b(layer, name: str) -> Tensor | None:
    module = getattr(layer, name)
    return None if module is None or module.bias is None else module.bias.detach().double()


def linear(x: Tensor, layer, name: str) -> Tensor:
    out = x @ _w(layer, name).T
    bias = _b(layer, name)
    return out if bias is None else out + bias


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight.double()


def rope(vec: Tensor, position: int, theta: float, layout: str, freqs: list[float] | None = None) -> Tensor:
    """RoFormer eq. 34: pair f is rotated by ``position * theta**(-2f/R)``, or by
    ``position * freqs[f]`` when a layer keeps an explicit subset of frequencies."""
    R = vec.shape[-1]
    out = vec.clone()
    for f in range(R // 2):
        angle = position * (theta ** (-2.0 * f / R) if freqs is None else freqs[f])
        i, j = (f, f + R // 2) if layout == "half" else (2 * f, 2 * f + 1)
        a, b = vec[..., i], vec[..., j]
        out[..., i] = a * math.cos(angle) - b * math.sin(angle)
        out[..., j] = b * math.cos(angle) + a * math.sin(angle)
    return out


def attend(q_TNE: Tensor, k_SNE: Tensor, v_SNV: Tensor, scale: float, causal: bool, *,
           window: int | None = None, sink_tokens: int = 0, sinks_N: Tensor | None = None,
           keys: list[list[int]] | None = None) -> Tensor:
    """softmax(q k^T * scale) v, token by token and head by head.

    ``window``: query t sees keys s with t - s < window, and keys s < ``sink_tokens`` (StreamingLLM);
    ``sinks_N``: head n's softmax has one more logit, ``sinks_N[n]``, whose column has no value
    (gpt-oss): ``p_s = exp(score_s) / (sum_s' exp(score_s') + exp(sink))``; ``keys[t]``: exactly
    the keys query t sees (a sparse selection).
    """
    T, N, _ = q_TNE.shape
    out = torch.zeros(T, N, v_SNV.shape[-1], dtype=torch.float64)
    for t in range(T):
        visible = list(range(t + 1 if causal else k_SNE.shape[0])) if keys is None else keys[t]
        if window is not None:
            visible = [s for s in visible if t - s < window or s < sink_tokens]
        for n in range(N):
            scores = torch.stack([q_TNE[t, n] @ k_SNE[s, n] for s in visible]) * scale
            if sinks_N is None:
                p = torch.softmax(scores, dim=0)
            else:
                p = torch.exp(scores) / (torch.exp(scores).sum() + torch.exp(sinks_N[n].double()))
            out[t, n] = sum(p[i] * v_SNV[s, n] for i, s in enumerate(visible))
    return out


def gqa(layer, x_TD: Tensor, memory_SD: Tensor | None = None) -> Tensor:
    """GQA (Ainslie et al. 2023): query head n uses kv head n // (N / K); RoPE on q and k."""
    c = layer.config
    x = x_TD.double()
    kv_in = x if memory_SD is None else memory_SD.double()
    N, K, H = c.heads, c.kv_heads, c.head_dim
    q = linear(x, layer, "q_proj").view(-1, N, H)
    k = linear(kv_in, layer, "k_proj").view(-1, K, H)
    v = linear(kv_in, layer, "v_proj").view(-1, K, H)
    if memory_SD is None:
        q = torch.stack([rope(q[t], t, c.rope_theta, c.rope_layout) for t in range(q.shape[0])])
        k = torch.stack([rope(k[t], t, c.rope_theta, c.rope_layout) for t in range(k.shape[0])])
    group = N // K
    k_heads = torch.stack([k[:, n // group] for n in range(N)], dim=1)
    v_heads = torch.stack([v[:, n // group] for n in range(N)], dim=1)
    scale = c.softmax_scale if c.softmax_scale is not None else 1 / math.sqrt(H)
    sinks = getattr(layer, "sinks", None)
    o = attend(q, k_heads, v_heads, scale, causal=memory_SD is None, window=getattr(c, "window", None),
               sink_tokens=getattr(c, "sink_tokens", 0), sinks_N=None if sinks is None else sinks.detach())
    return linear(o.reshape(o.shape[0], N * H), layer, "o_proj")


def _group_freqs(layer, groups: int) -> list[list[float] | None]:
    """Explicit per-group frequencies when the layer's rope holds a ``[G, R/2]`` table (data, like
    the weights); None per group means the theta formula."""
    inv = getattr(layer.rope, "inv_freq", None)
    if inv is None or inv.dim() == 1:
        return [None] * groups
    assert inv.shape[0] == groups
    return [[float(v) for v in row] for row in inv.double()]


def mla(layer, x_TD: Tensor, memory_SD: Tensor | None = None) -> Tensor:
    """DeepSeek-V2 eqs. 9-19 (section 2.1), with the optional query compression of eqs. 12-13.

    Generalised for layers converted from GQA: G rotary keys per token (query head n uses key
    ``n // (N / G)``, each group with its own frequencies) and an optional RMSNorm on c_kv.
    """
    q_full, k_full, v_c, scale = mla_heads(layer, x_TD, memory_SD)
    o = attend(q_full, k_full, v_c, scale, causal=memory_SD is None)  # eq. 18
    return linear(o.reshape(o.shape[0], -1), layer, "o_proj")  # eq. 19


def mla_heads(layer, x_TD: Tensor, memory_SD: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, float]:
    """MLA's per-head queries, keys and values (eqs. 9-17) and the softmax scale, before attention."""
    c = layer.config
    x = x_TD.double()
    kv_in = x if memory_SD is None else memory_SD.double()
    N, C, R, P, V = c.heads, c.d_c, c.d_r, c.nope_head_dim, c.v_head_dim
    G = c.rope_heads
    group = [n // (N // G) for n in range(N)]  # rotary key of each query head
    eps = c.norm_eps
    if c.q_rank is None:
        q = linear(x, layer, "q_proj")
    else:
        c_q = rms_norm(linear(x, layer, "q_a_proj"), layer.q_a_norm.weight.detach(), eps)  # eq. 12
        q = linear(c_q, layer, "q_b_proj")  # eqs. 13-14
    q = q.view(-1, N, P + R)
    q_c, q_r = q[..., :P], q[..., P:]
    kv_a = linear(kv_in, layer, "kv_a_proj")
    c_kv = kv_a[:, :C]
    if c.latent_norm:
        c_kv = rms_norm(c_kv, layer.kv_a_norm.weight.detach(), eps)  # eq. 9
    k_r = kv_a[:, C:].reshape(-1, G, R)  # eq. 15, before rotation, one key per group
    w_kv = _w(layer, "kv_b_proj").view(N, P + V, C)
    k_c = torch.einsum("npc,sc->snp", w_kv[:, :P], c_kv)  # eq. 10
    v_c = torch.einsum("nvc,sc->snv", w_kv[:, P:], c_kv)  # eq. 11
    if memory_SD is None:
        freqs = _group_freqs(layer, G)
        n_g = N // G  # query heads per group, which share the group's frequencies
        q_r = torch.stack([torch.cat([rope(q_r[t, g * n_g:(g + 1) * n_g], t, c.rope_theta, c.rope_layout, freqs[g])
                                      for g in range(G)]) for t in range(q_r.shape[0])])
        k_r = torch.stack([torch.stack([rope(k_r[s, g], s, c.rope_theta, c.rope_layout, freqs[g])
                                        for g in range(G)]) for s in range(k_r.shape[0])])
    q_full = torch.cat([q_c, q_r], dim=-1)  # eq. 16
    k_full = torch.cat([k_c, k_r[:, group]], dim=-1)  # eq. 17: k_rope shared (within a group)
    scale = c.softmax_scale if c.softmax_scale is not None else 1 / math.sqrt(P + R)
    return q_full, k_full, v_c, scale


def reference(layer, x_BTD: Tensor, memory_BSD: Tensor | None = None) -> Tensor:
    fn = mla if layer.variant == "mla" else gqa
    outs = [fn(layer, x_BTD[b], None if memory_BSD is None else memory_BSD[b]) for b in range(x_BTD.shape[0])]
    return torch.stack(outs)


def rel_err(actual: Tensor, expected: Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()
