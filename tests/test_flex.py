"""``flex`` equals ``eager`` for the masks a layer makes: a window with sink tokens over a ring cache.

flex compiles a graph per shape and mask function (seconds each on a 2-core CPU), so the cases share
one prefill shape and one decode shape, and the layers are built once for the module.
"""

from __future__ import annotations

import pytest
import torch

from attnbench import variants
from tests.reference import rel_err
from attnbench.variants.mask import and_masks, block_mask, causal, document, make_mask, or_masks, prefix
from attnbench.variants.shape import ModelShape

pytestmark = pytest.mark.compile

SHAPE = ModelShape(hidden=32, heads=4, head_dim=16, kv_heads=2, name="test")
# Decode runs past the end of a 4-position window. Not a prefill of 8: torch 2.13's compiled CPU
# flex_attention miscomputes an 8 x 8 attention (NaN or ~20% off, any mask, contiguous inputs too), which
# the harness's numerics gate would record as an incorrect row; 6 x 6 and the decode shapes are exact.
B, PREFILL, TOTAL = 2, 6, 12
# Prefill reads 8 keys and every decode step the 4-row ring: two compiled graph shapes. The plain
# causal mask of gqa is the and-mask's first term; the composed function covers windows and sinks.
LAYERS = {
    "window+sink-tokens": ("swa", {"sliding_window": 3, "sink_tokens": 1}),
}


@pytest.fixture(scope="module")
def layers() -> dict[str, variants.AttentionLayer]:
    return {name: variants.build(variant, SHAPE.replace(**changes), seed=0) for name, (variant, changes)
            in LAYERS.items()}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_flex_equals_eager_in_prefill_and_decode_past_the_window(layers, name):
    layer = layers[name]
    x_BTD = torch.randn(B, TOTAL, SHAPE.hidden, generator=torch.Generator().manual_seed(0))
    outs = {}
    for impl in ("eager", "flex"):
        cache = layer.new_cache(B, TOTAL, impl=impl)
        steps = [layer.prefill(x_BTD[:, :PREFILL], cache, impl=impl)]
        steps += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(PREFILL, TOTAL)]
        outs[impl] = torch.cat(steps, dim=1)
    assert rel_err(outs["flex"], outs["eager"]) < 1e-5


@pytest.mark.parametrize("name", ["prefix-lm", "document"])
def test_flex_block_masks_from_other_functions_equal_the_dense_mask(name):
    fn = or_masks(causal, prefix(3)) if name == "prefix-lm" else and_masks(
        causal, document(torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])))
    mask = make_mask(q_len=PREFILL, kv_len=PREFILL, q_offset=0, device="cpu", fn=fn)
    blocks = block_mask(mask, device="cpu")
    # The BlockMask's own mask function, evaluated everywhere, is the dense mask eager applies.
    q, kv = torch.meshgrid(torch.arange(PREFILL), torch.arange(PREFILL), indexing="ij")
    zero = torch.zeros((), dtype=torch.long)
    assert torch.equal(blocks.mask_mod(zero, zero, q, kv), mask.keep_LT)


def test_learned_sinks_are_declared_unsupported_on_cpu():
    layer = variants.build("swa", SHAPE.replace(sliding_window=4, attn_sinks=True))
    reason = variants.IMPLEMENTATIONS.get("flex").supports(layer, phase="decode", device=torch.device("cpu"),
                                                            dtype=torch.float32)
    assert reason == ("flex applies learned sinks on cuda only: torch's CPU flex_attention returns no "
                      "log-sum-exp under compile")


def test_flex_runs_mla_standard_path_with_its_narrower_values():
    """MLA's standard path (keys of nope + rope width, values of v_head_dim): plain causal prefill."""
    from tests.shapes import TINY

    layer = variants.build("mla", TINY, seed=0)
    x_BTD = torch.randn(B, PREFILL, TINY.hidden, generator=torch.Generator().manual_seed(1))
    outs = {impl: layer.prefill(x_BTD, layer.new_cache(B, PREFILL, impl=impl), impl=impl) for impl in ("eager", "flex")}
    assert rel_err(outs["flex"], outs["eager"]) < 1e-5


@pytest.mark.gpu
def test_flex_applies_learned_sinks_on_cuda():
    """On CUDA flex returns its log-sum-exp, so gpt-oss's sinks apply: equal to eager past the window.
    (Unverified here: written on a machine without a GPU.)"""
    layer = variants.build("swa", SHAPE.replace(sliding_window=4, attn_sinks=True), seed=0, device="cuda")
    with torch.no_grad():
        layer.sinks.copy_(torch.tensor([1.5, -0.5, 3.0, 0.0]))
    x_BTD = torch.randn(B, TOTAL, SHAPE.hidden, generator=torch.Generator().manual_seed(0)).cuda()
    outs = {}
    for impl in ("eager", "flex"):
        cache = layer.new_cache(B, TOTAL, impl=impl)
        steps = [layer.prefill(x_BTD[:, :PREFILL], cache, impl=impl)]
        steps += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(PREFILL, TOTAL)]
        outs[impl] = torch.cat(steps, dim=1)
    assert rel_err(outs["flex"], outs["eager"]) < 1e-5
