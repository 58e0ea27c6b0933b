"""The full-attention layers of the hybrids: Qwen3-Next's gated GQA and Kimi Linear's NoPE MLA.

``from_hf`` layers give transformers' ``Qwen3NextAttention`` and ``KimiLinearAttention`` outputs in
prefill and token-by-token decode (float64), and the presets build those layers.
"""

from __future__ import annotations

import pytest
import torch

from attnbench import variants
from tests.reference import rel_err
from attnbench.variants.presets import load_preset

transformers = pytest.importorskip("transformers", reason="the interop tests need the 'test' extra (transformers)")
from transformers import DynamicCache  # noqa: E402

B, PREFILL, NEW = 2, 6, 3
F64 = torch.float64


def _randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5 + (1.0 if p.dim() == 1 else 0.0))


def _additive_causal(q_len: int, kv_len: int) -> torch.Tensor:
    q_pos = torch.arange(kv_len - q_len, kv_len).unsqueeze(1)
    blocked = torch.arange(kv_len).unsqueeze(0) > q_pos
    return torch.zeros(q_len, kv_len, dtype=F64).masked_fill(blocked, torch.finfo(F64).min)[None, None]


def _run_hf(attn, x_BTD: torch.Tensor, rotary=None) -> list[torch.Tensor]:
    """Prefill PREFILL tokens, then decode NEW tokens one call at a time through a DynamicCache."""
    cache = DynamicCache()
    outs = []
    for start, end in [(0, PREFILL)] + [(t, t + 1) for t in range(PREFILL, PREFILL + NEW)]:
        x = x_BTD[:, start:end]
        extra = {}
        if rotary is not None:  # Kimi's MLA takes no position embeddings (NoPE)
            extra["position_embeddings"] = rotary(x, torch.arange(start, end).unsqueeze(0).expand(B, -1))
        out, _ = attn(x, attention_mask=_additive_causal(end - start, end), past_key_values=cache, **extra)
        outs.append(out)
    return outs


def _run_ours(layer, x_BTD: torch.Tensor, impl: str) -> list[torch.Tensor]:
    cache = layer.new_cache(B, PREFILL + NEW, impl=impl)
    outs = [layer.prefill(x_BTD[:, :PREFILL], cache, impl=impl)]
    outs += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(PREFILL, PREFILL + NEW)]
    return outs


def _compare(expected, got, tol: float, label: str) -> None:
    for i, (a, e) in enumerate(zip(got, expected, strict=True)):
        err = rel_err(a, e)
        assert err <= tol, f"{label} step {i}: relative error {err:.2e} > {tol:.0e}"


def _float64_norm(norm: torch.nn.Module, *, offset: float) -> None:
    """Keep a transformers RMSNorm (which casts to float32) in float64, same formula."""
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))

    def forward(h: torch.Tensor) -> torch.Tensor:
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * (offset + norm.weight)
    norm.forward = forward


@pytest.mark.parametrize("float64_norm", [False, True], ids=["hf-norm", "float64-norm"])
def test_qwen3_next_gated_attention(float64_norm, seed):
    from transformers.models.qwen3_next import modeling_qwen3_next as q3n

    config = transformers.Qwen3NextConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                          num_hidden_layers=4, attn_implementation="sdpa", max_position_embeddings=64)
    assert config.rope_parameters["partial_rotary_factor"] == 0.25  # RoPE on 4 of the 16 dims
    attn = q3n.Qwen3NextAttention(config, layer_idx=3).to(F64).eval()
    _randomize(attn)
    layer = variants.from_hf(attn)
    c = layer.config
    assert (layer.variant, c.output_gate, c.rotary_dim, c.qk_norm) == ("gqa", True, 4, "zero_centered")
    if float64_norm:
        for norm in (attn.q_norm, attn.k_norm):
            _float64_norm(norm, offset=1.0)
    x_BTD = torch.randn(B, PREFILL + NEW, 32, dtype=F64)
    with torch.no_grad():
        expected = _run_hf(attn, x_BTD, q3n.Qwen3NextRotaryEmbedding(config))
    # transformers' Qwen3NextRMSNorm computes in float32 even for float64 modules: float32 round-off with it.
    tol = 1e-12 if float64_norm else 1e-6
    for impl in ("eager", "sdpa"):
        _compare(expected, _run_ours(layer, x_BTD, impl), tol, f"qwen3-next/{impl}")
    # hf runs a Qwen3NextAttention of its own on the layer's weights, with transformers' float32 norm.
    _compare(expected, _run_ours(layer, x_BTD, "hf"), 1e-6, "qwen3-next/hf")


