"""``hf``: transformers' own attention module under attnbench's cache, timer and numerics gate."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from attnbench import variants
from attnbench.harness.measure import numerics
from attnbench.harness.measure.case import Case
from tests.reference import rel_err
from tests.shapes import TINY, TINY_Q, build_mla
from tests.test_cost import count_flops
from tests.test_run import ROOT
from attnbench.variants.families.gqa import GQA
from attnbench.variants.hf_peer import HFSpec, linear_slots, register
from attnbench.variants.hf_peer.maps.gqa import gqa as gqa_map
from attnbench.variants.hf_peer.maps.gqa import kv_views
from attnbench.variants.presets import load_preset
from attnbench.variants.registry import IMPLEMENTATIONS
from attnbench.variants.rope import Rope, default_inv_freq

pytest.importorskip("transformers", reason="hf runs transformers' modules: the 'hf' (or 'test') extra")
from attnbench.variants.hf_peer import runtime  # noqa: E402 - imports transformers

B, PREFILL, MAX_LEN = 2, 5, 14
HALF = TINY.replace(rope_layout="half")
WINDOW = HALF.replace(sliding_window=3)  # decode runs past the end of a 3-token ring
F64, CPU = torch.float64, torch.device("cpu")

# Layers of each family hf covers, by the transformers module they run as.
LAYERS = {
    "LlamaAttention-gqa": ("gqa", HALF),
    "LlamaAttention-mha": ("mha", HALF),
    "LlamaAttention-mqa": ("mqa", HALF),
    "Qwen2Attention": ("gqa", HALF.replace(qkv_bias=True)),
    "DeepseekV3Attention-interleaved": ("mla", TINY),
    "DeepseekV3Attention-q_rank-half": ("mla", TINY_Q.replace(rope_layout="half")),
    "MistralAttention-window": ("swa", WINDOW),
    "GptOssAttention-window": ("swa", WINDOW.replace(qkv_bias=True, attn_sinks=True)),
}
# DeepseekV3RMSNorm takes the latent to float32 and back: float64 agrees to float32 round-off there.
TOLERANCE = {"mla": 1e-6}


def _layer(name: str, dtype: torch.dtype = F64, seed: int = 0) -> variants.AttentionLayer:
    variant, shape = LAYERS[name]
    layer = variants.build(variant, shape, dtype=dtype, seed=seed)
    with torch.no_grad():
        for p in layer.parameters():
            if p.dim() == 1:  # biases, norm weights and sinks off their zero/one init, so a dropped one shows
                p.copy_(torch.rand_like(p) + 0.5)
        if name.startswith("GptOss"):
            layer.sinks.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=dtype))  # one large enough to matter
    return layer


def _steps(layer: variants.AttentionLayer, x_BTD: torch.Tensor, impl: str) -> list[torch.Tensor]:
    """Prefill, a one-token step, a three-token step, then one token at a time to the end."""
    cache = layer.new_cache(B, MAX_LEN, impl=impl)
    outs = [layer.prefill(x_BTD[:, :PREFILL], cache, impl=impl), layer.decode(x_BTD[:, 5:6], cache, impl=impl),
            layer.decode(x_BTD[:, 6:9], cache, impl=impl)]
    outs += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(9, MAX_LEN)]
    assert cache.length == MAX_LEN
    return outs


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_hf_equals_eager_in_prefill_and_decode(name, seed):
    layer = _layer(name)
    plan = layer.plan("hf").plan
    assert type(plan.module).__name__ == name.split("-")[0]
    assert plan.implementation == ("eager" if name.startswith("GptOss") else "sdpa")  # gpt-oss declares no sdpa
    x_BTD = torch.randn(B, MAX_LEN, layer.hidden, dtype=F64)
    tol = TOLERANCE.get(layer.variant, 1e-10)
    for i, (got, want) in enumerate(zip(_steps(layer, x_BTD, "hf"), _steps(layer, x_BTD, "eager"), strict=True)):
        assert rel_err(got, want) <= tol, f"{name} step {i}: {rel_err(got, want):.2e} > {tol:.0e}"


@pytest.mark.parametrize("name", ["LlamaAttention-gqa", "DeepseekV3Attention-q_rank-half"])
def test_the_module_rotates_with_the_layers_own_frequencies(name):
    """Scaled frequencies and an attention factor (YaRN's, as from_hf reads them), not the config's defaults."""
    layer = _layer(name)
    old = layer.rope
    layer.rope = Rope(old.rotary_dim, layout=old.layout, inv_freq=default_inv_freq(old.rotary_dim, 1e4) / 7,
                      scaling=1.2)
    x_BTD = torch.randn(B, MAX_LEN, layer.hidden, dtype=F64)
    got, want = torch.cat(_steps(layer, x_BTD, "hf"), 1), torch.cat(_steps(layer, x_BTD, "eager"), 1)
    assert rel_err(got, want) <= TOLERANCE.get(layer.variant, 1e-10)


@pytest.mark.parametrize("name", ["LlamaAttention-gqa", "DeepseekV3Attention-interleaved", "GptOssAttention-window"])
def test_the_module_shares_the_layers_weights_and_cache(name):
    """No copies: the module's parameters are the layer's, and what it writes lands in the attnbench cache."""
    layer = _layer(name, torch.float32)
    plan = layer.plan("hf").plan
    ours = {p.data_ptr() for p in layer.parameters()}
    assert {p.data_ptr() for p in plan.module.parameters()} == ours
    cache = layer.new_cache(1, 4, impl="hf")
    layer.prefill(torch.randn(1, 2, layer.hidden), cache, impl="hf")
    written = [buf[:, :2].abs().sum() for buf in cache.buffers.values()]
    assert all(w > 0 for w in written) and all(buf[:, 2:].abs().sum() == 0 for buf in cache.buffers.values())


def test_hf_decodes_on_a_cache_eager_filled():
    """GQA's cache is transformers' layout transposed: hf reads the context another implementation wrote."""
    layer = _layer("LlamaAttention-gqa")
    x_BTD = torch.randn(B, 7, layer.hidden, dtype=F64)
    cache = layer.new_cache(B, 7, impl="eager")
    layer.prefill(x_BTD[:, :6], cache, impl="eager")
    hf = layer.prepare("decode", x_BTD[:, 6:], cache, impl="hf")()
    eager = layer.prepare("decode", x_BTD[:, 6:], cache, impl="eager")()
    assert rel_err(hf, eager) <= 1e-10


@pytest.mark.parametrize(("name", "phase", "cached", "q_len"), [
    ("LlamaAttention-gqa", "decode", 6, 1), ("DeepseekV3Attention-interleaved", "decode", 6, 3),
    ("GptOssAttention-window", "decode", 6, 1),  # the ring's wrapped one-token step
    ("MistralAttention-window", "prefill", 0, 7)])  # a prefill longer than the ring
def test_the_closure_repeats_the_same_step(name, phase, cached, q_len):
    """Every call writes the same entries at the same rows and returns the same output. (A multi-token step
    that wraps a ring overwrites rows it read first, in every implementation: the same work each call, not
    the same output.)"""
    layer = _layer(name, torch.float32)
    cache = layer.new_cache(B, MAX_LEN, impl="hf")
    if cached:
        layer.prefill(torch.randn(B, cached, layer.hidden), cache, impl="hf")
    step = layer.prepare(phase, torch.randn(B, q_len, layer.hidden), cache, impl="hf")
    first = step()
    for _ in range(3):
        assert torch.equal(step(), first)
    assert cache.length == cached  # the harness times it at one context length


def test_plan_builds_once_and_the_closure_only_calls_the_module(monkeypatch):
    builds, masks, rotary_calls = [], [], []
    real_build, real_mask = runtime.build_module, runtime.build_mask
    monkeypatch.setattr(runtime, "build_module", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    monkeypatch.setattr(runtime, "build_mask", lambda *a, **k: masks.append(1) or real_mask(*a, **k))
    layer = _layer("DeepseekV3Attention-interleaved", torch.float32)
    cache = layer.new_cache(1, 12, impl="hf")
    layer.prefill(torch.randn(1, 4, layer.hidden), cache, impl="hf")
    for _ in range(6):
        layer.decode(torch.randn(1, 1, layer.hidden), cache, impl="hf")
    assert (len(builds), len(masks)) == (1, 7)  # one module per plan, one mask per step
    plan = cache.plans[(id(layer), "hf", None)]  # the handle the decode loop kept
    step = plan.bind("decode", torch.randn(1, 1, layer.hidden), cache)
    plan.plan.rotary.register_forward_hook(lambda *a: rotary_calls.append(1))
    for _ in range(5):
        step()
    assert (len(builds), len(masks), rotary_calls) == (1, 8, [])  # the timed closure sets nothing up


def test_cost_flops_equal_flop_counter():
    for name in ("LlamaAttention-gqa", "DeepseekV3Attention-interleaved", "GptOssAttention-window"):
        layer = _layer(name, torch.float32)
        cache = layer.new_cache(B, MAX_LEN, impl="hf")
        impl = IMPLEMENTATIONS.get("hf")
        for phase, q_len, cached in [("prefill", 7, 0), ("decode", 1, 7), ("decode", 3, 8)]:
            cache.length = cached
            step = layer.prepare(phase, torch.randn(B, q_len, layer.hidden), cache, impl="hf")
            expected = impl.cost(layer, batch=B, q_len=q_len, cached=cached, new_kv=q_len).flops
            assert count_flops(step) == expected, f"{name} {phase} L={q_len} after {cached}"


class _NewFamily(GQA):
    """A family built on GQA that has registered no transformers module of its own."""


class _Registered(GQA):
    """A new family that registers its map: one function, here with a cache layer of its own."""


_LAYERS_MADE: list[int] = []


def _own_cache_layer(step):
    _LAYERS_MADE.append(step.kv_len)
    return runtime.FixedSlotLayer(*kv_views(step.cache), slots=linear_slots(step), start=step.kv_start,
                                  kv_len=step.kv_len)


@register(_Registered)
def _registered_map(layer: _Registered) -> HFSpec | str:
    spec = gqa_map(layer)
    return spec if isinstance(spec, str) else dataclasses.replace(spec, cache_layer=_own_cache_layer)


def test_a_new_family_registers_one_function(seed):
    source = _layer("LlamaAttention-gqa")
    layer = _Registered(source.config).to(F64)
    layer.load_state_dict(source.state_dict())
    _LAYERS_MADE.clear()
    x_BTD = torch.randn(B, MAX_LEN, layer.hidden, dtype=F64)
    got, want = torch.cat(_steps(layer, x_BTD, "hf"), 1), torch.cat(_steps(source, x_BTD, "eager"), 1)
    assert rel_err(got, want) <= 1e-10
    assert _LAYERS_MADE == [5, 6, 9, *range(10, MAX_LEN + 1)]  # its cache layer, one per step


@pytest.mark.parametrize(("layer", "reason"), [
    (lambda: variants.build("gqa", TINY), "LlamaAttention rotates half-split pairs"),
    (lambda: variants.build("gqa", HALF, attention="cross"), "this layer is cross-attention"),
    (lambda: variants.build("mla", TINY, attention="cross"), "this layer is cross-attention"),
    (lambda: variants.build("swa", WINDOW.replace(sink_tokens=2)), "StreamingLLM sink tokens (sink_tokens=2)"),
    (lambda: variants.build("swa", WINDOW.replace(qkv_bias=True)), "MistralAttention, transformers' window"),
    (lambda: build_mla("rope_heads2-shared-freqs-interleaved"), "rope_heads=2 (a layer converted from GQA)"),
    (lambda: variants.to_mla(variants.build("mqa", HALF), d_c=6, d_r=4), "latent_norm=False"),
    (lambda: _NewFamily(variants.build("gqa", HALF).config), "no transformers module for _NewFamily layers"),
])
def test_unmapped_layers_are_skipped_with_the_reason(layer, reason):
    got = IMPLEMENTATIONS.get("hf").supports(layer(), phase="decode", device=CPU, dtype=torch.float32)
    assert got is not None and reason in got, got


def test_a_quantized_cache_is_refused():
    layer = _layer("LlamaAttention-gqa", torch.float32)
    layer.kv_dtype = "fp8_e4m3"  # what ModelShape.kv_dtype sets: the cache stores e4m3 values and scales
    reason = IMPLEMENTATIONS.get("hf").supports(layer, phase="decode", device=CPU, dtype=torch.float32)
    assert reason is not None and reason.startswith("kv_dtype=fp8_e4m3: hf runs")


def test_a_cross_attention_case_is_a_skipped_row():
    from attnbench.harness.measure.runner import RunContext, run_case
    from attnbench.harness.measure.timer import MeasureSettings

    case = Case(variant="mla", impl="hf", compile=None, phase="decode", model="tiny", shape=load_preset("tiny"),
                batch=1, seq=16, decode_len=1, dtype="float32", device="cpu", attention="cross",
                timing="cpu_wall", l2_flush=False)
    row = run_case(case, RunContext(settings=MeasureSettings()))
    assert (row["status"], row["latency_ms"]) == ("skipped", None)
    assert "cross-attention" in row["reason"]


def test_paged_and_ragged_caches_are_refused_in_one_line():
    layer = _layer("LlamaAttention-gqa", torch.float32)
    paged = layer.new_cache(2, 16, impl="hf", page_size=4)
    with pytest.raises(ValueError, match="page_size=4 is not supported"):
        layer.prepare("prefill", torch.randn(2, 3, layer.hidden), paged, impl="hf")
    ragged = layer.new_cache(2, 16, impl="hf")
    ragged.set_seq_lens([3, 5])
    with pytest.raises(ValueError, match="a ragged decode batch"):
        layer.prepare("decode", torch.randn(2, 1, layer.hidden), ragged, impl="hf")
    with pytest.raises(ValueError, match="compile='default' is not offered with hf"):
        layer.plan("hf", compile="default")


@pytest.mark.parametrize(("variant", "model", "phase"), [("mla", "tiny", "decode"), ("gqa", "gpt_oss_20b", "prefill"),
                                                          ("swa", "gpt_oss_20b", "decode")])
def test_the_numerics_gate_passes(variant, model, phase):
    case = Case(variant=variant, impl="hf", compile=None, phase=phase, model=model, shape=load_preset(model),
                batch=1, seq=1024, decode_len=1, dtype="float32", device="cpu", attention="self",
                timing="cpu_wall", l2_flush=False)
    err, tol = numerics.check(case)
    assert err <= tol


def test_without_transformers_hf_is_skipped_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # every import of it now fails
    layer = _layer("LlamaAttention-gqa", torch.float32)
    impl = IMPLEMENTATIONS.get("hf")
    reason = impl.supports(layer, phase="decode", device=CPU, dtype=torch.float32)
    assert reason is not None and reason.endswith("pip install 'attnbench[hf]'")
    with pytest.raises(ImportError, match=r"attnbench\[hf\]"):
        impl.plan(layer)


def test_importing_variants_does_not_import_transformers():
    code = ("import sys, torch; from attnbench import variants; "
            "from attnbench.variants.registry import IMPLEMENTATIONS; "
            "hf = IMPLEMENTATIONS.get('hf'); layer = variants.build('mla', model='tiny', device='meta'); "
            "assert hf.supports(layer, phase='decode', device=torch.device('cpu'), dtype=torch.float32) is None; "
            "assert 'transformers' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("family", ["llama", "deepseek_v3"])
def test_hf_on_a_from_hf_layer_gives_the_module_it_came_from(family, seed):
    """The round trip: transformers' module -> ``from_hf`` -> ``impl=hf`` rebuilds and runs that module."""
    from tests.test_from_hf import _compare, _randomize, _run_hf, _run_ours

    if family == "llama":
        from transformers.models.llama import modeling_llama as modeling

        config = modeling.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      attn_implementation="sdpa", max_position_embeddings=64, rope_theta=500000.0)
        attn, rotary, tol = modeling.LlamaAttention(config, layer_idx=0), modeling.LlamaRotaryEmbedding(config), 1e-12
    else:
        from transformers.models.deepseek_v3 import modeling_deepseek_v3 as modeling

        config = modeling.DeepseekV3Config(
            hidden_size=32, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=12, kv_lora_rank=10,
            qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5, rope_interleave=True, attn_implementation="sdpa",
            max_position_embeddings=64)
        # DeepseekV3RMSNorm takes float64 through float32: the two modules agree to float32 round-off.
        attn, rotary, tol = modeling.DeepseekV3Attention(config, layer_idx=0), \
            modeling.DeepseekV3RotaryEmbedding(config), 1e-6
    attn = attn.to(F64).eval()
    _randomize(attn)
    x_BTD = torch.randn(2, 9, 32, dtype=F64)
    with torch.no_grad():
        expected = _run_hf(attn, rotary, x_BTD)
    _compare(expected, _run_ours(variants.from_hf(attn), x_BTD, "hf"), tol, f"{family}/hf")
