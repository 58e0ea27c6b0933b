"""The ``reference`` source of each exported Definition: the attention kernel in float64, self-contained.

Legend: B batch_size, L query tokens, T kv tokens, N query heads, K kv heads, E head dim,
C latent (ckv) dim, R rotary (kpe) dim.

Each source defines ``run(...)`` over the Definition's inputs, as flashinfer-bench runs a reference;
the queries are the last L of the T positions (decode: L new tokens after T - L cached; prefill:
L = T), causal. These restate the math of ``attnbench.variants.kernels.eager`` and ``mla_eager`` without
importing attnbench, so that a reader of the trace can run them alone.
"""

from __future__ import annotations

from collections.abc import Callable

GQA_SOURCE = '''import torch


def run(q, k, v, sm_scale):
    """Causal grouped-query attention in float64: query head n reads kv head n // (N / K).

    q [batch_size, len_q, num_qo_heads, head_dim], k and v [batch_size, len_kv, num_kv_heads, head_dim];
    the queries are the last len_q positions of len_kv. Returns [batch_size, len_q, num_qo_heads, head_dim].
    """
    B, L, N, E = q.shape
    T, K = k.shape[1], k.shape[2]
    q64, k64, v64 = q.to(torch.float64), k.to(torch.float64), v.to(torch.float64)
    k64 = k64.repeat_interleave(N // K, dim=2)
    v64 = v64.repeat_interleave(N // K, dim=2)
    scores = torch.einsum("blne,btne->bnlt", q64, k64) * sm_scale
    q_pos = torch.arange(T - L, T, device=q.device).view(L, 1)
    keep = q_pos >= torch.arange(T, device=q.device).view(1, T)
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bnlt,btne->blne", probs, v64).to(q.dtype)
'''

MLA_SOURCE = '''import torch


def run(q_nope, q_pe, ckv, kpe, sm_scale):
    """MLA's absorbed attention in float64 (DeepSeek-V2 sec. 2.1.3): one latent key-value per token.

    q_nope [batch_size, len_q, num_qo_heads, head_dim_ckv] (the query already multiplied by W_UK),
    q_pe [batch_size, len_q, num_qo_heads, head_dim_kpe], ckv [batch_size, len_kv, head_dim_ckv],
    kpe [batch_size, len_kv, head_dim_kpe]; causal, the queries the last len_q positions.
    Returns the latent output [batch_size, len_q, num_qo_heads, head_dim_ckv].
    """
    L, T = q_nope.shape[1], ckv.shape[1]
    qn, qp = q_nope.to(torch.float64), q_pe.to(torch.float64)
    c, r = ckv.to(torch.float64), kpe.to(torch.float64)
    scores = (torch.einsum("blnc,btc->bnlt", qn, c) + torch.einsum("blnr,btr->bnlt", qp, r)) * sm_scale
    q_pos = torch.arange(T - L, T, device=ckv.device).view(L, 1)
    keep = q_pos >= torch.arange(T, device=ckv.device).view(1, T)
    probs = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    return torch.einsum("bnlt,btc->blnc", probs, c).to(q_nope.dtype)
'''


def load_run(source: str) -> Callable[..., object]:
    """The ``run`` a Definition's reference source defines.

    A Definition's reference is source text by flashinfer-bench's design (its own runner executes
    it the same way); only run a folder's references if you trust the folder.
    """
    namespace: dict[str, object] = {}
    exec(compile(source, "<flashinfer-trace reference>", "exec"), namespace)  # noqa: S102 - see above
    run = namespace.get("run")
    assert callable(run), "a Definition's reference defines run(...)"
    return run
