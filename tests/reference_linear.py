"""Float64 references for the linear-attention layers, written from the published equations (recurrent form).

Legend: B batch, L tokens, H key heads, N value heads, G = N / H, K key dim, V value dim, W conv kernel.

Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, eq. 10), with the state as a K x V matrix (value head n,
key head n // G):  S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  o_t = S_t^T q_t / sqrt(K).
Kimi Delta Attention (Kimi Linear, eq. 1): the same with Diag(alpha_t) in place of the scalar alpha_t:
S_t = (I - beta_t k_t k_t^T) Diag(alpha_t) S_{t-1} + beta_t k_t v_t^T.

The layers around the rule, from the models' definitions (Qwen3-Next and Kimi Linear configs and
transformers' modules): a causal depthwise convolution of kernel W over [q; k; v] then SiLU; q and k
divided by sqrt(|x|^2 + 1e-6); the gates; a gated RMSNorm per head; the output projection. Everything
here is written independently of ``variants``: only the parameters are read from the layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_conv(x_BLC: Tensor, w_CW: Tensor) -> Tensor:
    """y_t = sum_j w_j x_{t - (W-1) + j}, with zeros before the first token, then SiLU."""
    W = w_CW.shape[1]
    padded = torch.cat([x_BLC.new_zeros(x_BLC.shape[0], W - 1, x_BLC.shape[2]), x_BLC], dim=1)
    y = sum(w_CW[:, j] * padded[:, j:j + x_BLC.shape[1]] for j in range(W))
    return F.silu(y)


def unit(x: Tensor) -> Tensor:
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def delta_rule(q_BLHK: Tensor, k_BLHK: Tensor, v_BLNV: Tensor, alpha: Tensor, beta_BLN: Tensor) -> Tensor:
    """The rule, one token and one head at a time with explicit K x K matrices. ``alpha``: [B, L, N]
    (a scalar per head) or [B, L, N, K] (per channel)."""
    B, L, H, K = q_BLHK.shape
    N, V = v_BLNV.shape[2:]
    G = N // H
    out = torch.zeros(B, L, N, V, dtype=torch.float64)
    eye = torch.eye(K, dtype=torch.float64)
    for b in range(B):
        for n in range(N):
            S = torch.zeros(K, V, dtype=torch.float64)
            for t in range(L):
                q, k, v = q_BLHK[b, t, n // G], k_BLHK[b, t, n // G], v_BLNV[b, t, n]
                a, beta = alpha[b, t, n], beta_BLN[b, t, n]
                decay = torch.diag(a) if a.dim() == 1 else a * eye
                S = (eye - beta * torch.outer(k, k)) @ decay @ S + beta * torch.outer(k, v)
                out[b, t, n] = S.T @ q / K ** 0.5
    return out


def gated_rmsnorm(o: Tensor, gate: Tensor, weight: Tensor, eps: float, act) -> Tensor:
    return o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + eps) * weight * act(gate)


def gdn(layer, x_BLD: Tensor) -> Tensor:
    """Qwen3-Next's Gated DeltaNet layer from its parameters (``in_proj_qkvz`` grouped per key head)."""
    c = layer.config
    p = {name: t.detach().double() for name, t in layer.named_parameters()}
    x = x_BLD.double()
    B, L, _ = x.shape
    H, N, K, V = c.key_heads, c.value_heads, c.k_dim, c.v_dim
    G = N // H
    per_head = (x @ p["in_proj_qkvz.weight"].T).view(B, L, H, 2 * K + 2 * G * V)
    q, k, v, z = per_head.split([K, K, G * V, G * V], dim=-1)
    ba = (x @ p["in_proj_ba.weight"].T).view(B, L, H, 2 * G)
    b, a = ba[..., :G].reshape(B, L, N), ba[..., G:].reshape(B, L, N)
    mixed = causal_conv(torch.cat([q.reshape(B, L, -1), k.reshape(B, L, -1), v.reshape(B, L, -1)], -1),
                        p["conv1d.weight"][:, 0])
    q, k, v = mixed.split([H * K, H * K, N * V], dim=-1)
    alpha = torch.exp(-p["A_log"].exp() * F.softplus(a + p["dt_bias"]))
    o = delta_rule(unit(q.view(B, L, H, K)), unit(k.view(B, L, H, K)), v.view(B, L, N, V), alpha, torch.sigmoid(b))
    o = gated_rmsnorm(o, z.reshape(B, L, N, V), p["norm.weight"], c.norm_eps, F.silu)
    return o.reshape(B, L, N * V) @ p["out_proj.weight"].T


def kda(layer, x_BLD: Tensor) -> Tensor:
    """Kimi Linear's Kimi Delta Attention layer from its parameters."""
    c = layer.config
    p = {name: t.detach().double() for name, t in layer.named_parameters()}
    x = x_BLD.double()
    B, L, _ = x.shape
    H, K = c.key_heads, c.k_dim
    proj = [x @ p[f"{n}_proj.weight"].T for n in "qkv"]
    q, k, v = causal_conv(torch.cat(proj, -1), p["conv1d.weight"][:, 0]).split([H * K] * 3, dim=-1)
    f = (x @ p["forget_gate.f_a_proj.weight"].T) @ p["forget_gate.f_b_proj.weight"].T + p["forget_gate.dt_bias"]
    alpha = torch.exp(-p["forget_gate.A_log"].view(1, 1, H, 1).exp() * F.softplus(f.view(B, L, H, K)))
    beta = torch.sigmoid(x @ p["b_proj.weight"].T)
    o = delta_rule(unit(q.view(B, L, H, K)), unit(k.view(B, L, H, K)), v.view(B, L, H, K), alpha, beta)
    gate = ((x @ p["g_a_proj.weight"].T) @ p["g_b_proj.weight"].T).view(B, L, H, K)
    o = gated_rmsnorm(o, gate, p["o_norm.weight"], c.norm_eps, torch.sigmoid)
    return o.reshape(B, L, H * K) @ p["o_proj.weight"].T


REFERENCES = {"gdn": gdn, "kda": kda}
