"""Paged caches and ragged decode batches: the same outputs as the contiguous, uniform ones."""

from __future__ import annotations

import math

import pytest
import torch

from attnbench import variants
from tests.reference import rel_err
from tests.test_cost import count_flops
from tests.shapes import TINY
from attnbench.variants.cache import CacheField, CacheLayout
from attnbench.variants.registry import IMPLEMENTATIONS

CASES = [("gqa", "eager"), ("gqa", "sdpa"), ("mqa", "eager"), ("mla", "eager"), ("mla", "absorbed"),
         ("mla", "absorbed_sdpa"), ("mla", "absorbed_fold_o"), ("mla", "expanded")]


def _layer(variant: str):  # noqa: ANN202
    torch.manual_seed(0)
    return variants.build(variant, TINY, dtype=torch.float64)


@pytest.mark.parametrize(("variant", "impl"), CASES)
def test_a_paged_cache_equals_the_contiguous_one(variant: str, impl: str) -> None:
    layer = _layer(variant)
    x_BTD = torch.randn(3, 11, TINY.hidden, dtype=torch.float64)
    outs = []
    for page_size in (None, 4):
        cache = layer.new_cache(3, 12, impl=impl, page_size=page_size)
        ys = [layer.prefill(x_BTD[:, :6], cache, impl=impl)]
        ys += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(6, 9)]
        ys.append(layer.decode(x_BTD[:, 9:], cache, impl=impl))  # two tokens at once
        outs.append(torch.cat(ys, dim=1))
    # The same matmuls on the same numbers: only where the entries live differs.
    assert rel_err(outs[1], outs[0]) <= 1e-14


@pytest.mark.parametrize("page_size", [None, 4])
@pytest.mark.parametrize(("variant", "impl"), CASES)
def test_a_ragged_batch_equals_its_sequences_one_by_one(variant: str, impl: str, page_size: int | None) -> None:
    layer = _layer(variant)
    lens = [2, 7, 4]
    xs = [torch.randn(1, n + 2, TINY.hidden, dtype=torch.float64) for n in lens]
    # One by one: each sequence prefilled, then two decode tokens.
    alone = []
    for x in xs:
        cache = layer.new_cache(1, 10, impl=impl)
        n = x.shape[1] - 2
        layer.prefill(x[:, :n], cache, impl=impl)
        alone.append(torch.cat([layer.decode(x[:, t:t + 1], cache, impl=impl) for t in (n, n + 1)], dim=1))
    # Together: a cache whose rows hold each prefix (written by one-sequence prefills into a
    # contiguous or paged batch cache), then two ragged decode steps.
    cache = layer.new_cache(3, 10, impl=impl, page_size=page_size)
    for b, (x, n) in enumerate(zip(xs, lens, strict=True)):
        one = layer.new_cache(1, 10, impl=impl)
        layer.prefill(x[:, :n], one, impl=impl)
        for field in cache.layout.fields:
            _write_row(cache, field.name, b, one.read(field.name, n))
    cache.set_seq_lens(lens)
    steps = []
    for i in range(2):
        x_B1D = torch.cat([x[:, n + i:n + i + 1] for x, n in zip(xs, lens, strict=True)])
        steps.append(layer.decode(x_B1D, cache, impl=impl))
    together = torch.cat(steps, dim=1)
    assert cache.seq_lens == [n + 2 for n in lens]
    for b in range(3):
        assert rel_err(together[b:b + 1], alone[b]) <= 1e-13, b


def _write_row(cache, name: str, b: int, value_1N: torch.Tensor) -> None:  # noqa: ANN001
    """Positions [0, N) of sequence b only (other rows rewrite their own entries unchanged)."""
    rows = cache.read(name, value_1N.shape[1]).clone()
    rows[b] = value_1N[0]
    cache.write(0, **{name: rows})


