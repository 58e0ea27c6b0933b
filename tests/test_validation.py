"""Bad input fails early with one line naming the value and what is allowed."""

from __future__ import annotations

import pytest
import torch

from attnbench import variants
from tests.shapes import TINY, TINY_Q


@pytest.mark.parametrize(("variant", "dims", "needle"), [
    ("gqa", {"heads": 8, "kv_heads": 3}, "kv_heads=3 does not divide heads=8; valid kv_heads: 1, 2, 4, 8"),
    ("mla", {"d_r": 5}, "d_r=5 is odd"),
    ("mla", {"d_c": 0}, "d_c=0 is not allowed"),
    ("mha", {"heads": -2}, "heads=-2 is not allowed"),
    ("mla", {"q_rank": 0}, "q_rank=0 is not allowed: q_rank must be a positive integer or null"),
    ("mha", {"head_dim": 7}, "head_dim=7 is odd"),
    ("mla", {"rope_layout": "spiral"}, "rope_layout='spiral' is not one of: half, interleaved"),
    ("mla", {"flavour": 1}, "unknown shape key 'flavour'; valid: "),
])
def test_bad_shapes_fail_at_construction(variant, dims, needle):
    with pytest.raises(ValueError, match="^" + needle.replace("(", r"\(").replace(")", r"\)")):
        variants.build(variant, TINY, **dims)


def test_unknown_names_list_the_valid_ones():
    valid = ", ".join(variants.VARIANTS.names())
    assert {"gqa", "mla", "gdn"} <= set(variants.VARIANTS.names())
    with pytest.raises(ValueError, match=f"unknown variant 'mxa'; valid: {valid}$"):
        variants.build("mxa", TINY)
    layer = variants.build("mla", TINY)
    with pytest.raises(ValueError, match=r"unknown implementation 'fast'; valid: absorbed, .*eager.*sdpa"):
        layer.new_cache(1, 8, impl="fast")
    with pytest.raises(ValueError, match=r"unknown model preset 'gpt5'; valid: .*deepseek_v3"):
        variants.build("mla", model="gpt5")


@pytest.mark.parametrize("variant", ["mha", "mqa", "gqa"])
def test_absorbed_is_refused_for_non_mla_variants(variant):
    layer = variants.build(variant, TINY)
    with pytest.raises(ValueError, match=f"^absorbed applies to dsa, mla only; {variant} supports: eager, flex, hf, sdpa$"):
        layer.new_cache(1, 8, impl="absorbed")
    cache = layer.new_cache(1, 8)
    with pytest.raises(ValueError, match="^absorbed applies to dsa, mla only"):
        layer.prefill(torch.randn(1, 2, TINY.hidden), cache, impl="absorbed")


def test_step_inputs_are_checked():
    layer = variants.build("mla", TINY_Q)
    cache = layer.new_cache(2, 6)
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 5\); expected \[batch=2, L, hidden=24\]"):
        layer.prefill(torch.randn(2, 3, 5), cache)
    with pytest.raises(ValueError, match="exceeds the cache's max_len=6"):
        layer.prefill(torch.randn(2, 7, TINY_Q.hidden), cache)
    with pytest.raises(ValueError, match="x has dtype torch.float64 but the layer holds torch.float32"):
        layer.prefill(torch.randn(2, 3, TINY_Q.hidden, dtype=torch.float64), cache)
    with pytest.raises(ValueError, match="compile='fast' is not one of: default, reduce-overhead, max-autotune"):
        layer.prefill(torch.randn(2, 3, TINY_Q.hidden), cache, compile="fast")
    with pytest.raises(ValueError, match="this cache was made for another path"):
        layer.prefill(torch.randn(2, 3, TINY_Q.hidden), cache, impl="expanded")
    with pytest.raises(ValueError, match="memory_BMD is for cross-attention"):
        layer.prefill(torch.randn(2, 3, TINY_Q.hidden), cache, memory_BMD=torch.randn(2, 3, TINY_Q.hidden))


def test_cross_attention_needs_memory_first():
    layer = variants.build("gqa", TINY, attention="cross")
    cache = layer.new_cache(1, 8)
    with pytest.raises(ValueError, match="cross-attention prefill needs memory_BMD"):
        layer.prefill(torch.randn(1, 2, TINY.hidden), cache)
    with pytest.raises(ValueError, match="cross-attention decode needs a cache filled by prefill"):
        layer.decode(torch.randn(1, 1, TINY.hidden), cache)


def test_mla_converted_settings_are_validated():
    from attnbench.variants.families.mla import MLA, MLAConfig
    from attnbench.variants.rope import Rope

    base = dict(hidden=24, heads=6, d_c=10, d_r=4, nope_head_dim=6, v_head_dim=5)
    with pytest.raises(ValueError, match="^rope_heads=4 does not divide heads=6; valid rope_heads: 1, 2, 3, 6$"):
        MLAConfig(**base | {"rope_heads": 4})
    with pytest.raises(ValueError, match="^nope_head_dim=-1 is not allowed: nope_head_dim must be a non-negative"):
        MLAConfig(**base | {"nope_head_dim": -1})
    MLAConfig(**base | {"nope_head_dim": 0})  # every query/key dim rotary: allowed
    with pytest.raises(ValueError, match=r"^the rope has frequencies for 2 head groups; rope_heads=3 needs \[3, 2\]"):
        MLA(MLAConfig(**base | {"rope_heads": 3}), rope=Rope(4, inv_freq=torch.ones(2, 2)))
    with pytest.raises(ValueError, match=r"^inv_freq has shape \(3,\); expected \[2\] or \[groups, 2\]"):
        Rope(4, inv_freq=torch.ones(3))
