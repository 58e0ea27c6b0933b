"""FlashMLA's and FlashInfer's contracts on attnbench's cache views (docs/examples/flashmla_views.py,
flashinfer_views.py): their CPU stand-ins read the views as those libraries do (block table, lengths,
interleaved fp8 rows, MODEL1 blocks) and give the eager path's output, tiny shapes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from attnbench import variants
from tests.reference import rel_err
from tests.shapes import TINY
from tests.test_dsv4 import SHAPE as DSV4_SHAPE
from attnbench.variants.cache import KVCache
from attnbench.variants.kernels.eager import EagerKernel
from attnbench.variants.mask import AttnMask

ROOT = Path(__file__).resolve().parent.parent
F64 = torch.float64


def _example(name: str) -> ModuleType:
    """A docs/examples file as a module (the examples are files a user copies, not a package)."""
    spec = importlib.util.spec_from_file_location(f"attnbench_docs_{name}", ROOT / "docs" / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # importlib's recipe: dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def flashmla() -> ModuleType:
    return _example("flashmla_views")


@pytest.fixture(scope="module")
def flashinfer() -> ModuleType:
    return _example("flashinfer_views")


def _mla_decode(impl: object, *, kv_dtype: str, page_size: int | None, lens: list[int] | None,
                seed: int, L: int = 1) -> torch.Tensor:
    """Prefill 9 tokens (ragged: each sequence's own length), then one decode step of L tokens, on ``impl``."""
    shape = TINY.replace(d_c=16, kv_dtype=kv_dtype)  # 16: fp8 scale tiles of 16, 4-byte aligned
    layer = variants.build("mla", shape, dtype=F64, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x_BTD = torch.randn(3, 9 + L, shape.hidden, generator=g, dtype=F64)
    capacity = 9 + L if page_size is None else [9 + L] * 3
    cache = layer.new_cache(3, capacity, impl=impl, page_size=page_size)
    layer.prefill(x_BTD[:, :9], cache, impl=impl)
    if lens is not None:
        cache.set_seq_lens(lens)
    return layer.decode(x_BTD[:, 9:], cache, impl=impl)


@pytest.mark.parametrize("kernel", ["flashmla", "flashinfer"])
@pytest.mark.parametrize("page_size,lens", [(None, None), (4, None), (4, [9, 3, 6])], ids=["contiguous", "paged",
                                                                                         "paged-ragged"])
def test_the_stand_ins_decode_as_the_eager_path(kernel: str, page_size: int | None, lens: list[int] | None,
                                                 flashmla: ModuleType, flashinfer: ModuleType, seed: int) -> None:
    impl = flashmla.FLASHMLA if kernel == "flashmla" else flashinfer.FLASHINFER_MLA
    got = _mla_decode(impl, kv_dtype="auto", page_size=page_size, lens=lens, seed=seed)
    want = _mla_decode("absorbed", kv_dtype="auto", page_size=page_size, lens=lens, seed=seed)
    assert rel_err(got, want) <= 1e-12


@pytest.mark.parametrize("kernel", ["flashmla", "flashinfer"])
def test_a_multi_token_step_is_causal_over_the_lengths(kernel: str, flashmla: ModuleType, flashinfer: ModuleType,
                                                       seed: int) -> None:
    impl = flashmla.FLASHMLA if kernel == "flashmla" else flashinfer.FLASHINFER_MLA
    got = _mla_decode(impl, kv_dtype="auto", page_size=4, lens=None, seed=seed, L=3)
    assert rel_err(got, _mla_decode("absorbed", kv_dtype="auto", page_size=4, lens=None, seed=seed, L=3)) <= 1e-12


@pytest.mark.parametrize("page_size,lens", [(None, None), (4, [9, 3, 6])], ids=["contiguous", "paged-ragged"])
def test_flashmla_reads_fp8_as_interleaved_v32_rows(page_size: int | None, lens: list[int] | None,
                                                     flashmla: ModuleType, seed: int) -> None:
    got = _mla_decode(flashmla.FLASHMLA, kv_dtype="fp8_e4m3", page_size=page_size, lens=lens, seed=seed)
    want = _mla_decode("absorbed", kv_dtype="fp8_e4m3", page_size=page_size, lens=lens, seed=seed)
    assert rel_err(got, want) <= 1e-12  # the same e4m3 values and scales, read from FlashMLA's rows


def test_v32_rows_are_656_bytes_at_deepseek_v3s_shape(flashmla: ModuleType) -> None:
    shape = TINY.replace(d_c=512, d_r=64, heads=2, kv_heads=None, kv_dtype="fp8_e4m3")
    layer = variants.build("mla", shape, dtype=torch.bfloat16)
    cache = layer.new_cache(2, [70, 70], impl="absorbed", page_size=64)
    cache.fill_random_(70, seed=0)
    k_cache, block_table_BJ, seqlens_B = flashmla.pack_v32(cache.view(70))
    assert k_cache.shape == (4, 64, 1, 656) == (4, 64, 1, flashmla.V32_ROW_BYTES) and k_cache.dtype == torch.uint8
    assert torch.equal(block_table_BJ, cache.block_table) and seqlens_B.tolist() == [70, 70]
    # Token 65 of sequence 1: its page from the block table, its row's three parts at 0, 512 and 528.
    page = int(cache.block_table[1, 1])
    row = k_cache[page, 1, 0]
    assert torch.equal(row[:512].view(torch.float8_e4m3fn).float(), cache.fields["c_kv"][page, 1].float())
    key = flashmla.decode_v32(row.unsqueeze(0), C=512, groups=4, dtype=torch.bfloat16, rope_dtype=torch.bfloat16)
    assert torch.equal(key[0], torch.cat([cache.read("c_kv", 70)[1, 65], cache.read("k_rope", 70)[1, 65]]))


def test_flashinfer_csr_page_table_lists_each_sequences_used_pages(flashinfer: ModuleType) -> None:
    layer = variants.build("mla", TINY, dtype=F64)
    cache = layer.new_cache(3, [12, 12, 12], impl="absorbed", page_size=4)
    view = cache.view(12, torch.tensor([12, 3, 5], dtype=torch.int32))
    plan = flashinfer.plan_from_view(view, 1)
    table = cache.block_table
    assert plan.kv_indptr.tolist() == [0, 3, 4, 6] and plan.kv_len_arr.tolist() == [12, 3, 5]
    assert plan.kv_indices.tolist() == [*table[0, :3].tolist(), table[1, 0].item(), *table[2, :2].tolist()]
    ckv, kpe = flashinfer.pools_from_view(view)
    assert ckv.data_ptr() == cache.buffers["packed"].data_ptr() and ckv.shape[-1] == TINY.d_c  # views, no copy
    assert kpe.shape[-1] == TINY.d_r


def test_flashinfer_refuses_an_fp8_view_in_one_line(flashinfer: ModuleType) -> None:
    with pytest.raises(ValueError, match="^flashinfer_mla reads MLA's packed pool in the compute dtype"):
        _mla_decode(flashinfer.FLASHINFER_MLA, kv_dtype="fp8_e4m3", page_size=4, lens=None, seed=0)


@pytest.mark.parametrize("variant", ["csa", "hca"])
def test_flashmla_sparse_decode_reads_v4_model1_blocks_as_the_eager_path(variant: str, flashmla: ModuleType,
                                                                        seed: int) -> None:
    """A V4 cache (kv_dtype=fp8_model1) read in place through FlashMLA's MODEL1 k_cache view and sparse
    indices (the entries, and the window as the extra cache), with the sinks: the eager kernel's output
    over the rows ``KVCache.read`` dequantizes."""
    shape = DSV4_SHAPE.replace(kv_dtype="fp8_model1", hca_rate=4)
    layer = variants.build(variant, shape, dtype=torch.float32, seed=seed)
    with torch.no_grad():
        layer.sinks.normal_()
    cache = layer.new_cache(2, 20)
    layer.prefill(torch.randn(2, 20, shape.hidden), cache)
    entries, window = 20 // (2 if variant == "csa" else 4), cache.rows_of("window")
    H = shape.head_dim
    q_BLNH = torch.randn(2, 1, shape.heads, H)
    k_cache, fmt = flashmla.model1_k_cache(cache, "entries")
    extra, _ = flashmla.model1_k_cache(cache, "window")
    assert k_cache.shape[1:] == (fmt.block, 1, fmt.entry_bytes)
    assert k_cache.data_ptr() == cache.buffers["entries"].data_ptr()  # a view of the cache, no copy
    picks_BLK = torch.stack([torch.randperm(entries)[:3] for _ in range(2)]).unsqueeze(1)
    picks_BLK[1, 0, 2] = -1  # an unused slot
    indices = flashmla.model1_indices(picks_BLK, blocks_per_seq=cache.model1["entries"].blocks_BNW.shape[1],
                                      block=fmt.block)
    window_BLK = torch.arange(window).expand(2, 1, window)
    extra_indices = flashmla.model1_indices(window_BLK, blocks_per_seq=cache.model1["window"].blocks_BNW.shape[1],
                                            block=fmt.block)
    got, _ = flashmla.flash_mla_sparse_decode_cpu(q_BLNH, k_cache, indices, H, softmax_scale=layer.scale, fmt=fmt,
                                                  attn_sink=layer.sinks.detach(), extra_k_cache=extra,
                                                  extra_indices_BLK=extra_indices)
    eager = EagerKernel()
    rows = cache.read("entries", entries)
    for b in range(2):
        keep = picks_BLK[b, 0] >= 0
        k_1TH = torch.cat([rows[b, picks_BLK[b, 0][keep]], cache.read("window", window)[b]]).view(1, -1, 1, H)
        T = k_1TH.shape[1]
        want = eager(q_BLNH[b:b + 1], k_1TH, k_1TH, scale=layer.scale, mask=AttnMask(1, T, T - 1, None),
                     sinks_N=layer.sinks.detach())
        assert rel_err(got[b:b + 1], want) <= 1e-5


def test_the_cpu_stand_in_follows_the_block_table_not_the_pool_order(flashmla: ModuleType) -> None:
    """Pages handed out in reverse (KVCache's order): a reader ignoring the block table reads wrong rows."""
    layer = variants.build("mla", TINY, dtype=F64)
    cache: KVCache = layer.new_cache(2, [8, 8], impl="absorbed", page_size=4)
    cache.fill_random_(8, seed=0)
    k_cache = cache.buffers["packed"].unsqueeze(2)
    q = torch.randn(2, 1, 4, TINY.d_c + TINY.d_r, dtype=F64)
    seqlens = torch.tensor([8, 8], dtype=torch.int32)
    right, _ = flashmla.flash_mla_with_kvcache_cpu(q, k_cache, cache.block_table, seqlens, TINY.d_c,
                                                   softmax_scale=0.3, causal=False)
    wrong, _ = flashmla.flash_mla_with_kvcache_cpu(q, k_cache, torch.arange(4, dtype=torch.int32).view(2, 2), seqlens,
                                                   TINY.d_c, softmax_scale=0.3, causal=False)
    assert rel_err(wrong, right) > 0.1