@pytest.mark.parametrize("q_lora_rank", [None, 12])  # the released model has none; the config allows one
@pytest.mark.parametrize("float64_norm", [False, True], ids=["hf-norm", "float64-norm"])
def test_kimi_linear_mla_has_no_rope(float64_norm, q_lora_rank, seed):
    from transformers.models.kimi_linear import modeling_kimi_linear as kimi

    config = transformers.KimiLinearConfig(hidden_size=32, num_attention_heads=4, kv_lora_rank=10,
                                           q_lora_rank=q_lora_rank, qk_nope_head_dim=6, qk_rope_head_dim=4,
                                           v_head_dim=5, num_hidden_layers=4, attn_implementation="sdpa")
    attn = kimi.KimiLinearAttention(config, layer_idx=3).to(F64).eval()
    _randomize(attn)
    layer = variants.from_hf(attn)
    assert layer.variant == "mla" and layer.config.nope and layer.rope is None
    if float64_norm:
        for norm in (attn.kv_a_layernorm, attn.q_a_layernorm):
            if norm is not None:
                _float64_norm(norm, offset=0.0)
    x_BTD = torch.randn(B, PREFILL + NEW, 32, dtype=F64)
    with torch.no_grad():
        expected = _run_hf(attn, x_BTD)
    tol = 1e-12 if float64_norm else 1e-6
    for impl in ("eager", "sdpa", "absorbed", "absorbed_sdpa", "expanded"):
        _compare(expected, _run_ours(layer, x_BTD, impl), tol, f"kimi-mla/{impl}")
    with pytest.raises(ValueError, match="KimiLinearAttention, which takes no position embeddings"):
        layer.plan("hf")


@pytest.mark.parametrize("nope", [True, False])
def test_nope_mla_is_position_free(nope, seed):
    """Without RoPE a decode step attends to its context as a set: shuffling the earlier tokens leaves its
    output unchanged (with RoPE it does not)."""
    layer = variants.build("mla", load_preset("tiny").replace(mla_use_nope=nope), dtype=F64)
    x_BLD = torch.randn(1, 6, layer.hidden, dtype=F64)

    def last(context_BLD: torch.Tensor) -> torch.Tensor:
        cache = layer.new_cache(1, 6)
        layer.prefill(context_BLD, cache)
        return layer.decode(x_BLD[:, 5:], cache)

    err = rel_err(last(x_BLD[:, [3, 0, 4, 1, 2]]), last(x_BLD[:, :5]))
    assert err < 1e-12 if nope else err > 1e-6


def test_presets_build_the_hybrids_full_layers():
    qwen = variants.build("gqa", load_preset("qwen3_next_80b_a3b"), device="meta")
    assert qwen.config.output_gate and qwen.config.rotary_dim == 64 and qwen.config.qk_norm == "zero_centered"
    assert qwen.q_proj.out_features == 2 * 16 * 256  # query and gate per head
    assert qwen.kv_bytes_per_token(dtype=torch.bfloat16) == 2 * 2 * 256 * 2  # K and V of 2 heads of 256, bf16
    kimi = variants.build("mla", load_preset("kimi_linear_48b_a3b"), device="meta")
    assert kimi.rope is None and kimi.q_proj is not None  # no query compression
    assert kimi.kv_bytes_per_token(dtype=torch.bfloat16) == (512 + 64) * 2
    assert load_preset("qwen3_next_80b_a3b").layer_kinds().count("F") == 12
    kinds = load_preset("kimi_linear_48b_a3b").layer_kinds()
    # config.json's linear_attn_config.full_attn_layers, 1-indexed: 4, 8, 12, 16, 20, 24, 27
    assert [i + 1 for i, k in enumerate(kinds) if k == "F"] == [4, 8, 12, 16, 20, 24, 27]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_gated_gqa_cost_flops_equal_flop_counter(phase, impl, seed):
    from tests.test_cost import count_flops

    shape = load_preset("tiny").replace(attn_output_gate=True, partial_rotary_factor=0.5, qk_norm="zero_centered",
                                        kv_heads=2)
    layer = variants.build("gqa", shape)
    cache = layer.new_cache(B, 12, impl=impl)
    layer.prefill(torch.randn(B, 8, layer.hidden), cache, impl=impl)
    q_len, cached = (8, 0) if phase == "prefill" else (1, 8)
    step = layer.prepare(phase, torch.randn(B, q_len, layer.hidden), cache, impl=impl)
    expected = variants.IMPLEMENTATIONS.get(impl).cost(layer, batch=B, q_len=q_len, cached=cached, new_kv=q_len)
    assert count_flops(step) == expected.flops
    # Twice the query projection's parameters of the ungated layer: the gate's rows.
    plain = variants.build("gqa", load_preset("tiny").replace(kv_heads=2))
    assert layer.q_proj.weight.numel() == 2 * plain.q_proj.weight.numel()
    assert expected.params == sum(p.numel() for p in layer.parameters())


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^partial_rotary_factor=0\.1 is not allowed"):
        variants.build("gqa", load_preset("tiny").replace(partial_rotary_factor=0.1))
    with pytest.raises(ValueError, match=r"^qk_norm='layer' is not one of: none, rms, zero_centered"):
        variants.build("gqa", load_preset("tiny").replace(qk_norm="layer"))
