"""DeepSeek-V3.2's lightning indexer: which cached tokens each query attends to (DSA).

Legend: B batch, L queries, M tokens whose key a step computes, T keys readable (cache rows),
D hidden, Q query rank (q_lora_rank), H indexer heads (index_heads), I indexer head dim
(index_head_dim), R rotary dims (MLA's d_r), K selected tokens per query (min(index_topk, T)).

DeepSeek-V3.2-Exp's DSA, as transformers 5.23's ``DeepseekV32Indexer`` runs it:
- query ``q_{t,h} = W_q c_q`` (``wq_b``), H heads of I dims, from MLA's compressed query
  ``c_q = RMSNorm(q_a_proj x)``;
- key ``k_s = LayerNorm(W_k x_s)`` (``wk``, ``k_norm``: eps 1e-6, weight and bias), one I-dim head
  shared by every indexer head, cached per token;
- RoPE on the first R dims of both, half-split (MLA's own rope is interleaved), at MLA's frequencies;
- per-head weights ``w_{t,h} = W_w x_t · H^-1/2`` (``weights_proj``);
- score ``I[t,s] = sum_h w_{t,h} · ReLU(q_{t,h}·k_s · I^-1/2)`` over the causal prefix ``s <= t``;
- each query keeps its top ``min(index_topk, visible)`` tokens, ties broken by the lower index
  (``stable_topk``).

The ``I^-1/2`` goes on the weights rather than on the [L, H, T] logits (ReLU commutes with a
positive factor). DeepSeek's published indexer also rotates q and k by a Hadamard transform and
scores in fp8; the transform is orthogonal (dot products unchanged) and fp8 is a storage choice,
so, like transformers, this computes the logits in the compute dtype and sums the heads in (at
least) float32. Prefill scores blocks of queries (``score_bytes`` of float32 logits at most), so a
long prompt never holds all [L, H, T] of them, in at most ``attnbench.variants.topk.MAX_BLOCKS`` blocks
(``stable_topk`` is there too: selecting is not this family's alone).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from attnbench.variants.cost import Cost, matmul_flops
from attnbench.variants.rope import Rope
from attnbench.variants.topk import block_rows, stable_topk


def query_positions(q_start: int | Tensor, *, batch: int, q_len: int, device: torch.device) -> Tensor:
    """``[B, L]`` absolute position of each query (``q_start``: one start, or one per sequence ``[B]``)."""
    offsets_L = torch.arange(q_len, device=device)
    if isinstance(q_start, Tensor):
        return q_start.to(device).view(-1, 1) + offsets_L
    return (q_start + offsets_L).expand(batch, q_len)


def selected_keep(idx_BLK: Tensor, kv_len: int) -> Tensor:
    """``[B, 1, L, T]`` booleans, True at the cache rows each query selected (-1 selects nothing)."""
    B, L, _ = idx_BLK.shape
    keep_BLX = torch.zeros(B, L, kv_len + 1, dtype=torch.bool, device=idx_BLK.device)
    # Unused slots (-1) land in the extra column T, dropped below.
    keep_BLX.scatter_(-1, torch.where(idx_BLK < 0, kv_len, idx_BLK), True)
    return keep_BLX[..., :kv_len].unsqueeze(1)


class LightningIndexer(nn.Module):
    """The indexer's weights (transformers' module names) and its selection; ``rope`` rotates R dims."""

    def __init__(self, *, hidden: int, q_rank: int, heads: int, head_dim: int, topk: int, rope: Rope,
                 norm_eps: float = 1e-6, score_bytes: int = 64 << 20) -> None:
        super().__init__()
        assert rope.layout == "half" and rope.rotary_dim <= head_dim, "the indexer rotates its first R dims, half-split"
        self.heads, self.head_dim, self.topk = heads, head_dim, topk
        self.wq_b = nn.Linear(q_rank, heads * head_dim, bias=False)
        self.wk = nn.Linear(hidden, head_dim, bias=False)
        self.k_norm = nn.LayerNorm(head_dim, eps=norm_eps)
        self.weights_proj = nn.Linear(hidden, heads, bias=False)
        self.rope = rope
        self.score_bytes = score_bytes

    def _rotate(self, x_BLXI: Tensor, start: int | Tensor) -> Tensor:
        R = self.rope.rotary_dim
        x_rot, x_pass = x_BLXI.split([R, self.head_dim - R], dim=-1)
        return torch.cat((self.rope(x_rot, start), x_pass), dim=-1)

    def key(self, x_BMD: Tensor, start: int | Tensor) -> Tensor:
        """``[B, M, I]``: the rotated indexer key of each new token, the row the cache keeps."""
        return self._rotate(self.k_norm(self.wk(x_BMD)), start)

    def forward(self, x_BLD: Tensor, c_q_BLQ: Tensor, k_BTI: Tensor, *, q_start: int | Tensor) -> Tensor:
        """``idx_BLK`` (int64): each query's selected cache rows, best first, -1 where it sees fewer than K."""
        K = min(self.topk, k_BTI.shape[1])
        blocks = []
        for scores_BnT in self._scores(x_BLD, c_q_BLQ, k_BTI, q_start=q_start, budget=self.score_bytes):
            values_BnK, idx_BnK = stable_topk(scores_BnT, K)
            blocks.append(torch.where(values_BnK == float("-inf"), -1, idx_BnK))
        return torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]

    def scores(self, x_BLD: Tensor, c_q_BLQ: Tensor, k_BTI: Tensor, *, q_start: int | Tensor) -> Tensor:
        """``I_BLT``: every query's scores at once (-inf past its causal prefix), what ``forward`` ranks.
        For checks on small shapes (the numerics gate); the step itself scores in blocks."""
        return torch.cat(list(self._scores(x_BLD, c_q_BLQ, k_BTI, q_start=q_start, budget=None)), dim=1)

    def _scores(self, x_BLD: Tensor, c_q_BLQ: Tensor, k_BTI: Tensor, *, q_start: int | Tensor,
                budget: int | None) -> Iterator[Tensor]:
        """The scores of one block of queries after another (``budget`` None: one block)."""
        B, L, _ = x_BLD.shape
        H, I = self.heads, self.head_dim
        T = k_BTI.shape[1]
        acc = torch.promote_types(x_BLD.dtype, torch.float32)
        q_BLHI = self._rotate(self.wq_b(c_q_BLQ).view(B, L, H, I), q_start)
        w_BLH = self.weights_proj(x_BLD).to(acc) * (H ** -0.5 * I ** -0.5)
        q_pos_BL = query_positions(q_start, batch=B, q_len=L, device=x_BLD.device)
        kv_pos_T = torch.arange(T, device=x_BLD.device)
        k_BIT = k_BTI.transpose(1, 2)
        rows = L if budget is None else block_rows(L, B * H * T * acc.itemsize, budget)
        for l0 in range(0, L, rows):
            l1 = min(l0 + rows, L)
            n = l1 - l0
            # All H heads of the block's queries against the one shared key: one matmul.
            logits_BXT = torch.bmm(q_BLHI[:, l0:l1].reshape(B, n * H, I), k_BIT)
            relu_XHT = torch.relu(logits_BXT).to(acc).view(B * n, H, T)
            scores_BnT = torch.bmm(w_BLH[:, l0:l1].reshape(B * n, 1, H), relu_XHT).view(B, n, T)
            visible_BnT = kv_pos_T <= q_pos_BL[:, l0:l1, None]
            yield scores_BnT.masked_fill(visible_BnT.logical_not(), float("-inf"))

    def cost(self, *, hidden: int, q_rank: int, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype, key_bytes: int | None = None) -> Cost:
        """The indexer's share of a step (all of it in ``indexer_flops``/``indexer_bytes``): its
        projections, the scan of every visible key, its key rows read and written (``key_bytes`` per
        row as the cache stores it; None: I values of ``dtype``)."""
        b = dtype.itemsize
        B, L, S, W = batch, q_len, cached, new_kv
        T, D, Q, H, I = S + W, hidden, q_rank, self.heads, self.head_dim
        flops = (matmul_flops(B * L, Q, H * I) + matmul_flops(B * L, D, H)  # wq_b, weights_proj
                 + matmul_flops(B * W, D, I)  # wk on the new tokens
                 + matmul_flops(B * L * H, I, T) + matmul_flops(B * L, H, T))  # logits, weighted sum over heads
        params = sum(p.numel() for p in self.parameters())
        row = I * b if key_bytes is None else key_bytes
        weight_bytes, read, write = params * b, B * S * row, B * W * row
        acc = max(b, 4)  # the head sum's dtype: at least float32
        rows = min(L, block_rows(L, B * H * T * acc, self.score_bytes))  # as forward blocks the queries
        transient = B * L * H * I * b * 2 + B * rows * H * T * (2 * b + acc) + B * L * T * (acc + 1) + B * L * H * acc
        return Cost(flops=flops, weight_bytes=weight_bytes, cache_read_bytes=read, cache_write_bytes=write,
                    activation_bytes=0, params=params, kv_bytes_per_token=row, transient_bytes=transient,
                    indexer_flops=flops, indexer_bytes=weight_bytes + read + write)
