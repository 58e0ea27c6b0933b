"""Gated DeltaNet (gdn) and Kimi Delta Attention (kda): the math, the state cache and the cost model."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnbench import variants
from tests.reference import rel_err
from tests.reference_linear import REFERENCES
from attnbench.variants.families.gdn import config_from_shape as gdn_config
from attnbench.variants.families.gdn.cost import recurrent_state_bytes, state_bytes_per_sequence
from attnbench.variants.families.gdn.rule import CHUNKED, RECURRENT
from attnbench.variants.families.kda import config_from_shape as kda_config
from attnbench.variants.presets import load_preset
from attnbench.variants.registry import IMPLEMENTATIONS
from attnbench.variants.schedule import model_kv_bytes_per_token
from attnbench.variants.shape import ModelShape

# Tiny: 2 key heads; gdn with 4 value heads (two per key head, as Qwen3-Next's 16 and 32).
TINY_LINEAR = ModelShape.from_dict(dict(hidden=32, heads=2, head_dim=8, linear_num_key_heads=2,
                                        linear_num_value_heads=4, name="tiny_linear"))
LINEAR = ("gdn", "kda")
TINY = {"gdn": TINY_LINEAR, "kda": TINY_LINEAR.replace(linear_num_value_heads=None)}  # kda: as many value heads
IMPLS = ("eager", "chunked")
# Qwen3-Next-80B-A3B and Kimi-Linear-48B-A3B (their config.json): linear heads and dims.
QWEN3_NEXT = ModelShape.from_dict(dict(hidden=2048, heads=16, head_dim=256, linear_num_key_heads=16,
                                       linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128))
KIMI_LINEAR = ModelShape.from_dict(dict(hidden=2304, heads=32, head_dim=128, linear_num_key_heads=32,
                                        linear_key_head_dim=128))


def _build(variant: str, seed: int, dtype=torch.float64):
    return variants.build(variant, TINY[variant], dtype=dtype, seed=seed)


def _prefill(layer, x, impl):
    return layer.prefill(x, layer.new_cache(x.shape[0], x.shape[1], impl=impl), impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("variant", LINEAR)
def test_prefill_matches_the_float64_reference_of_the_published_equations(variant, impl, seed):
    layer = _build(variant, seed)
    x = torch.randn(2, 70, TINY_LINEAR.hidden, dtype=torch.float64)  # two chunks, the second partial
    assert rel_err(_prefill(layer, x, impl), REFERENCES[variant](layer, x)) <= 1e-12


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("variant", LINEAR)
def test_decoding_token_by_token_gives_one_prefill(variant, impl, seed):
    layer = _build(variant, seed)
    x = torch.randn(2, 150, TINY_LINEAR.hidden, dtype=torch.float64)
    whole = _prefill(layer, x, impl)
    cache = layer.new_cache(2, 150, impl=impl)
    parts = [layer.prefill(x[:, :67], cache, impl=impl)]
    parts += [layer.decode(x[:, t:t + 1], cache, impl=impl) for t in range(67, 80)]
    parts.append(layer.decode(x[:, 80:], cache, impl=impl))  # 70 tokens on a non-zero state: chunked form
    assert cache.length == 150
    assert rel_err(torch.cat(parts, dim=1), whole) <= 1e-12


@pytest.mark.parametrize("decay", [1.0, 20.0])  # up to 20 per token: exp(-1280) across a chunk, no overflow
@pytest.mark.parametrize("per_channel", [False, True])
def test_chunked_rule_equals_recurrent_rule_from_any_state(per_channel, decay, seed):
    B, L, H, N, K, V = 2, 133, 2, 4, 8, 6
    q, k = (torch.nn.functional.normalize(torch.randn(B, L, H, K, dtype=torch.float64), dim=-1) for _ in range(2))
    v = torch.randn(B, L, N, V, dtype=torch.float64)
    g = -decay * torch.rand(B, L, N, *((K,) if per_channel else ()), dtype=torch.float64)
    beta = torch.rand(B, L, N, dtype=torch.float64)
    state = torch.randn(B, N, K, V, dtype=torch.float64)
    s_rec, s_chunk = state.clone(), state.clone()
    o_rec = RECURRENT(q, k, v, g, beta, s_rec, scale=K ** -0.5)
    o_chunk = CHUNKED(q, k, v, g, beta, s_chunk, scale=K ** -0.5)
    assert rel_err(o_chunk, o_rec) <= 1e-12
    assert rel_err(s_chunk, s_rec) <= 1e-12
    assert not torch.equal(s_rec, state)  # updated in place


@pytest.mark.parametrize("variant", LINEAR)
def test_the_state_has_one_size_whatever_the_context(variant):
    layer = variants.build(variant, TINY[variant])
    small, huge = layer.new_cache(2, 16), layer.new_cache(2, (1 << 20) + 1)
    assert small.nbytes() == huge.nbytes() == 2 * layer.state_bytes()
    layout = layer.cache_layout("standard")
    assert layout.bytes_per_token(torch.float32) == 0 and not layout.growing
    assert layout.nbytes(batch=2, context=16, dtype=torch.float32) == \
        layout.nbytes(batch=2, context=1 << 20, dtype=torch.float32) == huge.nbytes()
    state = huge.state
    huge.fill_random_(1 << 20)  # any context, no prefill
    assert huge.length == 1 << 20 and huge.state is state and huge.nbytes() == small.nbytes()
    x = torch.randn(2, 1, TINY_LINEAR.hidden)
    layer.decode(x, huge)
    assert huge.length == (1 << 20) + 1 and huge.state.data_ptr() == state.data_ptr()  # written in place


def test_the_recurrent_state_is_2_mib_at_both_models_shapes():
    for config in (gdn_config(QWEN3_NEXT), kda_config(KIMI_LINEAR)):
        assert recurrent_state_bytes(config, torch.bfloat16) == 2 * 2 ** 20  # float32 whatever the compute dtype
    # Plus the conv window of the last 3 inputs of [q; k; v] in bf16: 2·16·128 + 32·128 = 8192 channels.
    assert state_bytes_per_sequence(gdn_config(QWEN3_NEXT), torch.bfloat16) == 2 * 2 ** 20 + 8192 * 3 * 2
    meta = variants.build("gdn", QWEN3_NEXT, device="meta", dtype=torch.bfloat16)
    assert meta.state_bytes() == state_bytes_per_sequence(gdn_config(QWEN3_NEXT), torch.bfloat16)


@pytest.mark.parametrize("variant", LINEAR)
def test_a_repeated_decode_step_reads_the_same_state_and_gives_the_same_output(variant, seed):
    layer = _build(variant, seed, torch.float32)
    cache = layer.new_cache(1, 64, impl="chunked")
    cache.fill_random_(40, seed=seed)
    before = cache.state.clone()
    step = layer.prepare("decode", torch.randn(1, 1, TINY_LINEAR.hidden), cache, impl="chunked")
    first, second = step(), step()
    assert torch.equal(first, second) and torch.equal(cache.state, before) and cache.length == 40


@pytest.mark.parametrize("variant", LINEAR)
def test_flops_are_what_flop_counter_mode_counts_and_params_what_the_layer_holds(variant, seed):
    layer = _build(variant, seed, torch.float32)
    assert layer.cost(path="standard", batch=1, q_len=1, cached=1, new_kv=1).params == \
        sum(p.numel() for p in layer.parameters())
    for impl, path in (("eager", "standard"), ("chunked", "chunked")):
        for phase, L in (("prefill", 70), ("decode", 1)):
            cache = layer.new_cache(2, 128, impl=impl)
            cache.fill_random_(50 if phase == "decode" else 0)
            step = layer.prepare(phase, torch.randn(2, L, TINY_LINEAR.hidden), cache, impl=impl)
            with FlopCounterMode(display=False) as counter:
                step()
            cost = layer.cost(path=path, batch=2, q_len=L, cached=cache.length, new_kv=L)
            assert cost.flops == counter.get_total_flops(), (impl, phase)


@pytest.mark.parametrize("variant", LINEAR)
def test_a_decode_step_moves_the_whole_state_whatever_the_context(variant):
    layer = variants.build(variant, TINY[variant], device="meta")
    at_4k, at_128k = (layer.cost(path="chunked", batch=3, q_len=1, cached=n, new_kv=1) for n in (4096, 131072))
    assert at_4k == at_128k
    assert at_4k.cache_read_bytes == at_4k.cache_write_bytes == 3 * layer.state_bytes()
    assert at_4k.kv_bytes_per_token == 0
    prefill = layer.cost(path="chunked", batch=3, q_len=64, cached=0, new_kv=64)
    assert prefill.cache_read_bytes == 0 and prefill.cache_write_bytes == 3 * layer.state_bytes()


@pytest.mark.parametrize("variant", LINEAR)
def test_fp8_state_and_softmax_kernels_are_refused_with_a_reason(variant):
    with pytest.raises(ValueError, match=r"kv_dtype='fp8_e4m3' is not supported .* float32"):
        variants.build(variant, TINY[variant].replace(kv_dtype="fp8_e4m3"))
    layer = variants.build(variant, TINY[variant])
    reason = IMPLEMENTATIONS.get("sdpa").supports(layer, phase="decode", device=torch.device("cpu"),
                                                   dtype=torch.float32)
    assert reason is not None and "delta rule" in reason
    with pytest.raises(ValueError, match="delta rule"):
        layer.new_cache(1, 8, impl="sdpa")
    with pytest.raises(ValueError, match="no pages"):
        layer.new_cache(1, 64, page_size=16)


@pytest.mark.parametrize("variant", LINEAR)
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_the_numerics_gate_passes_the_chunked_implementation(variant, phase):
    from attnbench.harness.measure import numerics
    from attnbench.harness.measure.case import Case

    case = Case(variant=variant, impl="chunked", compile=None, phase=phase, model="tiny_linear", shape=TINY[variant],
                batch=2, seq=4096, decode_len=2, dtype="float32", device="cpu")
    err, tol = numerics.check(case)
    assert err <= tol


@pytest.mark.parametrize("variant", LINEAR)
def test_the_gate_reduces_the_linear_heads_and_keeps_the_grouping_and_dims(variant):
    from attnbench.harness.measure import numerics

    value_heads = {"gdn": 32, "kda": 16}[variant]
    shape = QWEN3_NEXT.replace(linear_num_key_heads=16, linear_num_value_heads=value_heads)
    small = numerics.reduce_shape(shape, variant)
    assert (small.linear_num_key_heads, small.linear_num_value_heads) == ((2, 4) if variant == "gdn" else (2, 2))
    assert (small.linear_key_head_dim, small.linear_value_head_dim, small.linear_conv_kernel_dim) == (128, 128, 4)
    assert variants.build(variant, small, device="meta").config.value_heads == small.linear_num_value_heads


@pytest.mark.parametrize("variant", LINEAR)
def test_a_shape_without_linear_keys_has_no_linear_layer(variant):
    plain = ModelShape.from_dict(dict(hidden=32, heads=2, head_dim=8, name="plain"))
    with pytest.raises(ValueError, match=f"variant={variant} needs linear_num_key_heads .* plain has none"):
        variants.build(variant, plain)


@pytest.mark.parametrize(("variant", "model"), [("gdn", "qwen3_next_80b_a3b"), ("kda", "kimi_linear_48b_a3b")])
def test_a_hybrids_model_wide_cache_bytes_are_the_same_on_every_path(variant, model):
    """The row's whole-model KV bytes under the chunked implementation: its path runs the linear layers
    only, so the full layers (gated GQA, NoPE MLA) keep their standard cache; 'chunked' reached the
    GQA layer's cache_layout and every gdn/chunked row at Qwen3-Next's preset was an AssertionError."""
    shape = load_preset(model)
    per_path = {path: model_kv_bytes_per_token(variant, shape, torch.bfloat16, path=path)
                for path in ("standard", "chunked")}
    assert per_path["chunked"] == per_path["standard"] > 0
