"""The gated delta rule, the token mixer of Gated DeltaNet and Kimi Delta Attention, and its kernel protocol.

Legend: B batch, L tokens of the step, H key heads, N value heads (one state per value head, N % H == 0),
K key dim d_k, V value dim d_v, C chunk length, G = N / H value heads per key head.

The rule (Yang, Kautz, Hatamizadeh 2024, "Gated Delta Networks", eq. 10; Kimi Linear, eq. 1), per value
head, with state S of ``[K, V]``, unit-norm query and key, decay ``a_t = exp(g_t)`` and write strength
``beta_t`` in (0, 1)::

    S_t = a_t * S_{t-1}                       # GDN: a scalar per head; KDA: a vector over K (diag(a_t))
    S_t = S_t + k_t (beta_t (v_t - S_t^T k_t))^T   # the delta rule: write only what S does not predict
    o_t = S_t^T (q_t / sqrt(K))

Value head n reads key head ``n // G`` (transformers' ``repeat_interleave`` over the key heads).

A kernel is any callable meeting ``DeltaRuleKernel``. It receives the step's q, k (already
L2-normalised by the layer), v, the log-decay ``g`` (``[B, L, N]`` per head, or ``[B, L, N, K]`` per
channel), ``beta`` and the layer's recurrent state ``[B, N, K, V]``; it reads ``state`` and writes the new state
into ``state_out``, which is ``state`` itself in a generation loop (**in place**: the state cache's own
storage, nothing reallocated) and a twin buffer of the cache when the harness repeats one step at the
same context (``StateCache.repeatable``: the same bytes move, the step stays repeatable); it returns
``[B, L, N, V]`` in v's
dtype, computing in the state's dtype (float32, or float64 in the numerics reference), as
transformers' and fla's kernels do. fla plugs in here: ``chunk_gated_delta_rule`` /
``fused_recurrent_gated_delta_rule`` for a per-head ``g`` and ``chunk_kda`` / ``fused_recurrent_kda``
for a per-channel one, each given ``initial_state=state, output_final_state=True`` and the final state
copied back into ``state`` (or written in place where the kernel takes an in-place state, as
vLLM's and sglang's ``fused_recurrent`` kernels do); ``docs/linear_attention.md`` has the wrapper.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class DeltaRuleKernel(Protocol):
    """A gated-delta-rule kernel; the marker ``delta_rule = True`` tells a linear layer it applies."""

    name: str
    delta_rule: bool

    def __call__(self, q_BLHK: Tensor, k_BLHK: Tensor, v_BLNV: Tensor, g: Tensor, beta_BLN: Tensor,
                 state_BNKV: Tensor, *, scale: float, state_out: Tensor | None = None) -> Tensor: ...


def is_delta_rule_kernel(kernel: object) -> bool:
    return bool(getattr(kernel, "delta_rule", False))


def _heads_like_values(x_BLHK: Tensor, num_value_heads: int) -> Tensor:
    """Key-head tensors repeated so that value head n reads key head n // G (grouped value attention)."""
    group = num_value_heads // x_BLHK.shape[2]
    return x_BLHK if group == 1 else x_BLHK.repeat_interleave(group, dim=2)


def recurrent_update(q_BLNK: Tensor, k_BLNK: Tensor, v_BLNV: Tensor, g: Tensor, beta_BLN: Tensor,
                     state_BNKV: Tensor, state_out: Tensor, *, per_channel: bool) -> Tensor:
    """The rule token by token from ``state_BNKV`` into ``state_out`` (may be the same tensor); q already
    scaled. Returns [B, L, N, V]."""
    B, L, N, V = v_BLNV.shape
    o_BLNV = v_BLNV.new_empty(B, L, N, V)
    source = state_BNKV
    for t in range(L):
        a_t = g[:, t].exp()
        torch.mul(source, a_t[..., None] if per_channel else a_t[..., None, None], out=state_out)
        source = state_BNKV = state_out
        k_BNK = k_BLNK[:, t]
        predicted_BNV = torch.einsum("bnkv,bnk->bnv", state_BNKV, k_BNK)
        delta_BNV = (v_BLNV[:, t] - predicted_BNV) * beta_BLN[:, t, :, None]
        state_BNKV.add_(torch.matmul(k_BNK[..., None], delta_BNV[..., None, :]))  # the rank-1 write k delta^T
        o_BLNV[:, t] = torch.einsum("bnkv,bnk->bnv", state_BNKV, q_BLNK[:, t])
    return o_BLNV


