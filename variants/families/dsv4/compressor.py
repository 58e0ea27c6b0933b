"""DeepSeek-V4's compressor and lightning indexer: the compressed half of its CSA and HCA layers.

Legend: B batch, L new tokens, D hidden, C a compressor's entry width (the head dim H, or the
indexer's I), X = 2C (CSA's two series) or C (HCA), m tokens per entry, S entries, n new entries,
P = 2 (a token's projected kv and its gate, kept side by side), Q query rank, J indexer heads,
k selected entries, F = R/2 rotary frequency pairs.

**Compression** (DeepSeek-V4 technical report, sections 2.3.1-2.3.2; transformers 5.23's
``DeepseekV4HCACompressor`` / ``DeepseekV4CSACompressor`` are the executable spec). Every token
gets ``kv = x·W_kv`` and ``gate = x·W_z`` of width X. HCA: each closed window i of m tokens gives
``entry_i = RMSNorm(sum_j softmax_j(gate_j + bias_{j mod m}) * kv_j)``, the softmax over the window's
tokens, per channel, in float32. CSA: two series, Ca (the first C channels) and Cb (the last C);
entry w pools 2m slots, Ca of window w-1 (absent, weight 0, for w = 0) and Cb of window w:
overlapping windows of width 2m and stride m. The entry is rotated (partial RoPE on its trailing
R dims) at position ``w·m``. An entry is visible to query t iff ``w < (t + 1) // m``: its window
has closed at t.

**State.** Entries are written when their window closes, so the cache keeps, beside them, the
projected ``[kv; gate]`` of the tokens still needed: a ring of the last m tokens (HCA's open
window, CSA's Cb series) and for CSA a ring of the last 2m tokens' Ca (the open window's and the
previous one's). A step reads those rows before writing its own, so repeating a step at the same
position does the same work (the harness times it so).

**Indexer** (CSA only, section 2.3.1): its own compressor at the indexer width I (the same
windows, its own weights), a query ``q_I = q_residual·W_qI`` of J heads of I, rotated at the
query's position, per-head weights ``w = x·W_w · J^-1/2``, and the score
``I[t, s] = sum_h w_{t,h} · ReLU(q_{t,h} · K_s) · I^-1/2`` (float32, as transformers computes it);
each query keeps the top ``index_topk`` of the entries visible to it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnbench.variants.cache import CacheField, KVCache
from attnbench.variants.topk import stable_topk
from attnbench.variants.rope import Rope, rotate

_PAIR = 2  # a token's kv and gate


def rotate_tail_(x: Tensor, cos_LF: Tensor, sin_LF: Tensor, rope: Rope) -> Tensor:
    """Rotate the trailing R = 2F dims of ``x`` in place (positions on dim 1) and return it: V4's
    partial RoPE (``x[..., -R:]``, the model's ``[nope | rope]`` head layout). ``x`` is a fresh tensor."""
    R = 2 * cos_LF.shape[-1]
    x[..., -R:] = rotate(x[..., -R:], cos_LF, sin_LF, rope.layout)
    return x


def _positions(lo: int, hi: int, ring: int, device: torch.device) -> Tensor:
    """Ring rows of positions [lo, hi)."""
    return torch.arange(lo, hi, device=device) % ring


def compressor_fields(width: int, rate: int, *, overlap: bool, prefix: str = "",
                      rope: int = 0) -> tuple[CacheField, ...]:
    """A compressor's cache fields: its entries (one per m tokens; ``rope`` trailing rotary dims) and the
    rings of open-window state."""
    C, m = width, rate
    entries = CacheField(f"{prefix}entries", (C,), every=m, rope=rope)
    # The open windows' projections are the pooling's working state, kept in the compute dtype
    # whatever kv_dtype says (quantize=False): only what attention reads is the cache proper.
    if overlap:
        return (entries, CacheField(f"{prefix}state_a", (_PAIR, C), ring=2 * m, quantize=False),
                CacheField(f"{prefix}state_b", (_PAIR, C), ring=m, quantize=False))
    return entries, CacheField(f"{prefix}state", (_PAIR, C), ring=m, quantize=False)


class Compressor(nn.Module):
    """One entry per m tokens (HCA: ``overlap=False``; CSA and its indexer: ``overlap=True``)."""

    def __init__(self, hidden: int, width: int, rate: int, *, overlap: bool, eps: float) -> None:
        super().__init__()
        X = 2 * width if overlap else width
        self.width, self.rate, self.overlap = width, rate, overlap
        self.kv_proj = nn.Linear(hidden, X, bias=False)
        self.gate_proj = nn.Linear(hidden, X, bias=False)
        # transformers initialises it to zeros (checkpoints carry trained values).
        self.position_bias = nn.Parameter(torch.zeros(rate, X))
        self.kv_norm = nn.RMSNorm(width, eps=eps)

    def advance(self, x_BLD: Tensor, start: int, cache: KVCache, rope: Rope, prefix: str = "") -> None:
        """Tokens [start, start + L): write their state, and the entries of the windows they close."""
        C, m = self.width, self.rate
        L = x_BLD.shape[1]
        end = start + L
        first, last = start // m, end // m  # entries closed before the step, and after it
        pair_BLPX = torch.stack([self.kv_proj(x_BLD), self.gate_proj(x_BLD)], dim=2)
        if self.overlap:
            series = {"state_a": (pair_BLPX[..., :C], 2 * m), "state_b": (pair_BLPX[..., C:], m)}
        else:
            series = {"state": (pair_BLPX, m)}
        entries_BnC = self._pool(series, cache, prefix, start, first, last) if last > first else None
        for name, (new_BLPC, ring) in series.items():  # after the pooling read the rows it needs
            kept = min(L, ring)
            rows_K = _positions(end - kept, end, ring, x_BLD.device)
            cache.write_rows(rows_K, **{prefix + name: new_BLPC[:, L - kept:]})
        if entries_BnC is not None:
            cos_nF, sin_nF = rope.table_at(torch.arange(first, last, device=x_BLD.device) * m)
            cache.write(first, **{prefix + "entries": rotate_tail_(entries_BnC, cos_nF, sin_nF, rope)})

    def _span(self, cache: KVCache, name: str, new_BLPC: Tensor, ring: int, lo: int, start: int) -> Tensor:
        """``[kv; gate]`` of positions [lo, start + L): the ring's rows before the step, then the new ones."""
        if lo >= start:
            return new_BLPC[:, lo - start:]
        old_BOPC = cache.fields[name].index_select(1, _positions(lo, start, ring, new_BLPC.device))
        return torch.cat([old_BOPC, new_BLPC], dim=1)

    def _pool(self, series: dict[str, tuple[Tensor, int]], cache: KVCache, prefix: str, start: int,
              first: int, last: int) -> Tensor:
        C, m = self.width, self.rate
        n = last - first
        bias_mX = self.position_bias
        if not self.overlap:
            new_BLPC, ring = series["state"]
            span_BTPC = self._span(cache, prefix + "state", new_BLPC, ring, first * m, start)[:, :n * m]
            slots_BnmPC = span_BTPC.unflatten(1, (n, m))
            return self._weighted(slots_BnmPC[..., 0, :], slots_BnmPC[..., 1, :], bias_mX)
        # Cb of windows [first, last): tokens [first·m, last·m).
        new_b, ring_b = series["state_b"]
        b_BnmPC = self._span(cache, prefix + "state_b", new_b, ring_b, first * m, start)[:, :n * m].unflatten(1, (n, m))
        # Ca of windows [first - 1, last - 1): window -1 does not exist, its slots get weight 0.
        new_a, ring_a = series["state_a"]
        a_BTPC = self._span(cache, prefix + "state_a", new_a, ring_a, max(first - 1, 0) * m, start)
        if first == 0:
            absent_BmPC = a_BTPC.new_zeros(a_BTPC.shape[0], m, _PAIR, C)
            absent_BmPC[:, :, 1] = float("-inf")  # the gate: softmax weight 0
            a_BTPC = torch.cat([absent_BmPC, a_BTPC], dim=1)
        a_BnmPC = a_BTPC[:, :n * m].unflatten(1, (n, m))
        kv_Bn2mC = torch.cat([a_BnmPC[..., 0, :], b_BnmPC[..., 0, :]], dim=2)
        gate_Bn2mC = torch.cat([a_BnmPC[..., 1, :], b_BnmPC[..., 1, :]], dim=2)
        bias_2mC = torch.cat([bias_mX[:, :C], bias_mX[:, C:]], dim=0)
        return self._weighted(kv_Bn2mC, gate_Bn2mC, bias_2mC)

    def _weighted(self, kv_BnjC: Tensor, gate_BnjC: Tensor, bias_jC: Tensor) -> Tensor:
        """``RMSNorm(sum_j softmax_j(gate + bias) * kv)`` over the slots j, per channel, in float32.

        Elementwise (no matmul): 2·j·C operations per entry, left out of the FLOP count as softmax is."""
        acc = torch.promote_types(kv_BnjC.dtype, torch.float32)
        weight_BnjC = torch.softmax(gate_BnjC.to(acc) + bias_jC.to(acc), dim=2)
        pooled_BnC = (kv_BnjC.to(acc) * weight_BnjC).sum(dim=2).to(kv_BnjC.dtype)
        return self.kv_norm(pooled_BnC)


class Indexer(nn.Module):
    """CSA's lightning indexer: scores the compressed entries for each query and keeps the top k."""

    def __init__(self, hidden: int, q_rank: int, *, heads: int, dim: int, rate: int, eps: float) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.compressor = Compressor(hidden, dim, rate, overlap=True, eps=eps)
        self.q_b_proj = nn.Linear(q_rank, heads * dim, bias=False)
        self.weights_proj = nn.Linear(hidden, heads, bias=False)

    def scores(self, x_BLD: Tensor, q_residual_BLQ: Tensor, keys_BSI: Tensor, cos_LF: Tensor,
               sin_LF: Tensor, rope: Rope) -> Tensor:
        """``I[b, t, s]`` for the step's queries against entries [0, S), float32 (or float64)."""
        B, L, _ = x_BLD.shape
        J, I = self.heads, self.dim
        q_BLJI = rotate_tail_(self.q_b_proj(q_residual_BLQ).view(B, L, J, I), cos_LF, sin_LF, rope)
        acc = torch.promote_types(x_BLD.dtype, torch.float32)
        dots_BLJS = torch.einsum("blji,bsi->bljs", q_BLJI.to(acc), keys_BSI.to(acc))
        weights_BLJ = self.weights_proj(x_BLD).to(acc) * J ** -0.5
        return torch.einsum("bljs,blj->bls", torch.relu(dots_BLJS) * I ** -0.5, weights_BLJ)


def select_topk(scores_BLS: Tensor, *, k: int, rate: int, start: int) -> tuple[Tensor, Tensor]:
    """The top ``min(k, S)`` entries of each query among those visible to it (``s < (t + 1) // m``),
    as indices ``[B, L, k']`` and whether each pick is visible (a query seeing fewer than k' entries
    gets invisible picks too: they are dropped). Ties go to the lower index (``stable_topk``), so prefill
    and decode pick the same entries."""
    L, S = scores_BLS.shape[1:]
    pos_L = torch.arange(start, start + L, device=scores_BLS.device)
    closed_L1 = ((pos_L + 1) // rate).unsqueeze(1)
    visible_LS = torch.arange(S, device=scores_BLS.device).unsqueeze(0) < closed_L1
    masked_BLS = scores_BLS.masked_fill(~visible_LS, float("-inf"))
    picks_BLk = stable_topk(masked_BLS, min(k, S))[1]
    return picks_BLk, picks_BLk < closed_L1