@pytest.mark.parametrize("impl", ["eager", "absorbed"])
@pytest.mark.parametrize(("capacity", "page_size"), [(12, 4), ([5, 17, 64], 16), ([1, 1], 1), (3, 8)])
def test_cache_bytes_equal_the_layouts_function(impl: str, capacity, page_size: int) -> None:  # noqa: ANN001
    layer = _layer("mla" if impl == "absorbed" else "gqa")
    batch = 3 if isinstance(capacity, int) else len(capacity)
    cache = layer.new_cache(batch, capacity, impl=impl, page_size=page_size)
    layout = layer.cache_layout(IMPLEMENTATIONS.get(impl).path)
    assert cache.nbytes() == layout.nbytes(batch=batch, context=capacity, dtype=torch.float64, page_size=page_size)
    # Whole pages per sequence, plus an int32 block table.
    lens = [capacity] * batch if isinstance(capacity, int) else capacity
    pages = [math.ceil(n / page_size) for n in lens]
    expected = sum(pages) * page_size * layer.kv_bytes_per_token(IMPLEMENTATIONS.get(impl).path) \
        + batch * max(pages) * 4
    assert cache.nbytes() == expected
    contiguous = layer.new_cache(batch, max(lens), impl=impl)
    assert contiguous.nbytes() == layout.nbytes(batch=batch, context=max(lens), dtype=torch.float64)


def test_a_layout_overrides_how_many_positions_it_keeps() -> None:
    class Ring(CacheLayout):
        def positions(self, context: int) -> int:
            return min(4, context)

    ring = Ring((CacheField("k", (2, 3)),))
    assert ring.nbytes(batch=2, context=100, dtype=torch.float32) == 2 * 4 * 6 * 4
    assert ring.nbytes(batch=2, context=[1, 100], dtype=torch.float32, page_size=2) == (1 + 2) * 2 * 6 * 4 + 2 * 2 * 4


@pytest.mark.parametrize("page_size", [0, 3, 12, -4, 2.0, True])
def test_a_page_size_must_be_a_positive_power_of_two(page_size: object) -> None:
    with pytest.raises(ValueError, match=rf"^page_size={page_size!r} is not allowed: a page size is a positive "
                                         r"power of two \(e.g. 16, 64\)$"):
        _layer("gqa").new_cache(2, 8, page_size=page_size)


def test_ragged_lengths_are_checked_at_construction() -> None:
    cache = _layer("gqa").new_cache(2, 8)
    with pytest.raises(ValueError, match=r"^seq_lens=\[1, 2, 3\] has 3 lengths for a cache of batch=2; give exactly 2$"):
        cache.set_seq_lens([1, 2, 3])
    with pytest.raises(ValueError, match=r"^seq_lens\[1\]=9 is outside \[0, 8\], that sequence's capacity$"):
        cache.set_seq_lens([1, 9])
    with pytest.raises(ValueError, match=r"^max_len=\[4, 8\]: one capacity per sequence needs a paged cache"):
        _layer("gqa").new_cache(2, [4, 8])
    with pytest.raises(ValueError, match=r"^3 sequence lengths \[4, 8, 8\] for a batch of 2; give one length per "
                                         r"sequence \(2\)$"):
        _layer("gqa").new_cache(2, [4, 8, 8], page_size=4)


def test_a_ragged_decode_past_a_sequences_capacity_fails() -> None:
    layer = _layer("gqa")
    cache = layer.new_cache(2, [4, 8], page_size=4)
    cache.set_seq_lens([4, 2])
    with pytest.raises(ValueError, match=r"^decode of 1 tokens after seq_lens\[0\]=4 exceeds that sequence's capacity 4$"):
        layer.decode(torch.randn(2, 1, TINY.hidden, dtype=torch.float64), cache)


@pytest.mark.parametrize(("variant", "impl"), CASES)
def test_cost_model_flops_equal_the_flop_counter_on_ragged_and_paged_steps(variant: str, impl: str) -> None:
    """The built-in kernels attend on the batch padded to its longest sequence (masked), so a
    ragged step costs what a uniform one at the longest length does; pages change no FLOPs."""
    layer = _layer(variant)
    implementation = IMPLEMENTATIONS.get(impl)
    for page_size in (None, 4):
        cache = layer.new_cache(3, 16, impl=impl, page_size=page_size)
        cache.fill_random_(9)
        cache.set_seq_lens([3, 9, 5])
        step = layer.prepare("decode", torch.randn(3, 1, TINY.hidden, dtype=torch.float64), cache, impl=impl)
        expected = implementation.cost(layer, batch=3, q_len=1, cached=9, new_kv=1).flops
        assert count_flops(step) == expected, page_size
