"""Every implementation against the float64 reference, and the implementations against each other."""

from __future__ import annotations

import pytest
import torch

from attnbench import variants
from tests.reference import reference, rel_err
from tests.shapes import COMPILING, MLA_SETTINGS, TINY, TINY_Q, VARIANTS, build_mla

B, PREFILL, TOTAL, MAX_LEN = 2, 5, 9, 12


def supported(layer) -> list[str]:
    return [impl.name for impl in variants.IMPLEMENTATIONS if impl.name not in COMPILING
            and impl.supports(layer, phase="decode", device=torch.device("cpu"), dtype=layer.dtype) is None]


def shapes_for(variant: str):
    return [TINY, TINY_Q] if variant == "mla" else [TINY]


CASES = [(v, s, layout) for v in VARIANTS for s in shapes_for(v) for layout in ("half", "interleaved")]
IDS = [f"{v}-q{s.q_rank}-{layout}" for v, s, layout in CASES]


@pytest.mark.parametrize(("variant", "shape", "layout"), CASES, ids=IDS)
def test_every_implementation_matches_float64_reference(variant, shape, layout, seed):
    layer = variants.build(variant, shape.replace(rope_layout=layout), seed=seed)
    x_BTD = torch.randn(B, TOTAL, shape.hidden)
    expected = reference(layer, x_BTD)
    impls = supported(layer)
    assert {"eager", "sdpa"} <= set(impls)
    for impl in impls:
        cache = layer.new_cache(B, MAX_LEN, impl=impl)
        got = [layer.prefill(x_BTD[:, :PREFILL], cache, impl=impl),  # prefill
               layer.decode(x_BTD[:, PREFILL:PREFILL + 1], cache, impl=impl),  # one-token decode
               layer.decode(x_BTD[:, PREFILL + 1:], cache, impl=impl)]  # multi-token decode
        err = rel_err(torch.cat(got, dim=1), expected)
        assert err <= 1e-5, f"{variant}/{impl}: fp32 relative error {err:.2e} > 1e-5"
        assert cache.length == TOTAL


@pytest.mark.parametrize("shape", [TINY, TINY_Q], ids=["no-q-compression", "q-compression"])
@pytest.mark.parametrize("impl", ["absorbed", "absorbed_sdpa", "absorbed_fold_o"])
def test_absorbed_equals_eager(shape, impl, seed):
    layer = variants.build("mla", shape, dtype=torch.float64, seed=seed)
    x_BTD = torch.randn(B, TOTAL, shape.hidden, dtype=torch.float64)
    outs = {}
    for name in ("eager", impl):
        cache = layer.new_cache(B, MAX_LEN, impl=name)
        outs[name] = [layer.prefill(x_BTD[:, :PREFILL], cache, impl=name),
                      layer.decode(x_BTD[:, PREFILL:PREFILL + 1], cache, impl=name),
                      layer.decode(x_BTD[:, PREFILL + 1:], cache, impl=name)]
    for phase, a, e in zip(("prefill", "decode-1", "decode-3"), outs[impl], outs["eager"], strict=True):
        assert rel_err(a, e) <= 1e-12, f"{impl} vs eager differ in {phase}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_by_token_decode_equals_prefill_tail(variant, seed):
    layer = variants.build(variant, TINY_Q if variant == "mla" else TINY, dtype=torch.float64, seed=seed)
    x_BTD = torch.randn(B, TOTAL, layer.hidden, dtype=torch.float64)
    for impl in supported(layer):
        full = layer.prefill(x_BTD, layer.new_cache(B, MAX_LEN, impl=impl), impl=impl)
        cache = layer.new_cache(B, MAX_LEN, impl=impl)
        steps = [layer.prefill(x_BTD[:, :1], cache, impl=impl)]
        steps += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(1, TOTAL)]
        assert rel_err(torch.cat(steps, dim=1), full) <= 1e-12, impl


@pytest.mark.parametrize(("variant", "kv_heads"), [("mha", TINY.heads), ("mqa", 1)])
def test_mha_and_mqa_are_gqa_settings(variant, kv_heads, seed):
    special = variants.build(variant, TINY, dtype=torch.float64, seed=seed)
    general = variants.build("gqa", TINY.replace(kv_heads=kv_heads), dtype=torch.float64)
    general.load_state_dict(special.state_dict())
    x_BTD = torch.randn(B, TOTAL, TINY.hidden, dtype=torch.float64)
    for impl in ("eager", "sdpa"):
        a = special.prefill(x_BTD, special.new_cache(B, MAX_LEN, impl=impl), impl=impl)
        b = general.prefill(x_BTD, general.new_cache(B, MAX_LEN, impl=impl), impl=impl)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert special.kv_bytes_per_token() == general.kv_bytes_per_token()


