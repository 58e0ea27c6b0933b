"""The Python API under a sceptical user's inputs: one ValueError naming the bad value, never a
deep TypeError, IndexError, bare assert or an all-NaN output; and a fill that means what it says."""

from __future__ import annotations

import pytest
import torch

from attnbench import variants
from attnbench.variants import rope


def _x(batch: int, q_len: int, **kw) -> torch.Tensor:  # noqa: ANN003
    return torch.randn(batch, q_len, 64, generator=torch.Generator().manual_seed(0), **kw)


@pytest.fixture(scope="module")
def gqa():
    return variants.build("gqa", model="tiny")


def test_a_fill_makes_every_sequence_hold_its_length():
    """A ragged batch filled again is uniform: its old lengths would have placed the next decode's
    entries at positions 1 and 2 of a cache filled to 10."""
    layer = variants.build("mla", model="tiny")
    cache = layer.new_cache(2, 16)
    cache.set_seq_lens([1, 2])
    cache.fill_random_(10)
    assert cache.seq_lens is None and cache.length == 10
    layer.decode(_x(2, 1), cache)
    assert cache.seq_lens is None and cache.length == 11


@pytest.mark.parametrize("theta", [float("nan"), float("inf"), 0, -1.0, "1e4", True])
def test_a_rope_base_is_a_finite_positive_number(theta):
    with pytest.raises(ValueError, match=r"^rope_theta=.* is not allowed: it must be a finite positive number"):
        variants.build("gqa", model="tiny", rope_theta=theta)
    with pytest.raises(ValueError, match=r"^theta=.* is not allowed"):
        rope.Rope(4, theta=theta)


@pytest.mark.parametrize(("call", "message"), [
    (lambda g, g64: g.prefill(_x(1, 4).numpy(), g.new_cache(1, 8)), r"^x is a ndarray; give a torch.Tensor"),
    (lambda g, g64: g.prefill(_x(1, 4), None), r"^cache is a NoneType; give a cache made by layer.new_cache"),
    (lambda g, g64: g.prepare("prefill", _x(1, 4), "cache"), r"^cache is a str; give a cache"),
    (lambda g, g64: g.prefill(_x(1, 4, device="meta"), g.new_cache(1, 8)), r"^x is on meta but the layer on cpu"),
    (lambda g, g64: g.prefill(_x(1, 4), g64.new_cache(1, 8)), r"^the cache holds torch.float64 but the layer torch.float32"),
], ids=["numpy x", "no cache", "a string cache", "x on meta", "a float64 cache"])
def test_wrong_arguments_to_a_step_are_named(gqa, call, message):
    g64 = variants.build("gqa", model="tiny", dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        call(gqa, g64)


def test_cross_attention_needs_a_memory_of_at_least_one_token_in_the_layer_dtype():
    layer = variants.build("mla", model="tiny", attention="cross")
    with pytest.raises(ValueError, match=r"expected \[batch=1, M >= 1, hidden=64\]"):
        layer.prefill(_x(1, 2), layer.new_cache(1, 8), memory_BMD=torch.randn(1, 0, 64))  # all zeros before
    with pytest.raises(ValueError, match=r"^memory is torch.float64 on cpu but the layer torch.float32"):
        layer.prefill(_x(1, 2), layer.new_cache(1, 8), memory_BMD=torch.randn(1, 3, 64, dtype=torch.float64))


def test_a_sliding_window_layer_refuses_a_ragged_decode_in_one_line():
    layer = variants.build("swa", model="tiny", sliding_window=4)
    cache = layer.new_cache(2, 16)
    cache.set_seq_lens([2, 6])
    with pytest.raises(ValueError, match=r"^seq_lens=\[2, 6\]: a sliding-window layer decodes uniform batches only"):
        layer.decode(_x(2, 1), cache)


def test_a_cache_made_without_the_layer_gets_its_rope_table(gqa):
    """A KVCache built directly (no new_cache, so no RoPE table reserved) decodes a ragged batch as a
    cache from new_cache does (an IndexError inside RoPE before)."""
    outputs = []
    for cache in (variants.KVCache(gqa.cache_layout("standard"), batch=2, max_len=32, dtype=torch.float32,
                                   device="cpu"), gqa.new_cache(2, 32)):
        cache.fill_random_(10, seed=1)
        cache.set_seq_lens([3, 10])
        outputs.append(gqa.decode(_x(2, 1), cache))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


@pytest.mark.parametrize(("batch", "max_len"), [("2", 8), (None, 8), (True, 8), (1, 8.0), (1, None), (1, "8"),
                                                (2, [8.7, 8.2]), (0, 8), (1, [8, 0])])
def test_cache_sizes_are_positive_integers(gqa, batch, max_len):
    with pytest.raises(ValueError, match=r"^cache batch=.*: both must be positive integers"):
        gqa.new_cache(batch, max_len, page_size=8 if isinstance(max_len, list) else None)


def test_a_huge_uniform_batch_builds_no_list_per_sequence(gqa):
    """A uniform cache's capacities and page table are arithmetic: 10^9 sequences fail in the
    allocator's own words at once, not with a MemoryError building Python lists first."""
    with pytest.raises(RuntimeError, match="allocate"):
        gqa.new_cache(10**9, 10**6)
    paged = gqa.new_cache(3, 20, page_size=8)
    assert paged.block_table.tolist() == [[8, 7, 6], [5, 4, 3], [2, 1, 0]]  # reverse order, as a ragged one's
    assert paged.capacities == [20, 20, 20]


@pytest.mark.parametrize("seq_lens", [3, None, "12", [1.9, 2.9, 1], ["1", "2", "3"], [True, False, True]])
def test_seq_lens_are_integers(gqa, seq_lens):
    with pytest.raises(ValueError, match=r"^seq_lens=.* is not allowed: one integer length per sequence \(3\)"):
        gqa.new_cache(3, 20, page_size=8).set_seq_lens(seq_lens)


def test_a_state_cache_range_checks_its_lengths():
    cache = variants.build("gdn", model="tiny_hybrid").new_cache(2, 8)
    with pytest.raises(ValueError, match=r"^seq_lens\[1\]=99 is outside \[0, 8\]"):
        cache.set_seq_lens([3, 99])


@pytest.mark.parametrize("name", ["../config", "model/tiny", "/etc/passwd"])
def test_a_preset_is_a_name_not_a_path(name):
    with pytest.raises(ValueError, match=r"^unknown model preset .*; valid: deepseek_v2"):
        variants.build("gqa", model=name)


@pytest.mark.parametrize(("kw", "message"), [
    ({"dtype": "float32"}, r"^dtype='float32' is not allowed: a floating torch.dtype"),
    ({"dtype": torch.int32}, r"^dtype=torch.int32 is not allowed"),
    ({"device": "gpu"}, r"^device='gpu' is not a device; valid: cpu, cuda"),
    ({"shape": {"hidden": 64}}, r"^shape=\{'hidden': 64\} is not a ModelShape"),
])
def test_build_names_a_bad_dtype_device_or_shape(kw, message):
    with pytest.raises(ValueError, match=message):
        variants.build("gqa", **({"model": "tiny"} | kw))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_build_on_cuda_without_cuda_says_so():
    with pytest.raises(ValueError, match=r"^device='cuda': CUDA is not available here"):
        variants.build("gqa", model="tiny", device="cuda")
