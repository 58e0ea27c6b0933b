"""Kernels read the cache through a view: split-KV equals one softmax, and a paged step copies no cache.

Legend: B batch, L queries, T keys read, N heads, C latent, R rotary dim.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnbench import variants
from tests.reference import rel_err
from tests.shapes import TINY
from attnbench.variants.cache import KVCache
from attnbench.variants.kernels.mla_eager import EagerMLAKernel
from attnbench.variants.kernels.mla_sdpa import SdpaMLAKernel
from attnbench.variants.mask import AttnMask

F64 = torch.float64


def _latent_cache(page_size: int | None, lens: list[int], *, G: int = 1, C: int = 10, R: int = 4,
                  dtype: torch.dtype = F64) -> KVCache:
    layer = variants.build("mla", TINY.replace(d_c=C, d_r=R), dtype=dtype)
    layout = layer.cache_layout("absorbed")
    if G > 1:  # several rotary keys per token (layers converted from GQA)
        from attnbench.variants.cache import CacheField, CacheLayout
        layout = CacheLayout((CacheField("c_kv", (C,)), CacheField("k_rope", (G * R,), quantize=False)), packed=True)
    capacity = max(lens) + 1
    cache = KVCache(layout, batch=len(lens), max_len=capacity if page_size is None else [capacity] * len(lens),
                    dtype=dtype, device="cpu", page_size=page_size)
    cache.fill_random_(capacity, seed=3)
    cache.set_seq_lens(lens)
    return cache


def _reference(q_lat_BLNC, q_rope_BLNR, c_kv_BTC, k_rope_BTJ, keep_B1LT, scale):  # noqa: ANN001, ANN202
    """One softmax over all keys, written out: ``softmax(scale·(q_lat·c_kv + q_rope·k_rope_g))·c_kv``."""
    N, R = q_lat_BLNC.shape[2], q_rope_BLNR.shape[-1]
    G = k_rope_BTJ.shape[-1] // R
    k_rope_BTNR = k_rope_BTJ.unflatten(-1, (G, 1, R)).expand(-1, -1, G, N // G, R).flatten(2, 3)
    scores_BLNT = (torch.einsum("blnc,btc->blnt", q_lat_BLNC, c_kv_BTC)
                   + torch.einsum("blnr,btnr->blnt", q_rope_BLNR, k_rope_BTNR)) * scale
    scores_BLNT = scores_BLNT.masked_fill(~keep_B1LT.transpose(1, 2), float("-inf"))
    return torch.einsum("blnt,btc->blnc", scores_BLNT.softmax(-1), c_kv_BTC)


@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("kernel", [EagerMLAKernel(), SdpaMLAKernel()], ids=["absorbed", "absorbed_sdpa"])
@pytest.mark.parametrize("page_size", [None, 4])
def test_split_kv_decode_equals_one_softmax(kernel, page_size: int | None, G: int) -> None:  # noqa: ANN001
    lens = [23, 9, 17]  # ragged; chunks of 8 keys divide none of them
    cache = _latent_cache(page_size, lens, G=G)
    B, L, N, C, R = len(lens), 1, 4, 10, 4
    T = max(lens) + L
    keep_B1LT = torch.arange(T).view(1, 1, 1, T) <= torch.tensor(lens).view(-1, 1, 1, 1)
    mask = AttnMask(L, T, min(lens), keep_B1LT)
    q_lat_BLNC, q_rope_BLNR = torch.randn(B, L, N, C, dtype=F64), torch.randn(B, L, N, R, dtype=F64)
    view = cache.view(T, torch.tensor(lens, dtype=torch.int32) + L)
    got = kernel.split_kv(q_lat_BLNC, q_rope_BLNR, view, scale=0.3, mask=mask, tokens=8)
    want = _reference(q_lat_BLNC, q_rope_BLNR, cache.read("c_kv", T), cache.read("k_rope", T), keep_B1LT, 0.3)
    assert rel_err(got, want) <= 1e-12
    assert len(list(view.chunks(8))) == 3  # split, not one pass


def test_a_view_reads_an_fp8_cache_chunk_by_chunk() -> None:
    layer = variants.build("mla", TINY.replace(kv_dtype="fp8_e4m3"), dtype=F64)
    cache = layer.new_cache(2, [20, 20], impl="absorbed", page_size=4)
    cache.fill_random_(19, seed=1)
    view = cache.view(19)
    assert view.layout.slot("c_kv").tile is not None and view.layout.paged
    chunked = torch.cat([view.rows("c_kv", t0, t1) for t0, t1 in view.chunks(8)], dim=1)
    assert torch.equal(chunked, cache.read("c_kv", 19))  # dequantized per chunk, as the whole read does


class _PeakBytes(TorchDispatchMode):
    """Peak bytes of the tensors ops allocate (new storages only, freed when their tensor dies)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                nbytes = t.untyped_storage().nbytes()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, nbytes)
        return out


@pytest.mark.parametrize("impl", ["absorbed", "absorbed_sdpa"])
def test_a_paged_decode_step_allocates_nothing_proportional_to_the_cache(impl: str) -> None:
    layer = variants.build("mla", TINY, dtype=torch.float32)
    x_B1D = torch.randn(2, 1, TINY.hidden)
    peaks, cache_bytes = [], []
    for context in (8192, 32768):  # both longer than a chunk (variants.kernels.split_kv)
        cache = layer.new_cache(2, [context + 1, context + 1], impl=impl, page_size=64)
        cache.fill_random_(context)
        cache.set_seq_lens([context, context - 100])
        step = layer.prepare("decode", x_B1D, cache, impl=impl)
        step()  # warm-up: RoPE tables
        with _PeakBytes() as meter:
            step()
        peaks.append(meter.peak)
        cache_bytes.append(cache.nbytes())
    assert peaks[1] < cache_bytes[1] / 4, (peaks, cache_bytes)  # no copy of the cache
    assert peaks[1] <= peaks[0] * 1.05, (peaks, cache_bytes)  # 4x the cache, the same peak
