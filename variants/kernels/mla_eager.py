"""MLA's latent attention with explicit matmuls and a float32 softmax (see ``attnbench.variants.families.mla.kernel.MLAKernel``).

Legend: B batch, L queries, T keys, N query heads, C latent, R rotary dim, G rotary keys per token,
n = N / G query heads per rotary key, M = N·L query rows, J = G·R.

The latent is one key and one value shared by every head (MQA with a single kv head), so the
heads fold into the rows of one matmul per score term: ``q_lat·c_kv`` (width C) plus, per rotary
key, ``q_rope·k_rope_g`` (width R) for that key's n heads. Nothing is concatenated and no rotary
slot is zero-padded; the cache pieces are read in place (strided views of the packed rows).

Given the cache as a view (``attend_view``, ``reads_view = True``), a paged one-token decode step
reads each sequence's runs of pages in place (``attnbench.variants.kernels.page_runs``: views of the pool, in
chunks); otherwise a paged, fp8 or long cache is read once, chunk by chunk (``attnbench.variants.kernels.split_kv``): each chunk's rows (a view of the
contiguous buffer, or its pages copied out of the pool through the block table, dequantized if
fp8) serve both score terms and the values (c_kv is key and value at once), and the chunks'
partial softmaxes are combined by log-sum-exp. Nothing the size of the cache is allocated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnbench.variants.cache_view import CacheView
from attnbench.variants.families.mla.kernel import SparseMLAKernel
from attnbench.variants.kernels import page_runs
from attnbench.variants.kernels.split_kv import LseCombine, chunk_tokens
from attnbench.variants.mask import AttnMask


class EagerMLAKernel:
    """``block_keys``: None attends on all T keys at once (scores, softmax, values); a number splits
    the keys into blocks of that many and combines the blocks' partial softmaxes (flash-decoding), so
    each block of the cache is still in the CPU's cache when its values are read. Up to
    ``one_pass_keys`` keys it stays one pass: a latent that fits the last-level cache whole gains
    nothing from blocks and pays their bookkeeping (both measured, see ``attnbench.variants.impls.absorbed``).
    ``sparse``: the kernel a layer attending on selected tokens only (dsa) calls in its place."""

    name = "eager"
    dense_causal = True
    packed_cache = False
    reads_view = True

    def __init__(self, block_keys: int | None = None, *, one_pass_keys: int = 0,
                 sparse: SparseMLAKernel | None = None, chunk_bytes: int | None = None) -> None:
        assert block_keys is None or block_keys > 0, block_keys
        self.block_keys = block_keys
        self.one_pass_keys = one_pass_keys
        self.sparse = sparse
        self.chunk_bytes = chunk_bytes  # a view's split-KV chunk budget (None: split_kv.CHUNK_BYTES)

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        return True

    def __call__(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, c_kv_BTC: Tensor, k_rope_BTJ: Tensor, *,
                 scale: float, mask: AttnMask, kv_BTE: Tensor | None = None) -> Tensor:
        B, L, N, C = q_lat_BLNC.shape
        R = q_rope_BLNR.shape[-1]
        T = c_kv_BTC.shape[1]
        G = k_rope_BTJ.shape[-1] // R
        # Row m = n·L + l (head-major), so each rotary key's heads are consecutive rows. The scale
        # goes on the N·L query rows rather than on the N·L·T scores.
        q_lat_BMC = (q_lat_BLNC.transpose(1, 2) * scale).reshape(B, N * L, C)
        q_rope_BMR = (q_rope_BLNR.transpose(1, 2) * scale).reshape(B, N * L, R)
        k_rope_BTGR = k_rope_BTJ.unflatten(-1, (G, R))
        keep_LT = None
        if not mask.full:
            assert mask.keep_LT is not None, "the eager kernel needs a dense mask"
            keep_LT = mask.keep_LT
        # Softmax in (at least) float32 whatever the input dtype, as the checkpoints' code does.
        acc_dtype = torch.promote_types(q_lat_BLNC.dtype, torch.float32)
        if self.block_keys is None or T <= max(self.block_keys, self.one_pass_keys):
            scores_BNLT = _scores(q_lat_BMC, q_rope_BMR, c_kv_BTC, k_rope_BTGR, keep_LT, L, acc_dtype)
            probs_BMT = torch.softmax(scores_BNLT, dim=-1).to(c_kv_BTC.dtype).flatten(1, 2)
            o_lat_BMC = torch.bmm(probs_BMT, c_kv_BTC)
        else:
            o_lat_BMC = self._blocks(q_lat_BMC, q_rope_BMR, c_kv_BTC, k_rope_BTGR, keep_LT, L, acc_dtype)
        return o_lat_BMC.view(B, N, L, C).transpose(1, 2)

    def attend_view(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, view: CacheView, *,
                    scale: float, mask: AttnMask) -> Tensor:
        """As ``__call__``, reading the cache from ``view``: a contiguous cache in the compute dtype up
        to ``one_pass_keys`` keys in one pass over views of it; otherwise split-KV over chunks."""
        T = view.kv_len
        slots = [view.layout.slot("c_kv"), view.layout.slot("k_rope")]
        in_place = not view.layout.paged and all(s.tile is None for s in slots)
        if in_place and (self.block_keys is None or T <= self.one_pass_keys):
            return self(q_lat_BLNC, q_rope_BLNR, view.gather("c_kv"), view.gather("k_rope"), scale=scale, mask=mask)
        # One query per sequence whose mask is its length, on packed rows with one rotary key: each
        # sequence's runs of pages read in place (``page_runs``), no page copied.
        G = view.layout.slot("k_rope").width // q_rope_BLNR.shape[-1]
        runs = None
        if q_lat_BLNC.shape[1] == 1 and (mask.full or view.seq_lens_B is not None) and G == 1 \
                and q_lat_BLNC.device.type == "cpu" \
                and view.layout.shares_buffer("c_kv", "k_rope"):
            runs = page_runs.pieces(view, view.layout.slot("c_kv").buffer)
        if runs is not None:
            return self._in_place(q_lat_BLNC, q_rope_BLNR, view, runs, scale=scale)
        return self.split_kv(q_lat_BLNC, q_rope_BLNR, view, scale=scale, mask=mask)

    def _in_place(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, view: CacheView, runs: list[list[Tensor]], *,
                  scale: float, tokens: int | None = None) -> Tensor:
        """Split-KV over views of the pool: each sequence's pieces (``page_runs``) in chunks that stay in
        the CPU's cache between the scores and the values, combined by log-sum-exp."""
        B, L, N, C = q_lat_BLNC.shape
        slot = view.layout.slot("c_kv")
        q_BME = (torch.cat((q_lat_BLNC, q_rope_BLNR), dim=-1).transpose(1, 2) * scale).reshape(B, N * L, -1)
        E = q_BME.shape[-1]
        if tokens is None:
            tokens = chunk_tokens(batch=1, row_bytes=E * q_BME.element_size(),
                                  **({} if self.chunk_bytes is None else {"budget": self.chunk_bytes}))
        acc_dtype = torch.promote_types(q_lat_BLNC.dtype, torch.float32)
        outs = []
        for b, pieces in enumerate(runs):
            combine = LseCombine(acc_dtype)
            q_1ME = q_BME[b:b + 1]
            for rows_tW in pieces:
                for t0 in range(0, rows_tW.shape[0], tokens):
                    kv_1tE = rows_tW[t0:t0 + tokens, slot.offset:slot.offset + E].unsqueeze(0)
                    scores_1Mt = torch.bmm(q_1ME, kv_1tE.transpose(1, 2)).to(acc_dtype)
                    max_1M1 = scores_1Mt.amax(-1, keepdim=True)
                    probs_1Mt = scores_1Mt.sub_(max_1M1).exp_()
                    combine.add(torch.bmm(probs_1Mt.to(kv_1tE.dtype), kv_1tE[..., :C]), max_1M1,
                                probs_1Mt.sum(-1, keepdim=True))
            outs.append(combine.result(q_lat_BLNC.dtype))
        return torch.cat(outs).view(B, N, L, C).transpose(1, 2)

    def split_kv(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, view: CacheView, *,
                 scale: float, mask: AttnMask, tokens: int | None = None) -> Tensor:
        """Flash-decoding over ``view`` in chunks of ``tokens`` rows (None: ``chunk_tokens``): one read of
        each chunk serves the scores and the values, partials combined by log-sum-exp."""
        B, L, N, C = q_lat_BLNC.shape
        R = q_rope_BLNR.shape[-1]
        G = view.layout.slot("k_rope").width // R
        q_lat_BMC = (q_lat_BLNC.transpose(1, 2) * scale).reshape(B, N * L, C)
        q_rope_BMR = (q_rope_BLNR.transpose(1, 2) * scale).reshape(B, N * L, R)
        keep_LT = None if mask.full else mask.keep_LT
        assert mask.full or keep_LT is not None, "the eager kernel needs a dense mask"
        acc_dtype = torch.promote_types(q_lat_BLNC.dtype, torch.float32)
        shared = view.layout.shares_buffer("c_kv", "k_rope")
        if tokens is None:
            row_bytes = (C + G * R) * q_lat_BLNC.element_size()
            tokens = chunk_tokens(batch=B, row_bytes=row_bytes, **({} if self.chunk_bytes is None
                                                                     else {"budget": self.chunk_bytes}))
        combine = LseCombine(acc_dtype)
        floor = torch.finfo(acc_dtype).min
        # One rotary key and the packed rows [c_kv; k_rope]: one matmul per chunk against the whole row
        # (the query concatenated once per step), rather than one per score term.
        q_BME = torch.cat((q_lat_BMC, q_rope_BMR), dim=-1) if shared and G == 1 else None
        scratch = view.scratch(view.layout.slot("c_kv").buffer, tokens) if shared else None
        for t0, t1 in view.chunks(tokens):
            # One read of the chunk's rows: the packed [c_kv; k_rope] rows once, or each field's.
            rows_BtW = view.buffer_rows(view.layout.slot("c_kv").buffer, t0, t1, scratch) if shared else None
            c_kv_BtC = view.rows("c_kv", t0, t1, rows_BtW)
            keep_Lt = None if keep_LT is None else keep_LT[..., t0:t1]
            if q_BME is not None and rows_BtW is not None:
                E = q_BME.shape[-1]
                kv_BtE = rows_BtW[..., view.layout.slot("c_kv").offset:][..., :E]
                scores_BMt = torch.bmm(q_BME, kv_BtE.transpose(1, 2)).to(acc_dtype)
                if keep_Lt is not None:
                    scores_BMt = scores_BMt.view(B, N, L, -1).masked_fill(keep_Lt.logical_not(), float("-inf"))
                    scores_BMt = scores_BMt.flatten(1, 2)
            else:
                k_rope_BtGR = view.rows("k_rope", t0, t1, rows_BtW).unflatten(-1, (G, R))
                scores_BMt = _scores(q_lat_BMC, q_rope_BMR, c_kv_BtC, k_rope_BtGR, keep_Lt, L, acc_dtype).flatten(1, 2)
            # A row whose keys in this chunk are all masked has max -inf; the floor keeps exp() at 0, not NaN.
            max_BM1 = scores_BMt.amax(-1, keepdim=True).clamp_min(floor)
            probs_BMt = scores_BMt.sub_(max_BM1).exp_()  # the chunk's own scores, overwritten
            combine.add(torch.bmm(probs_BMt.to(c_kv_BtC.dtype), c_kv_BtC), max_BM1, probs_BMt.sum(-1, keepdim=True))
        return combine.result(q_lat_BLNC.dtype).view(B, N, L, C).transpose(1, 2)

    def _blocks(self, q_lat_BMC: Tensor, q_rope_BMR: Tensor, c_kv_BTC: Tensor, k_rope_BTGR: Tensor,
                keep_LT: Tensor | None, L: int, acc_dtype: torch.dtype) -> Tensor:
        """Softmax-weighted values block by block (K blocks), each with its own running maximum,
        rescaled to the global maximum at the end: exact, not an approximation."""
        T, step = c_kv_BTC.shape[1], self.block_keys
        assert step is not None
        outs, maxes, sums = [], [], []
        for t0 in range(0, T, step):
            keys = slice(t0, min(t0 + step, T))
            scores_BNLt = _scores(q_lat_BMC, q_rope_BMR, c_kv_BTC[:, keys], k_rope_BTGR[:, keys],
                                  None if keep_LT is None else keep_LT[..., keys], L, acc_dtype)
            # A row whose keys in this block are all masked has max -inf; the floor keeps exp() at 0, not NaN.
            max_BNL1 = scores_BNLt.amax(-1, keepdim=True).clamp_min(torch.finfo(acc_dtype).min)
            probs_BNLt = torch.exp(scores_BNLt - max_BNL1)
            maxes.append(max_BNL1)
            sums.append(probs_BNLt.sum(-1, keepdim=True))
            outs.append(torch.bmm(probs_BNLt.to(c_kv_BTC.dtype).flatten(1, 2), c_kv_BTC[:, keys]))
        max_BMK = torch.cat(maxes, -1).flatten(1, 2)
        weight_BMK = torch.exp(max_BMK - max_BMK.amax(-1, keepdim=True))
        total_BM1 = (torch.cat(sums, -1).flatten(1, 2) * weight_BMK).sum(-1, keepdim=True)
        o_BMCK = torch.stack(outs, dim=-1)
        return ((o_BMCK * weight_BMK.unsqueeze(2).to(o_BMCK.dtype)).sum(-1) / total_BM1).to(c_kv_BTC.dtype)


