"""GQA -> MLA conversion (``attnbench.variants.convert``) on tiny layers with fresh random weights.

Legend: B batch, T tokens, D hidden.
"""

from __future__ import annotations

import pytest
import torch

from attnbench import variants
from tests.reference import reference, rel_err
from tests.shapes import COMPILING
from tests.test_cost import count_flops
from attnbench.variants.convert import METHODS, available_rank, convert, method_names

F64 = torch.float64
HIDDEN, HEADS, HEAD_DIM = 24, 4, 8
B, T, PREFILL = 2, 24, 15
SOURCES = {"mha": HEADS, "gqa": 2, "mqa": 1}  # variant -> kv heads


def source_layer(variant: str = "gqa", *, layout: str = "half", seed: int | None = None,
                 dtype: torch.dtype = F64) -> variants.AttentionLayer:
    return variants.build(variant, hidden=HIDDEN, heads=HEADS, head_dim=HEAD_DIM, kv_heads=SOURCES[variant],
                          rope_layout=layout, rope_theta=10000.0, dtype=dtype, seed=seed)


def calibration(seed: int, *, dtype: torch.dtype = F64) -> torch.Tensor:
    """``[B, T, D]`` activations with unequal per-dimension scales (1x to ~30x), as real hidden
    states have; isotropic noise would give a data-aware method nothing to exploit."""
    g = torch.Generator().manual_seed(seed)
    scales_D = torch.logspace(0, 1.5, HIDDEN, dtype=F64)[torch.randperm(HIDDEN, generator=g)]
    return (torch.randn(B, T, HIDDEN, generator=g, dtype=F64) * scales_D).to(dtype)


def prefill_then_decode(layer, x_BTD: torch.Tensor, impl: str) -> torch.Tensor:
    cache = layer.new_cache(B, T, impl=impl)
    outs = [layer.prefill(x_BTD[:, :PREFILL], cache, impl=impl), layer.decode(x_BTD[:, PREFILL:PREFILL + 1], cache,
                                                                                 impl=impl),
            layer.decode(x_BTD[:, PREFILL + 1:], cache, impl=impl)]
    return torch.cat(outs, dim=1)


def act_rel_err(source, layer, x_BTD: torch.Tensor) -> float:
    """Relative error of the attention output on ``x`` (prefill), converted vs source."""
    return rel_err(layer.prefill(x_BTD, layer.new_cache(B, T)), source.prefill(x_BTD, source.new_cache(B, T)))


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("variant", sorted(SOURCES))
@pytest.mark.parametrize("method", ["svd", "rsvd", "qr", "cur", "whitened"])
def test_full_rank_all_rotary_reproduces_source(method, variant, layout, seed):
    """d_r = head_dim keeps every pair rotary and d_c = the full rank keeps every direction: exact."""
    source = source_layer(variant, layout=layout, seed=seed)
    x_BTD = calibration(seed)
    d_c = available_rank(source, HEAD_DIM)
    layer = variants.to_mla(source, d_c=d_c, d_r=HEAD_DIM, method=method, calibration_BTD=x_BTD)
    assert layer.config.nope_head_dim == 0 and layer.config.rope_heads == SOURCES[variant]
    expected = prefill_then_decode(source, x_BTD, "eager")
    for impl in ("eager", "sdpa", "absorbed", "absorbed_sdpa", "absorbed_fold_o", "expanded"):
        err = rel_err(prefill_then_decode(layer, x_BTD, impl), expected)
        assert err <= 1e-10, f"{method}/{variant}/{layout}/{impl}: relative error {err:.1e}"


@pytest.mark.parametrize("d_r", [2, 4])
def test_svd_weight_error_is_never_above_any_other_method(d_r, seed):
    """Eckart-Young: the truncated SVD is the best rank-d_c approximation in Frobenius norm."""
    source = source_layer(seed=seed)
    x_BTD = calibration(seed)
    for d_c in range(1, available_rank(source, d_r) + 1):
        errs = {m: convert(source, d_c=d_c, d_r=d_r, method=m, calibration_BTD=x_BTD).weight_rel_err
                for m in method_names()}
        for method, err in errs.items():
            assert errs["svd"] <= err + 1e-12, f"d_c={d_c}: svd {errs['svd']:.6f} > {method} {err:.6f}"