@pytest.mark.parametrize("variant", VARIANTS)
def test_cross_attention_matches_reference(variant, seed):
    shape = TINY_Q if variant == "mla" else TINY
    layer = variants.build(variant, shape, attention="cross", seed=seed)
    memory_BMD = torch.randn(B, 7, shape.hidden)
    x_BTD = torch.randn(B, 4, shape.hidden)
    expected = reference(layer, x_BTD, memory_BMD)
    for impl in supported(layer):
        cache = layer.new_cache(B, MAX_LEN, impl=impl)
        first = layer.prefill(x_BTD[:, :2], cache, impl=impl, memory_BMD=memory_BMD)
        assert cache.length == 7
        rest = [layer.decode(x_BTD[:, 2:3], cache, impl=impl), layer.decode(x_BTD[:, 3:], cache, impl=impl)]
        assert cache.length == 7, "cross-attention decode must not write the memory cache"
        err = rel_err(torch.cat([first, *rest], dim=1), expected)
        assert err <= 1e-5, f"{variant}/{impl} cross-attention: relative error {err:.2e}"


def test_decode_step_is_repeatable_and_writes_in_place(seed):
    layer = variants.build("mla", TINY_Q, dtype=torch.float64, seed=seed)
    cache = layer.new_cache(B, MAX_LEN, impl="absorbed")
    layer.prefill(torch.randn(B, PREFILL, TINY_Q.hidden, dtype=torch.float64), cache, impl="absorbed")
    storage = cache.packed.data_ptr()
    step = layer.prepare("decode", torch.randn(B, 2, TINY_Q.hidden, dtype=torch.float64), cache, impl="absorbed")
    first, second = step(), step()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert cache.length == PREFILL and cache.packed.data_ptr() == storage


def test_fill_random_marks_the_prefix_valid_and_is_reproducible():
    layer = variants.build("mla", TINY_Q)
    a, b = layer.new_cache(2, 8), layer.new_cache(2, 8)
    a.fill_random_(5, seed=3)
    b.fill_random_(5, seed=3)
    assert a.length == 5 and torch.equal(a.packed, b.packed)
    assert a.packed[:, :5].abs().sum() > 0 and a.packed[:, 5:].abs().sum() == 0
    with pytest.raises(ValueError, match="fill length 9 is outside"):
        a.fill_random_(9)


@pytest.mark.parametrize("name", sorted(MLA_SETTINGS))
def test_mla_settings_match_float64_reference(name, seed):
    """rope_heads > 1, per-group frequencies, no latent norm, no nope dims: every path, every phase."""
    layer = build_mla(name, seed=seed)
    x_BTD = torch.randn(B, TOTAL, layer.hidden)
    expected = reference(layer, x_BTD)
    for impl in supported(layer):
        cache = layer.new_cache(B, MAX_LEN, impl=impl)
        got = [layer.prefill(x_BTD[:, :PREFILL], cache, impl=impl),
               layer.decode(x_BTD[:, PREFILL:PREFILL + 1], cache, impl=impl),
               layer.decode(x_BTD[:, PREFILL + 1:], cache, impl=impl)]
        err = rel_err(torch.cat(got, dim=1), expected)
        assert err <= 1e-5, f"{name}/{impl}: fp32 relative error {err:.2e} > 1e-5"


@pytest.mark.parametrize("name", sorted(MLA_SETTINGS))
@pytest.mark.parametrize("impl", ["absorbed", "absorbed_sdpa", "absorbed_fold_o", "expanded"])
def test_mla_settings_absorbed_equals_eager(name, impl, seed):
    layer = build_mla(name, dtype=torch.float64, seed=seed)
    x_BTD = torch.randn(B, TOTAL, layer.hidden, dtype=torch.float64)
    outs = {}
    for which in ("eager", impl):
        cache = layer.new_cache(B, MAX_LEN, impl=which)
        outs[which] = torch.cat([layer.prefill(x_BTD[:, :PREFILL], cache, impl=which),
                                 *[layer.decode(x_BTD[:, t:t + 1], cache, impl=which) for t in range(PREFILL, TOTAL)]],
                                dim=1)
    assert rel_err(outs[impl], outs["eager"]) <= 1e-12


@pytest.mark.parametrize("name", sorted(MLA_SETTINGS))
def test_mla_settings_cross_attention_matches_reference(name, seed):
    layer = build_mla(name, seed=seed, attention="cross")
    memory_BMD, x_BTD = torch.randn(B, 7, layer.hidden), torch.randn(B, 3, layer.hidden)
    expected = reference(layer, x_BTD, memory_BMD)
    for impl in supported(layer):
        cache = layer.new_cache(B, MAX_LEN, impl=impl)
        got = torch.cat([layer.prefill(x_BTD[:, :2], cache, impl=impl, memory_BMD=memory_BMD),
                         layer.decode(x_BTD[:, 2:], cache, impl=impl)], dim=1)
        assert rel_err(got, expected) <= 1e-5, impl