def _scores(q_lat_BMC: Tensor, q_rope_BMR: Tensor, c_kv_BTC: Tensor, k_rope_BTGR: Tensor,
            keep_LT: Tensor | None, L: int, acc_dtype: torch.dtype) -> Tensor:
    """``[B, N, L, T]`` scores ``q_lat·c_kv + q_rope·k_rope_g`` in ``acc_dtype``, masked with -inf."""
    B, M, _ = q_lat_BMC.shape
    T, G = c_kv_BTC.shape[1], k_rope_BTGR.shape[2]
    rows = M // G  # query rows that share one rotary key
    # The small rotary term first, written straight into the score buffer, one matmul per
    # rotary key; then the latent term accumulates onto it (beta = 1) in one pass over c_kv.
    rope_BMT = q_lat_BMC.new_empty(B, M, T)
    for g in range(G):
        torch.bmm(q_rope_BMR[:, g * rows:(g + 1) * rows], k_rope_BTGR[:, :, g].transpose(1, 2),
                  out=rope_BMT[:, g * rows:(g + 1) * rows])
    scores_BNLT = torch.baddbmm(rope_BMT, q_lat_BMC, c_kv_BTC.transpose(1, 2)).view(B, M // L, L, T).to(acc_dtype)
    if keep_LT is not None:
        scores_BNLT = scores_BNLT.masked_fill(keep_LT.logical_not(), float("-inf"))
    return scores_BNLT