@pytest.mark.parametrize("method", ["svd", "rsvd", "qr", "cur", "whitened"])
def test_errors_fall_as_d_c_grows(method, seed):
    source = source_layer(seed=seed)
    x_BTD = calibration(seed)
    # Weight error with partial RoPE (d_r = 4); attention-output error with every pair rotary, where
    # the rank is the only approximation (with random weights, removing RoPE dominates otherwise).
    full = available_rank(source, 4)
    weight = [convert(source, d_c=d_c, d_r=4, method=method, calibration_BTD=x_BTD).weight_rel_err
              for d_c in (3, 8, 14, full)]
    assert weight == sorted(weight, reverse=True) and len(set(weight)) == 4, weight
    assert weight[-1] <= 1e-10
    full = available_rank(source, HEAD_DIM)
    act = [act_rel_err(source, variants.to_mla(source, d_c=d_c, d_r=HEAD_DIM, method=method,
                                               calibration_BTD=x_BTD), x_BTD)
           for d_c in (full // 4, full // 2, full)]
    assert act[0] > act[2] and act[1] > act[2] and act[2] <= 1e-10, act
    if method != "cur":
        # SVD, rSVD and whitened SVD keep the leading directions and QR its first pivots as d_c grows
        # (nested subspaces). CUR re-picks its columns and rows at each rank, so only its weight
        # error is bound to fall step by step (its activation error did rise ~1% from d_c=4 to 8 in
        # about 1 of 30 seeds).
        assert act[0] > act[1], act


@pytest.mark.parametrize("d_r", [4, HEAD_DIM])
def test_whitened_activation_error_is_not_above_svd_on_calibration_data(d_r, seed):
    source = source_layer(seed=seed)
    x_BTD = calibration(seed)
    for d_c in (2, 5, 9, 13):
        svd = convert(source, d_c=d_c, d_r=d_r, method="svd", calibration_BTD=x_BTD)
        whitened = convert(source, d_c=d_c, d_r=d_r, method="whitened", calibration_BTD=x_BTD)
        # SVD-LLM's theorem: whitened SVD is optimal for the projected keys and values on these tokens.
        assert whitened.kv_act_rel_err <= svd.kv_act_rel_err + 1e-12
        if d_r == HEAD_DIM:  # and so the attention output, once RoPE removal is out of the picture
            assert act_rel_err(source, whitened.layer, x_BTD) <= act_rel_err(source, svd.layer, x_BTD)


@pytest.mark.parametrize("variant", sorted(SOURCES))
@pytest.mark.parametrize("impl", ["absorbed", "absorbed_sdpa", "absorbed_fold_o", "expanded"])
def test_converted_absorbed_and_eager_agree(variant, impl, seed):
    source = source_layer(variant, seed=seed)
    x_BTD = calibration(seed)
    layer = variants.to_mla(source, d_c=7, d_r=4, method="whitened", calibration_BTD=x_BTD)
    assert rel_err(prefill_then_decode(layer, x_BTD, impl), prefill_then_decode(layer, x_BTD, "eager")) <= 1e-12


@pytest.mark.parametrize("variant", sorted(SOURCES))
def test_converted_layer_matches_float64_reference(variant, seed):
    source = source_layer(variant, layout="interleaved", seed=seed, dtype=torch.float32)
    x_BTD = calibration(seed, dtype=torch.float32)[:, :9]
    layer = variants.to_mla(source, d_c=6, d_r=4, method="svd", calibration_BTD=x_BTD)
    expected = reference(layer, x_BTD)
    cache = layer.new_cache(B, 9, impl="absorbed")
    got = torch.cat([layer.prefill(x_BTD[:, :5], cache, impl="absorbed"),
                     layer.decode(x_BTD[:, 5:], cache, impl="absorbed")], dim=1)
    assert rel_err(got, expected) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", sorted(SOURCES))
def test_converted_cache_bytes_and_flops_equal_cost_model(variant, dtype, seed):
    source = source_layer(variant, seed=seed, dtype=dtype)
    layer = variants.to_mla(source, d_c=7, d_r=4)
    K = SOURCES[variant]
    for impl in variants.IMPLEMENTATIONS:
        if impl.name in COMPILING or impl.supports(layer, phase="decode", device=torch.device("cpu"), dtype=dtype):
            continue
        cache = layer.new_cache(B, 11, impl=impl.name)
        cost = impl.cost(layer, batch=B, q_len=1, cached=10, new_kv=1)
        assert cache.nbytes() == B * 11 * cost.kv_bytes_per_token
        if impl.path != "expanded":
            assert cost.kv_bytes_per_token == (7 + K * 4) * dtype.itemsize  # d_c + K·d_r elements
        layer.prefill(torch.randn(B, 10, HIDDEN, dtype=dtype), cache, impl=impl.name)
        step = layer.prepare("decode", torch.randn(B, 1, HIDDEN, dtype=dtype), cache, impl=impl.name)
        assert count_flops(step) == cost.flops, impl.name
    assert source.kv_bytes_per_token() == 2 * K * HEAD_DIM * dtype.itemsize


def test_norm_pairs_follow_the_largest_q_k_contributions(seed):
    """Scale one pair of each kv head's keys up: the norm strategy must keep exactly that pair."""
    source = source_layer(seed=seed)
    favourite = [3, 1]  # pair index per kv head
    with torch.no_grad():
        w_KHD = source.k_proj.weight.view(2, HEAD_DIM, HIDDEN)
        for k, f in enumerate(favourite):
            w_KHD[k, [f, f + HEAD_DIM // 2]] *= 100.0  # half layout: pair f is dims f and f + H/2
    conversion = convert(source, d_c=5, d_r=2, rope_pairs="norm", calibration_BTD=calibration(seed))
    assert conversion.pairs_KZ.tolist() == [[3], [1]]
    freqs = conversion.layer.rope.inv_freq
    assert torch.equal(freqs, source.rope.inv_freq[torch.tensor([[3], [1]])])


def test_pair_strategies_without_data():
    source = source_layer()
    pairs = {s: convert(source, d_c=5, d_r=4, rope_pairs=s).pairs_KZ.tolist() for s in ("auto", "high", "low",
                                                                                          "uniform")}
    assert pairs["auto"] == pairs["high"] == [[0, 1], [0, 1]]  # inv_freq falls with f: f = 0 is highest
    assert pairs["low"] == [[2, 3], [2, 3]]
    assert pairs["uniform"] == [[0, 3], [0, 3]]


def test_methods_are_registered_with_one_interface():
    assert method_names() == ["cur", "qr", "rsvd", "svd", "whitened"]
    assert [m.name for m in METHODS if m.uses_data] == ["whitened"]


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"d_c": 25, "d_r": 2}, r"d_c=25 is outside the rank available at d_r=2; allowed: 1\.\.24 \(min of "
                            r"K·\(H−d_r\)\+K·H = 28 and hidden = 24\)$"),
    ({"d_c": 21, "d_r": 6}, r"d_c=21 is outside the rank available at d_r=6; allowed: 1\.\.20 "),
    ({"d_c": 0}, r"d_c=0 is outside the rank available at d_r=4; allowed: 1\.\.24"),
    ({"d_r": 3}, r"d_r=3 is odd; allowed: even d_r in 2\.\.8 \(rotary dims per head, in pairs\)$"),
    ({"d_r": 10}, r"d_r=10 exceeds head_dim=8; allowed: even d_r in 2\.\.8"),
    ({"d_r": 0}, r"d_r=0 is not allowed; allowed: even d_r in 2\.\.8"),
    ({"method": "pca"}, r"unknown low-rank method 'pca'; valid: cur, qr, rsvd, svd, whitened$"),
    ({"method": "whitened"}, r"method 'whitened' needs calibration_BTD, the layer's input hidden states; none given$"),
    ({"rope_pairs": "norm"}, r"rope_pairs='norm' needs calibration_BTD"),
    ({"rope_pairs": "middle"}, r"rope_pairs='middle' is not one of: auto, norm, high, low, uniform$"),
    ({"calibration_BTD": torch.zeros(3, 5)},
     r"calibration_BTD has shape \(3, 5\); expected \[\.\.\., tokens, hidden=24\]$"),
])
def test_bad_conversion_input_is_one_line(kwargs, needle):
    with pytest.raises(ValueError, match="^" + needle) as info:
        convert(source_layer(), **({"d_c": 4, "d_r": 4} | kwargs))
    assert "\n" not in str(info.value)


def test_non_gqa_sources_are_refused():
    mla = variants.build("mla", hidden=HIDDEN, heads=HEADS, head_dim=HEAD_DIM, d_c=6, d_r=4)
    with pytest.raises(ValueError, match="^source is 'mla'; to_mla converts a GQA-family layer: mha, mqa, gqa$"):
        variants.to_mla(mla, d_c=4, d_r=4)
    with pytest.raises(ValueError, match="^source is 'Linear'; to_mla converts a GQA-family layer"):
        variants.to_mla(torch.nn.Linear(2, 2), d_c=4, d_r=4)
    cross = variants.build("gqa", hidden=HIDDEN, heads=HEADS, head_dim=HEAD_DIM, kv_heads=2, attention="cross")
    with pytest.raises(ValueError, match="^source attention='cross'; to_mla converts self-attention layers only$"):
        variants.to_mla(cross, d_c=4, d_r=4)
    biased = variants.build("gqa", hidden=HIDDEN, heads=HEADS, head_dim=HEAD_DIM, kv_heads=2, qkv_bias=True)
    with pytest.raises(ValueError, match=r"^source has biases \(qkv_bias=True, o_bias=False\); converting biased"):
        variants.to_mla(biased, d_c=4, d_r=4)
