"""The cost model against what torch counts and what the cache tensors hold."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from attnbench import variants
from tests.shapes import COMPILING, MLA_SETTINGS, TINY, TINY_Q, VARIANTS, build_mla
from attnbench.variants.presets import load_preset

aten = torch.ops.aten
B, MAX_LEN = 2, 16


def _cpu_flash_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch registers no FLOP formula for its CPU flash kernel; count it as torch counts the CUDA one.
CUSTOM = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops}


def count_flops(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=CUSTOM) as counter:
        fn()
    return counter.get_total_flops()


def _layers():
    for variant in VARIANTS:
        for shape in ([TINY, TINY_Q] if variant == "mla" else [TINY]):
            for attention in ("self", "cross"):
                yield variant, shape, attention


@pytest.mark.parametrize(("variant", "shape", "attention"), list(_layers()),
                         ids=lambda v: getattr(v, "q_rank", v))
def test_matmul_flops_equal_flop_counter(variant, shape, attention, seed):
    layer = variants.build(variant, shape, attention=attention, seed=seed)
    D = shape.hidden
    for impl in variants.IMPLEMENTATIONS:
        if impl.name in COMPILING or impl.supports(layer, phase="decode", device=torch.device("cpu"),
                                                   dtype=torch.float32):
            continue
        cache = layer.new_cache(B, MAX_LEN, impl=impl.name)
        memory = torch.randn(B, 6, D) if attention == "cross" else None
        step = layer.prepare("prefill", torch.randn(B, 5, D), cache, impl=impl.name, memory_BMD=memory)
        new_kv = 6 if attention == "cross" else 5
        expected = impl.cost(layer, batch=B, q_len=5, cached=0, new_kv=new_kv).flops
        assert count_flops(step) == expected, f"{variant}/{impl.name} prefill"
        layer.prefill(torch.randn(B, 5, D), cache, impl=impl.name, memory_BMD=memory)
        for q_len in (1, 3):
            step = layer.prepare("decode", torch.randn(B, q_len, D), cache, impl=impl.name)
            cached, new_kv = (6, 0) if attention == "cross" else (5, q_len)
            expected = impl.cost(layer, batch=B, q_len=q_len, cached=cached, new_kv=new_kv).flops
            assert count_flops(step) == expected, f"{variant}/{impl.name} decode L={q_len}"


def test_absorbed_and_eager_flops_differ_as_the_math_says():
    layer = variants.build("mla", TINY_Q)
    eager = variants.IMPLEMENTATIONS.get("eager").cost(layer, batch=1, q_len=1, cached=100, new_kv=1)
    absorbed = variants.IMPLEMENTATIONS.get("absorbed").cost(layer, batch=1, q_len=1, cached=100, new_kv=1)
    c = layer.config
    # Eager re-expands every cached latent: 2·T·C·N·(P+V) FLOPs that absorption removes.
    assert eager.flops - absorbed.flops > 2 * 100 * c.d_c * c.heads * (c.nope_head_dim + c.v_head_dim) // 2
    assert eager.bytes_min == absorbed.bytes_min


# DeepSeek-V2, Table 1: KV cache elements per token and layer.
def _table1_elements(variant: str, shape) -> int:
    return {"mha": 2 * shape.heads * shape.head_dim, "gqa": 2 * (shape.kv_heads or shape.heads) * shape.head_dim,
            "mqa": 2 * shape.head_dim, "mla": shape.d_c + shape.d_r}[variant]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_bytes_equal_cost_model(variant, dtype):
    layer = variants.build(variant, TINY_Q, dtype=dtype)
    for impl in variants.IMPLEMENTATIONS:
        if impl.supports(layer, phase="decode", device=torch.device("cpu"), dtype=dtype):
            continue
        cache = layer.new_cache(3, 11, impl=impl.name)
        cost = impl.cost(layer, batch=3, q_len=1, cached=10, new_kv=1)
        assert cache.nbytes() == 3 * 11 * cost.kv_bytes_per_token
        if impl.path != "expanded":
            assert cost.kv_bytes_per_token == _table1_elements(variant, TINY_Q) * dtype.itemsize
            assert cost.cache_read_bytes == 3 * 10 * cost.kv_bytes_per_token
    if variant == "mla":
        # The latent cache holds c_kv and k_rope and nothing else.
        assert set(layer.new_cache(1, 4).fields) == {"c_kv", "k_rope"}


# Published configs (huggingface.co/<repo>/config.json) and the KV bytes per token per model in bf16.
PUBLISHED = {
    # kv_lora_rank 512, qk_rope_head_dim 64, num_hidden_layers 61
    "deepseek_v3": ("mla", (512 + 64) * 61 * 2),
    # num_key_value_heads 8, head_dim 4096 / 32 = 128, num_hidden_layers 32
    "llama3_8b": ("gqa", 2 * 8 * 128 * 32 * 2),
    # num_key_value_heads 8, head_dim 8192 / 64 = 128, num_hidden_layers 80
    "llama3_70b": ("gqa", 2 * 8 * 128 * 80 * 2),
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_preset_kv_bytes_match_published_configs(preset):
    variant, expected = PUBLISHED[preset]
    shape = load_preset(preset)
    # Built on the meta device: DeepSeek-V3's attention alone is 187M parameters.
    layer = variants.build(variant, shape, dtype=torch.bfloat16, device="meta")
    assert layer.kv_bytes_per_token() * shape.num_layers == expected


def test_deepseek_v3_mha_equivalent_cache_is_far_larger():
    shape = load_preset("deepseek_v3")
    mla = variants.build("mla", shape, dtype=torch.bfloat16, device="meta")
    mha = variants.build("mha", shape, dtype=torch.bfloat16, device="meta")
    # DeepSeek-V2 section 2.1.4: MLA's cache equals GQA with 2.25 groups; vs MHA it is ~57x smaller.
    assert mha.kv_bytes_per_token() / mla.kv_bytes_per_token() == pytest.approx(2 * 128 * 128 / 576)


@pytest.mark.parametrize("attention", ["self", "cross"])
@pytest.mark.parametrize("name", sorted(MLA_SETTINGS))
def test_mla_settings_flops_equal_flop_counter(name, attention, seed):
    """rope_heads > 1 (zero-padded rotary query slots), no latent norm, no nope dims."""
    layer = build_mla(name, seed=seed, attention=attention)
    D = layer.hidden
    for impl in variants.IMPLEMENTATIONS:
        if impl.name in COMPILING or impl.supports(layer, phase="decode", device=torch.device("cpu"),
                                                   dtype=torch.float32):
            continue
        cache = layer.new_cache(B, MAX_LEN, impl=impl.name)
        memory = torch.randn(B, 6, D) if attention == "cross" else None
        new_kv = 6 if attention == "cross" else 5
        step = layer.prepare("prefill", torch.randn(B, 5, D), cache, impl=impl.name, memory_BMD=memory)
        assert count_flops(step) == impl.cost(layer, batch=B, q_len=5, cached=0, new_kv=new_kv).flops, impl.name
        layer.prefill(torch.randn(B, 5, D), cache, impl=impl.name, memory_BMD=memory)
        cached, new_kv = (6, 0) if attention == "cross" else (5, 2)
        step = layer.prepare("decode", torch.randn(B, 2, D), cache, impl=impl.name)
        assert count_flops(step) == impl.cost(layer, batch=B, q_len=2, cached=cached, new_kv=new_kv).flops, impl.name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(MLA_SETTINGS))
def test_mla_settings_cache_bytes_equal_cost_model(name, dtype):
    layer = build_mla(name, dtype=dtype)
    c = layer.config
    for impl in variants.IMPLEMENTATIONS:
        if impl.supports(layer, phase="decode", device=torch.device("cpu"), dtype=dtype):
            continue
        cache = layer.new_cache(3, 11, impl=impl.name)
        cost = impl.cost(layer, batch=3, q_len=1, cached=10, new_kv=1)
        assert cache.nbytes() == 3 * 11 * cost.kv_bytes_per_token
        if impl.path != "expanded":
            # The cache layout of a converted layer: c_kv, then one rotary key per group.
            assert cost.kv_bytes_per_token == (c.d_c + c.rope_heads * c.d_r) * dtype.itemsize
            assert cache.layout.fields[1].shape == (c.rope_heads * c.d_r,)
