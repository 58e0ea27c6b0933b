"""``attnbench.variants.from_hf`` layers give the ``transformers`` layers' outputs, prefill and decode."""

from __future__ import annotations

import pytest
import torch

from attnbench import variants
from tests.reference import rel_err

transformers = pytest.importorskip("transformers", reason="the interop tests need the 'test' extra (transformers)")
from transformers import DynamicCache  # noqa: E402
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as ds2  # noqa: E402
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as ds3  # noqa: E402
from transformers.models.llama import modeling_llama as llama  # noqa: E402

B, PREFILL, NEW = 2, 6, 3
# transformers' "eager" attention takes its softmax in float32 even for float64 modules; its "sdpa"
# path stays in float64, so it is the reference here.
F64 = torch.float64


def _randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5 + (1.0 if p.dim() == 1 else 0.0))


def _additive_causal(q_len: int, kv_len: int) -> torch.Tensor:
    q_pos = torch.arange(kv_len - q_len, kv_len).unsqueeze(1)
    blocked = torch.arange(kv_len).unsqueeze(0) > q_pos
    return torch.zeros(q_len, kv_len, dtype=F64).masked_fill(blocked, torch.finfo(F64).min)[None, None]


def _run_hf(attn, rotary, x_BTD: torch.Tensor) -> list[torch.Tensor]:
    """Prefill PREFILL tokens, then decode NEW tokens one call at a time through a DynamicCache."""
    cache = DynamicCache()
    outs = []
    for start, end in [(0, PREFILL)] + [(t, t + 1) for t in range(PREFILL, PREFILL + NEW)]:
        x = x_BTD[:, start:end]
        position_ids = torch.arange(start, end).unsqueeze(0).expand(B, -1)
        out, _ = attn(x, position_embeddings=rotary(x, position_ids), attention_mask=_additive_causal(end - start, end),
                      past_key_values=cache)
        outs.append(out)
    return outs


def _run_ours(layer, x_BTD: torch.Tensor, impl: str) -> list[torch.Tensor]:
    cache = layer.new_cache(B, PREFILL + NEW, impl=impl)
    outs = [layer.prefill(x_BTD[:, :PREFILL], cache, impl=impl)]
    outs += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(PREFILL, PREFILL + NEW)]
    return outs


def _compare(hf_outs, ours, tol: float, label: str) -> None:
    for i, (a, e) in enumerate(zip(ours, hf_outs, strict=True)):
        err = rel_err(a, e)
        assert err <= tol, f"{label} step {i}: relative error {err:.2e} > {tol:.0e}"


def _float64_norm(norm: torch.nn.Module) -> None:
    """Make a DeepseekV3RMSNorm keep float64 (it casts its input to float32), same formula."""
    def forward(h: torch.Tensor) -> torch.Tensor:
        return norm.weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    norm.forward = forward


@pytest.mark.parametrize("float64_norm", [False, True], ids=["hf-norm", "float64-norm"])
@pytest.mark.parametrize("q_lora_rank", [None, 12])
@pytest.mark.parametrize("interleave", [True, False])
def test_deepseek_v3_attention(q_lora_rank, interleave, float64_norm, seed):
    config = transformers.DeepseekV3Config(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=q_lora_rank, kv_lora_rank=10,
        qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5, rope_interleave=interleave,
        attn_implementation="sdpa", max_position_embeddings=64)
    attn = ds3.DeepseekV3Attention(config, layer_idx=0).to(F64).eval()
    _randomize(attn)
    rotary = ds3.DeepseekV3RotaryEmbedding(config)
    layer = variants.from_hf(attn)
    assert layer.variant == "mla" and layer.dtype == F64
    if float64_norm:
        for norm in (attn.kv_a_layernorm, attn.q_a_layernorm):
            if norm is not None:
                _float64_norm(norm)
    x_BTD = torch.randn(B, PREFILL + NEW, 32, dtype=F64)
    with torch.no_grad():
        expected = _run_hf(attn, rotary, x_BTD)
    # transformers' DeepseekV3RMSNorm casts its input to float32 even for float64 modules, so with
    # it the two agree to float32 round-off; with that cast lifted, to float64 round-off.
    tol = 1e-12 if float64_norm else 1e-6
    for impl in ("eager", "sdpa", "absorbed", "absorbed_sdpa", "absorbed_fold_o", "expanded"):
        _compare(expected, _run_ours(layer, x_BTD, impl), tol, f"deepseek-v3/{impl}")


