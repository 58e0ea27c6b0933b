"""FlashInfer's paged MLA behind attnbench's cache views: the contract a GPU user plugs in, with a CPU stand-in.

Legend: B batch, L queries per sequence, N query heads, C latent (head_dim_ckv), R rotary dim
(head_dim_kpe), Q pages in the pool, P page size, J block-table columns, I used pages (all sequences).

FlashInfer (``flashinfer.mla.BatchMLAPagedAttentionWrapper``, docs.flashinfer.ai/api/mla.html)
plans once per set of lengths and runs per layer:

    wrapper.plan(qo_indptr, kv_indptr, kv_indices, kv_len_arr, num_heads, head_dim_ckv, head_dim_kpe,
                 page_size, causal, sm_scale, q_data_type, kv_data_type)
    out = wrapper.run(q_nope, q_pe, ckv_cache, kpe_cache)

with ``q_nope [B·L, N, C]`` (the absorbed query ``q_nope·W_UK``), ``q_pe [B·L, N, R]``, the latent
pool ``ckv_cache [Q, P, C]`` and the rotary pool ``kpe_cache [Q, P, R]``. The page table is CSR:
sequence b's pages are ``kv_indices[kv_indptr[b]:kv_indptr[b + 1]]`` in order, it holds
``kv_len_arr[b]`` rows, and its queries are rows ``qo_indptr[b]:qo_indptr[b + 1]`` of q; with
``causal`` query i of a sequence's L sees rows up to ``kv_len - L + i``. ``out [B·L, N, C]``.

attnbench's view holds a block table ``[B, J]`` (``view.block_table_BJ``) and lengths
(``view.seq_lens_B``); ``plan_from_view`` turns them into FlashInfer's CSR (only each sequence's
first ``ceil(len / P)`` pages), and ``ckv_cache``/``kpe_cache`` are the two column ranges of MLA's
packed page pool ``[Q, P, C + R]``: strided views, no copy (FlashInfer takes pools with a row stride,
as vLLM and SGLang pass them). A contiguous cache ``[B, S, C + R]`` is B pages of S rows. This
kernel reads the compute dtype only: an fp8 view is refused (attnbench's fp8 cache keeps per-tile
scales, which FlashInfer's MLA kernels do not take).

With ``flashinfer`` installed and the tensors on CUDA the kernel calls FlashInfer; else the CPU
stand-in ``batch_mla_paged_attention_cpu``, which reads the same arguments as FlashInfer reads them.
Plugging it in: ``attnbench.variants.registry.register_implementation(FLASHINFER_MLA)``, then
``impl=flashinfer_mla`` on ``mla``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attnbench.variants.cache_view import CacheView
from attnbench.variants.implementation import KernelImplementation
from attnbench.variants.mask import AttnMask

WORKSPACE_BYTES = 128 << 20  # FlashInfer's examples allocate 128 MiB of float workspace


@dataclass(frozen=True)
class MLAPagePlan:
    """FlashInfer's page table for one step (int32, on the cache's device)."""

    qo_indptr: Tensor  # [B + 1]
    kv_indptr: Tensor  # [B + 1]
    kv_indices: Tensor  # [I]
    kv_len_arr: Tensor  # [B]
    page_size: int


def plan_from_view(view: CacheView, q_len: int) -> MLAPagePlan:
    """The CSR page table of a view: each sequence's used pages, in order, from its block table row."""
    buf = view.storage[view.layout.slot("c_kv").buffer]
    device = buf.device
    lens = view.seq_lens_B.tolist() if view.seq_lens_B is not None else [view.kv_len] * view.batch
    if view.layout.page_size is None:  # a contiguous cache: sequence b is page b, of S rows
        P = buf.shape[1]
        table_BJ = torch.arange(view.batch, dtype=torch.int32, device=device).unsqueeze(1)
    else:
        P = view.layout.page_size
        assert view.block_table_BJ is not None
        table_BJ = view.block_table_BJ
    pages = [math.ceil(n / P) for n in lens]
    kv_indices = torch.cat([table_BJ[b, :n] for b, n in enumerate(pages)]).to(torch.int32)
    kv_indptr = torch.tensor([0, *pages], dtype=torch.int32, device=device).cumsum(0).to(torch.int32)
    qo_indptr = torch.arange(0, (view.batch + 1) * q_len, q_len, dtype=torch.int32, device=device)
    return MLAPagePlan(qo_indptr, kv_indptr, kv_indices, torch.tensor(lens, dtype=torch.int32, device=device), P)


def pools_from_view(view: CacheView) -> tuple[Tensor, Tensor]:
    """``(ckv_cache [Q, P, C], kpe_cache [Q, P, R])``: column ranges of the packed pool, views."""
    c_kv, k_rope = view.layout.slot("c_kv"), view.layout.slot("k_rope")
    pool = view.storage[c_kv.buffer]
    return pool[..., c_kv.offset:c_kv.offset + c_kv.width], pool[..., k_rope.offset:k_rope.offset + k_rope.width]