def _prepare(q_BLHK: Tensor, k_BLHK: Tensor, v_BLNV: Tensor, g: Tensor, beta_BLN: Tensor, state: Tensor,
             scale: float) -> tuple[Tensor, ...]:
    """Everything in the state's dtype, keys repeated to the value heads, q scaled."""
    acc = state.dtype
    N = v_BLNV.shape[2]
    q_BLNK = _heads_like_values(q_BLHK, N).to(acc) * scale
    k_BLNK = _heads_like_values(k_BLHK, N).to(acc)
    return q_BLNK, k_BLNK, v_BLNV.to(acc), g.to(acc), beta_BLN.to(acc)


class RecurrentDeltaRule:
    """The readable baseline: one state update per token (what ``eager`` runs; any step length)."""

    name = "recurrent"
    delta_rule = True

    def __call__(self, q_BLHK: Tensor, k_BLHK: Tensor, v_BLNV: Tensor, g: Tensor, beta_BLN: Tensor,
                 state_BNKV: Tensor, *, scale: float, state_out: Tensor | None = None) -> Tensor:
        q, k, v, g, beta = _prepare(q_BLHK, k_BLHK, v_BLNV, g, beta_BLN, state_BNKV, scale)
        out = state_BNKV if state_out is None else state_out
        o_BLNV = recurrent_update(q, k, v, g, beta, state_BNKV, out, per_channel=g.dim() == 4)
        return o_BLNV.to(v_BLNV.dtype)


def _pairwise(a_NCK: Tensor, b_NCK: Tensor, gamma: Tensor, keep_CC: Tensor, per_channel: bool) -> Tensor:
    """``sum_k a_ik b_jk exp(gamma_i - gamma_j)`` where ``keep_CC[i, j]``, else 0 (one chunk; leading
    dims batch and heads). Per head: a matmul scaled by the decay between j and i; per channel the
    decay differs by k, so the product is taken per (i, j, k) with the decay inside (bounded: only
    j <= i is exponentiated, never an exp(+cumulative) that could overflow)."""
    if not per_channel:
        diff_CC = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~keep_CC, float("-inf"))
        return (a_NCK @ b_NCK.transpose(-1, -2)) * diff_CC.exp()
    diff_CCK = (gamma[..., :, None, :] - gamma[..., None, :, :]).masked_fill(~keep_CC[..., None], float("-inf"))
    return torch.einsum("...ijk,...jk->...ij", a_NCK[..., :, None, :] * diff_CCK.exp(), b_NCK)


