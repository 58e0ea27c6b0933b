"""Sliding windows, learned sinks and sink tokens against the float64 reference, through the ring cache."""

from __future__ import annotations

import pytest
import torch

from attnbench import variants
from tests.reference import reference, rel_err
from attnbench.variants.families.swa import RingLayout
from attnbench.variants.mask import and_masks, causal, dense, document, or_masks, prefix, sink_tokens, sliding_window
from attnbench.variants.shape import ModelShape

SHAPE = ModelShape(hidden=24, heads=4, head_dim=8, kv_heads=2, sliding_window=4, name="test")
SETTINGS = {
    "window": {},
    "learned-sinks": {"attn_sinks": True},
    "sink-tokens": {"sink_tokens": 2},
    "both": {"attn_sinks": True, "sink_tokens": 1},
}
B, PREFILL, TOTAL = 2, 6, 13  # decode runs 7 tokens past the end of a 4-token window


def _layer(setting: str, dtype: torch.dtype = torch.float32) -> variants.AttentionLayer:
    layer = variants.build("swa", SHAPE.replace(**SETTINGS[setting]), dtype=dtype, seed=0)
    if layer.sinks is not None:
        with torch.no_grad():
            layer.sinks.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))  # one large enough to matter
    return layer


def _impls(layer) -> list[str]:
    return ["eager"] + (["sdpa"] if layer.sinks is None else [])


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_prefill_then_token_decode_past_the_window(setting, seed):
    layer = _layer(setting)
    x_BTD = torch.randn(B, TOTAL, SHAPE.hidden)
    expected = reference(layer, x_BTD)
    for impl in _impls(layer):
        cache = layer.new_cache(B, TOTAL, impl=impl)
        rows = SHAPE.sliding_window + SETTINGS[setting].get("sink_tokens", 0)
        assert cache["k"].shape[1] == rows and cache.nbytes() == B * cache.layout.bytes_at(TOTAL, torch.float32)
        outs = [layer.prefill(x_BTD[:, :PREFILL], cache, impl=impl)]
        outs += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(PREFILL, TOTAL)]
        got = torch.cat(outs, dim=1)
        assert rel_err(got, expected) < 1e-5, f"{setting}/{impl}"


@pytest.mark.parametrize("setting", ["window", "both"])
def test_long_prefill_and_multi_token_decode_wrap_the_ring(setting, seed):
    """A prefill longer than the ring, then two-token steps that straddle its wrap."""
    layer = _layer(setting, torch.float64)
    x_BTD = torch.randn(B, TOTAL, SHAPE.hidden, dtype=torch.float64)
    expected = reference(layer, x_BTD)
    cache = layer.new_cache(B, TOTAL)
    outs = [layer.prefill(x_BTD[:, :7], cache)]
    outs += [layer.decode(x_BTD[:, t:t + 2], cache) for t in (7, 9, 11)]
    # float64 throughout, but the rotary frequencies are float32 values: 1e-7, not 1e-12.
    assert rel_err(torch.cat(outs, dim=1), expected) < 1e-7
    # The same sequence in one prefill (the ring never read) agrees to float64 round-off.
    assert rel_err(torch.cat(outs, dim=1), layer.prefill(x_BTD, layer.new_cache(B, TOTAL))) < 1e-12


def test_ring_layout_size_is_a_function_of_the_context():
    layout = _layer("sink-tokens").cache_layout("standard")
    assert isinstance(layout, RingLayout)
    assert [layout.positions(t) for t in (1, 5, 6, 7, 10_000)] == [1, 5, 6, 6, 6]
    assert layout.bytes_at(10_000, torch.bfloat16) == 6 * 2 * 2 * 8 * 2


@pytest.mark.parametrize("max_len", [3, 4, 64])
def test_a_ring_is_never_paged_even_while_the_context_fits_its_window(max_len):
    """A context within the window kept the ring's rows one per position, and a paged cache was built;
    a prefill past the window then wrote ring slots into pages (an assert): refused up front instead."""
    with pytest.raises(ValueError, match=r"^page_size=2: a ring \(sliding-window\) or compressed cache is not paged"):
        _layer(next(iter(SETTINGS))).new_cache(1, max_len, page_size=2)


def test_full_layers_of_a_windowed_model_are_plain_gqa(seed):
    from attnbench.variants.families.swa import make_layer

    layer = make_layer(SHAPE.replace(attn_sinks=True), "self", window=None).double()
    with torch.no_grad():
        layer.sinks.normal_()
    x_BTD = torch.randn(1, 7, SHAPE.hidden, dtype=torch.float64)
    cache = layer.new_cache(1, 7)
    assert not isinstance(cache.layout, RingLayout)
    assert rel_err(layer.prefill(x_BTD, cache), reference(layer, x_BTD)) < 1e-7  # float32 rotary frequencies