def batch_mla_paged_attention_cpu(plan: MLAPagePlan, q_nope: Tensor, q_pe: Tensor, ckv_cache: Tensor,
                                  kpe_cache: Tensor, *, causal: bool, sm_scale: float) -> Tensor:
    """``out [B·L, N, C]``: for each sequence, its pages gathered through ``kv_indices``, its first
    ``kv_len`` rows, ``softmax(sm_scale·(q_nope·ckv + q_pe·kpe))·ckv`` (float32 softmax)."""
    acc = torch.promote_types(q_nope.dtype, torch.float32)
    out = torch.empty_like(q_nope)
    for b in range(plan.kv_len_arr.shape[0]):
        n = int(plan.kv_len_arr[b])
        pages_I = plan.kv_indices[int(plan.kv_indptr[b]):int(plan.kv_indptr[b + 1])].long()
        ckv_TC = ckv_cache.index_select(0, pages_I).flatten(0, 1)[:n].to(acc)
        kpe_TR = kpe_cache.index_select(0, pages_I).flatten(0, 1)[:n].to(acc)
        q0, q1 = int(plan.qo_indptr[b]), int(plan.qo_indptr[b + 1])
        L = q1 - q0
        scores_LNT = (torch.einsum("lnc,tc->lnt", q_nope[q0:q1].to(acc), ckv_TC)
                      + torch.einsum("lnr,tr->lnt", q_pe[q0:q1].to(acc), kpe_TR)) * sm_scale
        if causal:
            keep_LT = torch.arange(n, device=q_nope.device).unsqueeze(0) \
                <= (n - L + torch.arange(L, device=q_nope.device)).unsqueeze(1)
            scores_LNT = scores_LNT.masked_fill(~keep_LT.unsqueeze(1), float("-inf"))
        out[q0:q1] = torch.einsum("lnt,tc->lnc", scores_LNT.softmax(-1), ckv_TC).to(out.dtype)
    return out


class FlashInferMLAKernel:
    """MLA's absorbed attention by FlashInfer's ``BatchMLAPagedAttentionWrapper``, reading the view."""

    name = "flashinfer_mla"
    dense_causal = False  # causality is the plan's ``causal`` over the lengths
    packed_cache = False
    reads_view = True

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        return device_type == "cpu"

    def __call__(self, *args: object, **kwargs: object) -> Tensor:
        raise NotImplementedError("FlashInferMLAKernel reads the cache view (attend_view), not gathered tensors")

    def attend_view(self, q_lat_BLNC: Tensor, q_rope_BLNR: Tensor, view: CacheView, *, scale: float,
                    mask: AttnMask) -> Tensor:
        c_kv, k_rope = view.layout.slot("c_kv"), view.layout.slot("k_rope")
        if c_kv.tile is not None or not view.layout.shares_buffer("c_kv", "k_rope"):
            raise ValueError("flashinfer_mla reads MLA's packed pool in the compute dtype; use kv_dtype=auto")
        if k_rope.width != q_rope_BLNR.shape[-1]:
            raise ValueError("flashinfer_mla reads one rotary key per token")
        B, L, N, C = q_lat_BLNC.shape
        plan = plan_from_view(view, L)
        ckv_cache, kpe_cache = pools_from_view(view)
        q_nope, q_pe = q_lat_BLNC.reshape(B * L, N, C), q_rope_BLNR.reshape(B * L, N, -1)
        if _flashinfer_runs(q_nope):
            import flashinfer  # optional, GPU only

            # A real plug-in makes the wrapper and its workspace once (its plan) and calls plan() once
            # per set of lengths, outside the timed step (interface v2's bind); here per call, for brevity.
            workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.int8, device=q_nope.device)
            wrapper = flashinfer.mla.BatchMLAPagedAttentionWrapper(workspace)
            wrapper.plan(plan.qo_indptr, plan.kv_indptr, plan.kv_indices, plan.kv_len_arr, N, C,
                         k_rope.width, plan.page_size, L > 1, scale, q_nope.dtype, ckv_cache.dtype)
            out = wrapper.run(q_nope, q_pe, ckv_cache, kpe_cache)
        else:
            out = batch_mla_paged_attention_cpu(plan, q_nope, q_pe, ckv_cache, kpe_cache, causal=L > 1,
                                                sm_scale=scale)
        return out.view(B, L, N, C)


def _flashinfer_runs(q: Tensor) -> bool:
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return False
    return True


FLASHINFER_MLA = KernelImplementation(
    name="flashinfer_mla", path="absorbed", kernel=FlashInferMLAKernel(), options={"fold_o": False},
    description="MLA absorbed by FlashInfer's BatchMLAPagedAttentionWrapper on the cache view (CPU: a stand-in)")
