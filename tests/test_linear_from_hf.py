"""``from_hf`` for Qwen3-Next's Gated DeltaNet and Kimi Linear's Kimi Delta Attention: transformers' own
outputs, in one prefill and in token-by-token decode on its cache, float64."""

from __future__ import annotations

import types

import pytest
import torch

from tests.reference import rel_err

pytest.importorskip("transformers")

from transformers import DynamicCache  # noqa: E402

# transformers' torch fallbacks compute the rule and the gated norm in float32 (``.to(torch.float32)``)
# whatever the module's dtype: at float64 they then agree with attnbench's float64 layer to ~8e-7 only,
# float32 round-off. Comparing with float64 in their place measures the conversion itself (the few
# ``.float()`` calls left keep ~1e-8).
TOLERANCE = 1e-6


class _Float64AsFloat32(types.ModuleType):
    """``torch`` as a modeling module sees it, with ``float32`` meaning float64."""

    float32 = torch.float64

    def __getattr__(self, name: str):
        return getattr(torch, name)


def _module(kind: str):
    if kind == "gdn":
        from transformers.models.qwen3_next import modeling_qwen3_next as modeling
        from transformers.models.qwen3_next.configuration_qwen3_next import Qwen3NextConfig

        config = Qwen3NextConfig(hidden_size=48, linear_num_key_heads=2, linear_num_value_heads=4,
                                 linear_key_head_dim=8, linear_value_head_dim=6, linear_conv_kernel_dim=4,
                                 num_hidden_layers=1, layer_types=["linear_attention"])
        return modeling, config, modeling.Qwen3NextGatedDeltaNet(config, 0)
    from transformers.models.kimi_linear import modeling_kimi_linear as modeling
    from transformers.models.kimi_linear.configuration_kimi_linear import KimiLinearConfig

    config = KimiLinearConfig(hidden_size=48, linear_num_heads=3, linear_head_dim=8, linear_conv_kernel_dim=4,
                              num_hidden_layers=1, layer_types=["linear_attention"])
    return modeling, config, modeling.KimiLinearDeltaAttention(config, 0)


@pytest.mark.parametrize("impl", ["eager", "chunked"])
@pytest.mark.parametrize("kind", ["gdn", "kda"])
def test_from_hf_matches_transformers_in_prefill_and_token_by_token_decode(kind, impl, seed, monkeypatch):
    from attnbench import variants

    modeling, config, module = _module(kind)
    module = module.double()
    with torch.no_grad():  # weights far from init (transformers leaves A_log and dt_bias empty in kda)
        for param in module.parameters():
            param.normal_(0, 0.3)
    layer = variants.from_hf(module)  # the public entry point finds the family's own converter
    assert layer.variant == kind
    monkeypatch.setattr(modeling, "torch", _Float64AsFloat32("torch"))
    B, L, P = 2, 90, 70  # a prefill of two chunks, then 20 tokens one at a time
    x = torch.randn(B, L, config.hidden_size, dtype=torch.float64)
    with torch.no_grad():
        expected = module(x)
        hf_cache = DynamicCache(config=config)
        expected_steps = [module(x[:, :P], cache_params=hf_cache)]
        expected_steps += [module(x[:, t:t + 1], cache_params=hf_cache) for t in range(P, L)]
    y = layer.prefill(x, layer.new_cache(B, L, impl=impl), impl=impl)
    cache = layer.new_cache(B, L, impl=impl)
    steps = [layer.prefill(x[:, :P], cache, impl=impl)] + [layer.decode(x[:, t:t + 1], cache, impl=impl)
                                                           for t in range(P, L)]
    assert rel_err(y, expected) <= TOLERANCE
    assert rel_err(torch.cat(steps, 1), torch.cat(expected_steps, 1)) <= TOLERANCE
    # transformers' final state is ours (its cache keeps the last W inputs, ours the last W - 1).
    assert rel_err(cache.state, hf_cache.layers[0].recurrent_states[0]) <= TOLERANCE


def test_from_hf_refuses_other_modules():
    from attnbench import variants
    from attnbench.variants.families.gdn.hf import from_hf

    with pytest.raises(ValueError, match="supported: Qwen3NextGatedDeltaNet"):
        from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="^cannot convert Linear; supported: .*KimiLinearDeltaAttention, "
                                         "Qwen3NextGatedDeltaNet$"):
        variants.from_hf(torch.nn.Linear(2, 2))