def test_deepseek_v2_attention(seed):
    config = transformers.DeepseekV2Config(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=12, kv_lora_rank=10,
        qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5, attn_implementation="sdpa",
        max_position_embeddings=64)
    attn = ds2.DeepseekV2Attention(config, layer_idx=0).to(F64).eval()
    _randomize(attn)
    layer = variants.from_hf(attn)
    x_BTD = torch.randn(B, PREFILL, 32, dtype=F64)
    freqs_cis = ds2.DeepseekV2RotaryEmbedding(config)(x_BTD, torch.arange(PREFILL).unsqueeze(0))
    with torch.no_grad():
        expected, _ = attn(x_BTD, attention_mask=_additive_causal(PREFILL, PREFILL), position_embeddings=freqs_cis)
    # DeepSeek-V2's port rotates in complex float32 (``xq.float()``), so float32 round-off again.
    got = layer.prefill(x_BTD, layer.new_cache(B, PREFILL), impl="absorbed")
    assert rel_err(got, expected) <= 1e-6


@pytest.mark.parametrize(("kv_heads", "variant"), [(2, "gqa"), (4, "mha"), (1, "mqa")])
def test_llama_attention(kv_heads, variant, seed):
    config = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=kv_heads,
                                      head_dim=8, attn_implementation="sdpa", max_position_embeddings=64,
                                      rope_theta=500000.0)
    attn = llama.LlamaAttention(config, layer_idx=0).to(F64).eval()
    _randomize(attn)
    rotary = llama.LlamaRotaryEmbedding(config)
    layer = variants.from_hf(attn)
    assert layer.variant == variant
    x_BTD = torch.randn(B, PREFILL + NEW, 32, dtype=F64)
    with torch.no_grad():
        expected = _run_hf(attn, rotary, x_BTD)
    for impl in ("eager", "sdpa"):
        _compare(expected, _run_ours(layer, x_BTD, impl), 1e-12, f"llama/{impl}")


def test_qwen2_biases_are_mapped(seed):
    from transformers.models.qwen2 import modeling_qwen2 as qwen2

    config = transformers.Qwen2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                      attn_implementation="sdpa", max_position_embeddings=64)
    attn = qwen2.Qwen2Attention(config, layer_idx=0).to(F64).eval()
    _randomize(attn)
    layer = variants.from_hf(attn)
    assert layer.config.qkv_bias and not layer.config.o_bias
    x_BTD = torch.randn(B, PREFILL + NEW, 32, dtype=F64)
    with torch.no_grad():
        expected = _run_hf(attn, qwen2.Qwen2RotaryEmbedding(config), x_BTD)
    _compare(expected, _run_ours(layer, x_BTD, "sdpa"), 1e-12, "qwen2/sdpa")


def test_unsupported_module_is_named():
    with pytest.raises(ValueError, match="^cannot convert Linear; supported: DeepseekV2Attention"):
        variants.from_hf(torch.nn.Linear(2, 2))


WINDOW, LONG = 4, 11  # decode runs 5 tokens past the end of the window


def _additive_window(q_start: int, end: int, kv_len: int, window: int | None) -> torch.Tensor:
    """transformers' sliding-window causal mask (``kv_idx > q_idx - window``) as an additive bias, for
    queries at positions [q_start, end) and the last ``kv_len`` positions as keys."""
    q_pos = torch.arange(q_start, end).unsqueeze(1)
    k_pos = torch.arange(end - kv_len, end).unsqueeze(0)
    blocked = k_pos > q_pos
    if window is not None:
        blocked |= k_pos <= q_pos - window
    return torch.zeros(end - q_start, kv_len, dtype=F64).masked_fill(blocked, torch.finfo(F64).min)[None, None]