class ChunkedDeltaRule:
    """The chunked (WY / UT-transform) form for a step of many tokens; one token: the recurrent update.

    Per chunk of C tokens with state S0 and cumulative log-decay Gamma_i (Yang et al. 2024, sec. 3.3;
    transformers' ``torch_chunk_gated_delta_rule`` and ``chunk_kimi_delta_attention`` compute the same):

        T   = (I + tril(diag(beta) (K K^T) * D, -1))^-1      D_ij = exp(Gamma_i - Gamma_j) (per channel inside)
        U   = T diag(beta) V,   W = T diag(beta) (K * exp(Gamma))
        V'  = U - W S0                                          # what the chunk writes, corrected for S0
        O   = (Q * exp(Gamma)) S0 + tril((Q K^T) * D) V'
        S_C = exp(Gamma_C) * S0 + (K * exp(Gamma_C - Gamma))^T V'

    A step of one token (decode) runs the recurrent update, as transformers, vLLM and fla route it.
    """

    name = "chunked"
    delta_rule = True

    def __init__(self, chunk: int = 64) -> None:
        self.chunk = chunk

    def __call__(self, q_BLHK: Tensor, k_BLHK: Tensor, v_BLNV: Tensor, g: Tensor, beta_BLN: Tensor,
                 state_BNKV: Tensor, *, scale: float, state_out: Tensor | None = None) -> Tensor:
        q, k, v, g, beta = _prepare(q_BLHK, k_BLHK, v_BLNV, g, beta_BLN, state_BNKV, scale)
        per_channel = g.dim() == 4
        out = state_BNKV if state_out is None else state_out
        if q.shape[1] == 1:
            return recurrent_update(q, k, v, g, beta, state_BNKV, out, per_channel=per_channel).to(v_BLNV.dtype)
        return self._chunks(q, k, v, g, beta, state_BNKV, out, per_channel).to(v_BLNV.dtype)

    def _chunks(self, q_BLNK: Tensor, k_BLNK: Tensor, v_BLNV: Tensor, g: Tensor, beta_BLN: Tensor,
                state_BNKV: Tensor, state_out: Tensor, per_channel: bool) -> Tensor:
        B, L, N, V = v_BLNV.shape
        C = self.chunk
        pad = (C - L % C) % C
        # Padded tokens have k = 0, beta = 0, g = 0: they neither decay nor write the state.
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)).transpose(1, 2) for x in (q_BLNK, k_BLNK, v_BLNV))  # [B, N, L', X]
        beta_BNL = F.pad(beta_BLN, (0, 0, 0, pad)).transpose(1, 2)
        g_BNL = (F.pad(g, (0, 0, 0, 0, 0, pad)) if per_channel else F.pad(g, (0, 0, 0, pad))).transpose(1, 2)
        lower_CC = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        strict_CC = lower_CC.tril(-1)
        o_BNLV = v.new_empty(v.shape)
        S_BNKV = state_BNKV
        for start in range(0, L + pad, C):
            span = slice(start, start + C)
            q_c, k_c, v_c, beta_c = q[:, :, span], k[:, :, span], v[:, :, span], beta_BNL[:, :, span]
            gamma = g_BNL[:, :, span].cumsum(dim=2)  # [B, N, C] or [B, N, C, K]
            gamma_b = gamma if per_channel else gamma[..., None]  # broadcast over K
            k_beta = k_c * beta_c[..., None]
            A_CC = _pairwise(k_beta, k_c, gamma, strict_CC, per_channel)
            T_system = A_CC + torch.eye(C, dtype=A_CC.dtype, device=A_CC.device)
            U_CV = torch.linalg.solve_triangular(T_system, v_c * beta_c[..., None], upper=False, unitriangular=True)
            W_CK = torch.linalg.solve_triangular(T_system, k_beta * gamma_b.exp(), upper=False, unitriangular=True)
            v_new = U_CV - W_CK @ S_BNKV
            intra_CC = _pairwise(q_c, k_c, gamma, lower_CC, per_channel)
            o_BNLV[:, :, span] = (q_c * gamma_b.exp()) @ S_BNKV + intra_CC @ v_new
            last = gamma_b[:, :, -1:]  # [B, N, 1, 1 or K]
            written_KV = (k_c * (last - gamma_b).exp()).transpose(-1, -2) @ v_new
            S_BNKV = S_BNKV * last.transpose(-1, -2).exp() + written_KV
        state_out.copy_(S_BNKV)
        return o_BNLV[:, :, :L].transpose(1, 2)


RECURRENT = RecurrentDeltaRule()
CHUNKED = ChunkedDeltaRule()