def test_mask_functions_compose_and_convert():
    q_L, kv_T = torch.arange(6), torch.arange(6)
    windowed = dense(and_masks(causal, or_masks(sliding_window(2), sink_tokens(1))), q_L, kv_T)
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                             [1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0], [1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(windowed, expected)
    prefix_lm = dense(or_masks(causal, prefix(3)), q_L, kv_T)
    assert prefix_lm[0, :3].all() and not prefix_lm[0, 3:].any() and prefix_lm[5].all()
    docs = dense(and_masks(causal, document(torch.tensor([0, 0, 1, 1, 1, 2]))), q_L, kv_T)
    assert docs[4].tolist() == [False, False, True, True, True, False]
    # A key row never written (position -1) is never seen.
    assert dense(causal, q_L[:1] + 9, torch.tensor([3, -1])).tolist() == [[True, False]]


@pytest.mark.parametrize(("changes", "needle"), [
    ({"sliding_window": 0}, "^sliding_window=0 is not allowed: sliding_window must be a positive integer or null$"),
    ({"sink_tokens": -1}, "^sink_tokens=-1 is not allowed: it must be an integer >= 0$"),
    ({"layer_pattern": "SX"}, "^layer_pattern='SX' is not allowed: it must be a string of the letters S"),
    ({"sliding_window": None}, "^variant=swa needs sliding_window in the model shape; test has none"),
])
def test_bad_window_settings_fail_at_construction(changes, needle):
    with pytest.raises(ValueError, match=needle):
        variants.build("swa", SHAPE.replace(**changes))


def test_learned_sinks_on_a_kernel_that_cannot_apply_them_fail_at_construction():
    layer = _layer("learned-sinks")
    needle = "^learned sinks need a kernel that applies them; the sdpa kernel does not"
    with pytest.raises(ValueError, match=needle):
        layer.new_cache(1, 8, impl="sdpa")
    impl = variants.IMPLEMENTATIONS.get("sdpa")
    assert impl.supports(layer, phase="decode", device=torch.device("cpu"), dtype=torch.float32).startswith(
        "learned sinks need a kernel")


def test_whole_model_kv_honours_the_layer_schedule():
    from attnbench.harness.report.analysis.capacity import longest_context
    from attnbench.harness.report.analysis.costmodel import model_cost
    from attnbench.variants.families.swa import make_layer, model_kv_bytes

    shape = SHAPE.replace(num_layers=5, layer_pattern="SF", sink_tokens=1)  # S F S F S: 3 window layers
    assert shape.layer_windows() == [4, None, 4, None, 4]
    context = 9
    caches = [make_layer(shape, "self", window=w).new_cache(1, context) for w in shape.layer_windows()]
    measured = sum(c.nbytes() for c in caches)
    per_token = 2 * 2 * 8 * 4  # K and V of 2 kv heads of 8, float32
    assert measured == per_token * (2 * 9 + 3 * 5) == model_kv_bytes(shape, context=context, dtype=torch.float32)
    cost = model_cost("swa", shape, "float32")
    assert cost.ring_layers == 3 and cost.layout.positions(10 ** 6) == 5
    assert cost.kv_bytes_model_at(context) == measured
    # Past the ring only the two full layers grow: the closed form inverts kv_bytes_model_at.
    budget = cost.weight_bytes_model + cost.kv_bytes_model_at(1000)
    assert longest_context(cost, batch=1, budget_bytes=budget, reserve=0.0) == 1000


@pytest.mark.parametrize("setting", ["window", "both"])
def test_cost_flops_equal_flop_counter_through_the_ring(setting, seed):
    from tests.test_cost import count_flops  # counts torch's CPU flash kernel as the CUDA one

    layer = _layer(setting)
    for impl in _impls(layer):
        cache = layer.new_cache(B, TOTAL, impl=impl)
        steps = [("prefill", 7, 0)]  # longer than the ring: attends over its own keys
        steps += [("decode", 1, 7), ("decode", 3, 8)]  # the whole ring; the ring then its own keys
        for phase, q_len, cached in steps:
            cache.length = cached
            step = layer.prepare(phase, torch.randn(B, q_len, SHAPE.hidden), cache, impl=impl)
            expected = variants.IMPLEMENTATIONS.get(impl).cost(layer, batch=B, q_len=q_len, cached=cached,
                                                               new_kv=q_len).flops
            assert count_flops(step) == expected, f"{setting}/{impl} {phase} L={q_len} after {cached}"