def _run_hf_windowed(attn, rotary, x_BTD: torch.Tensor, window: int | None, cache) -> list[torch.Tensor]:
    """Prefill PREFILL tokens, then decode one token per call through transformers' cache (a sliding
    layer of it keeps only the last window - 1 positions, and hands back those and the new ones)."""
    outs = []
    for start, end in [(0, PREFILL)] + [(t, t + 1) for t in range(PREFILL, LONG)]:
        x = x_BTD[:, start:end]
        position_ids = torch.arange(start, end).unsqueeze(0).expand(B, -1)
        held = cache.layers[attn.layer_idx]
        stored = held.keys.shape[-2] if getattr(held, "is_initialized", False) else 0
        mask = _additive_window(start, end, stored + end - start, window)
        out, _ = attn(x, position_embeddings=rotary(x, position_ids), attention_mask=mask, past_key_values=cache)
        outs.append(out)
    kept = cache.layers[attn.layer_idx].keys.shape[-2]
    assert kept == (LONG if window is None else window - 1), "the decode did not go through a sliding cache"
    return outs


def _run_ours_long(layer, x_BTD: torch.Tensor, impl: str) -> list[torch.Tensor]:
    cache = layer.new_cache(B, LONG, impl=impl)
    outs = [layer.prefill(x_BTD[:, :PREFILL], cache, impl=impl)]
    outs += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(PREFILL, LONG)]
    return outs


@pytest.mark.parametrize("layer_type", ["sliding_attention", "full_attention"])
def test_gpt_oss_attention_sinks_window_and_full_layers(layer_type, seed):
    from transformers.models.gpt_oss import modeling_gpt_oss as gpt_oss

    config = transformers.GptOssConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                       num_hidden_layers=2, sliding_window=WINDOW, attn_implementation="eager",
                                       max_position_embeddings=64, layer_types=[layer_type, layer_type])
    # transformers' eager GptOss attention keeps float64 through its softmax: it is the reference here.
    attn = gpt_oss.GptOssAttention(config, layer_idx=1).to(F64).eval()
    _randomize(attn)
    with torch.no_grad():
        attn.sinks.copy_(torch.tensor([1.5, -0.5, 3.0, 0.0], dtype=F64))
    layer = variants.from_hf(attn)
    window = WINDOW if layer_type == "sliding_attention" else None
    assert layer.variant == "swa" and layer.config.window == window and layer.sinks is not None
    x_BTD = torch.randn(B, LONG, 32, dtype=F64)
    with torch.no_grad():
        expected = _run_hf_windowed(attn, gpt_oss.GptOssRotaryEmbedding(config), x_BTD, window,
                                    DynamicCache(config=config))
    _compare(expected, _run_ours_long(layer, x_BTD, "eager"), 1e-12, f"gpt-oss/{layer_type}")
    # float32, as the checkpoint would run on CPU: fp32 round-off.
    expected32 = [e.float() for e in expected]
    _compare(expected32, _run_ours_long(variants.from_hf(attn.float()), x_BTD.float(), "eager"), 1e-5,
             f"gpt-oss/{layer_type}/fp32")
    with pytest.raises(ValueError, match="^learned sinks need a kernel that applies them; the sdpa kernel"):
        layer.new_cache(B, LONG, impl="sdpa")


def test_windowed_mistral_attention(seed):
    from transformers.models.mistral import modeling_mistral as mistral

    config = transformers.MistralConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        sliding_window=WINDOW, attn_implementation="sdpa", max_position_embeddings=64)
    attn = mistral.MistralAttention(config, layer_idx=0).to(F64).eval()
    _randomize(attn)
    layer = variants.from_hf(attn)
    assert layer.variant == "swa" and layer.config.window == WINDOW and layer.sinks is None
    x_BTD = torch.randn(B, LONG, 32, dtype=F64)
    with torch.no_grad():
        expected = _run_hf_windowed(attn, mistral.MistralRotaryEmbedding(config), x_BTD, WINDOW,
                                    DynamicCache(config=config))
    for impl in ("eager", "sdpa"):
        _compare(expected, _run_ours_long(layer, x_BTD, impl), 1e-12, f"mistral/{impl}")
