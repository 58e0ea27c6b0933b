"""DeepSeek-V3.2's sparse attention (``dsa``): the indexer's top-k, sparse = dense masked, the float64
reference, transformers' module, the cost model and the cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attnbench import variants
from tests.reference import rel_err
from tests.reference_dsa import index_scores, reference_dsa, top_k
from tests.test_cost import count_flops
from attnbench.variants.implementation import KernelImplementation
from attnbench.variants.families.dsa.indexer import selected_keep
from attnbench.variants.kernels.mla_eager import EagerMLAKernel
from attnbench.variants.kernels.mla_sdpa import SdpaMLAKernel
from attnbench.variants.kernels.mla_sparse_eager import EagerSparseMLAKernel
from attnbench.variants.kernels.mla_sparse_sdpa import SdpaSparseMLAKernel
from attnbench.variants.mask import AttnMask
from attnbench.variants.registry import IMPLEMENTATIONS
from attnbench.variants.shape import ModelShape

F64 = torch.float64
# Dimensions distinct where they can be (a transposed weight cannot pass). 14 indexer heads: a score is
# exactly 0 (a tie at ReLU's floor) only when every head's logit is negative, 2^-14 of the time.
SHAPE = ModelShape(hidden=64, heads=4, head_dim=16, d_c=32, d_r=8, q_rank=24, nope_head_dim=16, v_head_dim=12,
                   index_heads=14, index_head_dim=20, index_topk=5, rope_layout="interleaved", name="test")
IMPLS = ("eager", "sdpa", "expanded", "absorbed", "absorbed_sdpa", "absorbed_fold_o")
B, PREFILL, TOTAL = 2, 7, 16  # decode runs 9 tokens past the first k = 5


def _layer(dtype: torch.dtype = F64, **changes) -> variants.AttentionLayer:
    return variants.build("dsa", SHAPE.replace(**changes), dtype=dtype, seed=0)


def _prefill_then_decode(layer, x_BTD: torch.Tensor, impl: str, prefill: int = PREFILL) -> torch.Tensor:
    cache = layer.new_cache(x_BTD.shape[0], x_BTD.shape[1], impl=impl)
    outs = [layer.prefill(x_BTD[:, :prefill], cache, impl=impl)]
    outs += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(prefill, x_BTD.shape[1])]
    return torch.cat(outs, dim=1)


def test_every_implementation_matches_the_float64_reference(seed):
    layer = _layer()
    x_BTD = torch.randn(B, TOTAL, SHAPE.hidden, dtype=F64)
    expected = reference_dsa(layer, x_BTD)
    outs = {impl: _prefill_then_decode(layer, x_BTD, impl) for impl in IMPLS}
    for impl, got in outs.items():
        # float64 throughout, but the rotary frequencies are float32 values: 1e-7, not 1e-12.
        assert rel_err(got, expected) < 1e-7, impl
        # The sparse gather (absorbed*) and the dense masked baseline (eager) select with the same code:
        # they agree to float64 round-off.
        assert rel_err(got, outs["eager"]) < 1e-12, impl
    # The selection matters: dense MLA over the same weights is far off.
    dense = _layer(index_topk=TOTAL)
    dense.load_state_dict(layer.state_dict())
    assert rel_err(_prefill_then_decode(dense, x_BTD, "absorbed"), expected) > 1e-2


def test_the_indexer_top_k_is_the_brute_force_selection(seed):
    layer = _layer()
    x_BTD = torch.randn(1, TOTAL, SHAPE.hidden, dtype=F64)
    cache = layer.new_cache(1, TOTAL, impl="absorbed")
    layer.prefill(x_BTD, cache, impl="absorbed")
    with torch.no_grad():
        c_q = layer._compressed_query(x_BTD)
        idx_LK = layer.indexer(x_BTD, c_q, cache.read("index_k", TOTAL), q_start=0)[0]
    scores_TT = index_scores(layer, x_BTD[0])
    k = SHAPE.index_topk
    assert idx_LK.shape == (TOTAL, k)
    for t, (row, expected) in enumerate(zip(idx_LK.tolist(), top_k(scores_TT, k), strict=True)):
        chosen = [s for s in row if s >= 0]
        assert row.count(-1) == max(0, k - (t + 1)), t  # unused slots only where fewer than k are visible
        assert sorted(chosen) == expected, t
        # The definition itself (ties aside): no unselected visible token outranks a selected one.
        rest = [s for s in range(t + 1) if s not in chosen]
        if rest:
            assert min(scores_TT[t, chosen]) >= max(scores_TT[t, rest]), t


@pytest.mark.parametrize("kernel", [EagerSparseMLAKernel(gather_bytes=1), SdpaSparseMLAKernel(gather_bytes=1),
                                    EagerSparseMLAKernel()], ids=["eager-blocks", "sdpa-blocks", "eager"])
def test_sparse_attention_equals_dense_attention_with_the_rest_masked(kernel, seed):
    Bk, L, T, N, C, R, K = 2, 5, 11, 3, 6, 4, 4
    q_lat, q_rope = torch.randn(Bk, L, N, C, dtype=F64), torch.randn(Bk, L, N, R, dtype=F64)
    kv_BTE = torch.randn(Bk, T, C + R, dtype=F64)
    c_kv, k_rope = kv_BTE[..., :C], kv_BTE[..., C:]
    # Each query's own rows in random order; a query of the last ones sees fewer than K (-1 slots).
    idx = torch.stack([torch.stack([torch.randperm(T)[:K] for _ in range(L)]) for _ in range(Bk)])
    idx[:, -1, 2:] = -1
    idx[0, 0, 1:] = -1
    got = kernel(q_lat, q_rope, c_kv, k_rope, idx, scale=0.3, kv_BTE=kv_BTE)
    keep = selected_keep(idx, T)
    dense = EagerMLAKernel()(q_lat, q_rope, c_kv, k_rope, scale=0.3,
                             mask=AttnMask(L, T, 0, keep, all_visible=False))
    assert rel_err(got, dense) < 1e-13


def test_from_hf_reproduces_deepseek_v32_attention_through_its_cache(seed):
    transformers = pytest.importorskip("transformers", reason="the interop tests need the 'test' extra")
    from transformers import DynamicCache
    from transformers.models.deepseek_v32 import modeling_deepseek_v32 as ds32

    config = transformers.DeepseekV32Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, index_n_heads=14, index_head_dim=20,
        index_topk=5, num_hidden_layers=1, max_position_embeddings=64, attn_implementation="eager")
    attn = ds32.DeepseekV32Attention(config, layer_idx=0).to(F64).eval()
    with torch.no_grad():  # every parameter random (norm weights around 1, LayerNorm bias too)
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5 + (1.0 if p.dim() == 1 else 0.0))
    layer = variants.from_hf(attn)
    assert layer.variant == "dsa" and layer.dtype == F64 and layer.config.index_topk == 5
    rotary = ds32.DeepseekV32RotaryEmbedding(config)
    x_BTD = torch.randn(B, TOTAL, 64, dtype=F64)
    cache = DynamicCache(config=config)  # its indexed layer keeps the indexer keys
    expected = []
    with torch.no_grad():
        for start, end in [(0, PREFILL)] + [(t, t + 1) for t in range(PREFILL, TOTAL)]:
            x = x_BTD[:, start:end]
            pos = torch.arange(start, end).unsqueeze(0).expand(B, -1)
            blocked = torch.arange(end).view(1, -1) > pos[0].view(-1, 1)
            mask = torch.zeros(B, 1, end - start, end, dtype=F64).masked_fill(blocked, torch.finfo(F64).min)
            out, _ = attn(x, position_embeddings=rotary(x, pos), attention_mask=mask, past_key_values=cache,
                          position_ids=pos)
            expected.append(out)
    assert type(cache.layers[0]).__name__ == "DynamicIndexedLayer"
    expected_BTD = torch.cat(expected, dim=1)
    # transformers' RMSNorm, indexer scores and eager softmax run in float32 even in a float64 module.
    for impl in IMPLS:
        assert rel_err(_prefill_then_decode(layer, x_BTD, impl), expected_BTD) < 1e-5, impl
    assert rel_err(reference_dsa(layer, x_BTD), expected_BTD) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_flops_equal_flop_counter(impl, seed):
    layer = _layer(torch.float32)
    implementation = IMPLEMENTATIONS.get(impl)
    cache = layer.new_cache(B, 24, impl=impl)
    D = SHAPE.hidden
    step = layer.prepare("prefill", torch.randn(B, 9, D), cache, impl=impl)
    assert count_flops(step) == implementation.cost(layer, batch=B, q_len=9, cached=0, new_kv=9).flops, "prefill"
    layer.prefill(torch.randn(B, 9, D), cache, impl=impl)
    for q_len in (1, 3):
        step = layer.prepare("decode", torch.randn(B, q_len, D), cache, impl=impl)
        expected = implementation.cost(layer, batch=B, q_len=q_len, cached=9, new_kv=q_len).flops
        assert count_flops(step) == expected, f"decode L={q_len}"


@pytest.mark.parametrize("impl", ["absorbed", "absorbed_sdpa", "absorbed_fold_o"])
def test_the_sparse_decode_step_does_not_grow_with_the_context_past_k(impl):
    layer = _layer(torch.float32, index_topk=16)
    implementation = IMPLEMENTATIONS.get(impl)
    counted, indexer = {}, {}
    for context in (64, 256):
        cache = layer.new_cache(1, context + 1, impl=impl)
        cache.fill_random_(context)
        step = layer.prepare("decode", torch.randn(1, 1, SHAPE.hidden), cache, impl=impl)
        cost = implementation.cost(layer, batch=1, q_len=1, cached=context, new_kv=1)
        counted[context] = count_flops(step)
        assert counted[context] == cost.flops
        indexer[context] = cost.indexer_flops
        assert cost.cache_read_bytes == 4 * (16 * (SHAPE.d_c + SHAPE.d_r) + context * SHAPE.index_head_dim)
    assert counted[64] - indexer[64] == counted[256] - indexer[256]
    assert indexer[256] > indexer[64]  # the indexer's scan is what grows
    dense = IMPLEMENTATIONS.get("eager").cost(layer, batch=1, q_len=1, cached=256, new_kv=1)
    assert dense.flops - dense.indexer_flops > 4 * (counted[256] - indexer[256])


def test_cache_holds_latent_rope_key_and_indexer_key():
    layer = _layer(torch.float32)
    for impl in IMPLS:
        path = IMPLEMENTATIONS.get(impl).path
        cache = layer.new_cache(3, 11, impl=impl)
        layout = layer.cache_layout(path)
        cost = IMPLEMENTATIONS.get(impl).cost(layer, batch=3, q_len=1, cached=10, new_kv=1)
        assert cache.nbytes() == layout.nbytes(batch=3, context=11, dtype=torch.float32) \
            == 3 * 11 * cost.kv_bytes_per_token, impl
        assert "index_k" in cache.fields and cache.fields["index_k"].shape == (3, 11, SHAPE.index_head_dim)
        if path != "expanded":
            assert set(cache.fields) == {"c_kv", "k_rope", "index_k"}
            assert cache.buffers["packed"].shape[-1] == SHAPE.d_c + SHAPE.d_r  # MLA's rows stay packed
            assert cost.kv_bytes_per_token == (SHAPE.d_c + SHAPE.d_r + SHAPE.index_head_dim) * 4


def test_deepseek_v32_shape_caches_1408_bytes_per_token_and_layer():
    # DeepSeek-V3.2-Exp (config.json): kv_lora_rank 512, qk_rope_head_dim 64, index_head_dim 128, 61 layers.
    shape = ModelShape(hidden=7168, heads=128, head_dim=128, d_c=512, d_r=64, q_rank=1536, nope_head_dim=128,
                       v_head_dim=128, num_layers=61, rope_layout="interleaved", name="deepseek_v32")
    layer = variants.build("dsa", shape, dtype=torch.bfloat16, device="meta")
    assert layer.kv_bytes_per_token("absorbed") == (512 + 64 + 128) * 2 == 1408
    assert layer.kv_bytes_per_token("absorbed") * shape.num_layers == 85_888


@pytest.mark.parametrize("impl", ["eager", "absorbed", "absorbed_sdpa"])
def test_paged_and_ragged_caches_select_and_attend_as_contiguous_ones(impl):
    layer = _layer()
    x_BTD = torch.randn(3, 12, SHAPE.hidden, dtype=F64)
    contiguous = _prefill_then_decode(layer, x_BTD, impl)
    cache = layer.new_cache(3, 12, impl=impl, page_size=4)
    paged = [layer.prefill(x_BTD[:, :PREFILL], cache, impl=impl)]
    paged += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(PREFILL, 12)]
    assert rel_err(torch.cat(paged, dim=1), contiguous) < 1e-14
    # A ragged batch: sequence b holds 9, 6 and 11 tokens (the uniform run's rows), then decodes one more.
    lens = [9, 6, 11]
    ragged = layer.new_cache(3, 12, impl=impl)
    layer.prefill(x_BTD[:, :11], ragged, impl=impl)
    ragged.set_seq_lens(lens)
    x_B1D = torch.stack([x_BTD[b, n] for b, n in enumerate(lens)]).unsqueeze(1)
    # Rows past each sequence's length hold other tokens: the step must ignore them.
    y_B1D = layer.decode(x_B1D, ragged, impl=impl)
    for b, n in enumerate(lens):
        alone = layer.new_cache(1, n + 1, impl=impl)
        layer.prefill(x_BTD[b:b + 1, :n], alone, impl=impl)
        assert rel_err(y_B1D[b:b + 1], layer.decode(x_BTD[b:b + 1, n:n + 1], alone, impl=impl)) < 1e-13, b


@pytest.mark.parametrize(("changes", "needle"), [
    ({"q_rank": None}, "^variant=dsa needs q_rank in the model shape; test has none"),
    ({"index_topk": 0}, "^index_topk=0 is not allowed: index_topk must be a positive integer$"),
    ({"index_heads": -1}, "^index_heads=-1 is not allowed: index_heads must be a positive integer$"),
    ({"index_head_dim": 6}, r"^index_head_dim=6 is not allowed: it must be at least d_r=8 \(the indexer"),
    ({"d_r": 7}, "^d_r=7 is odd; the decoupled RoPE key rotates pairs, so d_r must be even$"),
])
def test_bad_shapes_fail_at_construction_with_one_line(changes, needle):
    with pytest.raises(ValueError, match=needle):
        variants.build("dsa", SHAPE.replace(**changes))


def test_cross_attention_and_other_refusals_are_one_line():
    with pytest.raises(ValueError, match="^attention='cross' is not allowed for dsa: it must be self"):
        variants.build("dsa", SHAPE, attention="cross")
    layer = _layer(torch.float32)
    cpu = torch.device("cpu")
    flex = IMPLEMENTATIONS.get("flex").supports(layer, phase="decode", device=cpu, dtype=torch.float32)
    assert flex.startswith("dsa's indexer selects the tokens inside the step; the flex kernel applies only a mask")
    with pytest.raises(ValueError, match="^dsa's indexer selects the tokens inside the step"):
        layer.new_cache(1, 8, impl="flex")
    # An absorbed plug-in whose MLA kernel has no sparse counterpart is refused, not run dense.
    plain = KernelImplementation(name="plain_absorbed", path="absorbed", kernel=EagerMLAKernel(),
                                 options={"fold_o": False}, description="test")
    reason = plain.supports(layer, phase="decode", device=cpu, dtype=torch.float32)
    assert reason.startswith("dsa's absorbed path attends on the selected tokens only; the eager MLA kernel has no")
    with pytest.raises(ValueError, match="^dsa's absorbed path attends on the selected tokens only"):
        layer.plan(plain)
    mismatched = dataclasses.replace(plain, kernel=SdpaMLAKernel(sparse=EagerSparseMLAKernel()))
    assert "reads another cache layout" in mismatched.supports(layer, phase="decode", device=cpu,
                                                               dtype=torch.float32)
    # Top-k larger than the context is legal: every visible token is kept (dense MLA plus the indexer).
    wide = _layer(index_topk=4096)
    x_BTD = torch.randn(1, 6, SHAPE.hidden, dtype=F64)
    assert rel_err(_prefill_then_decode(wide, x_BTD, "absorbed", prefill=3), reference_dsa(wide, x_BTD)) < 1e-7


def test_variant_all_makes_dsa_only_where_the_shape_compresses_queries():
    from attnbench.harness.sweep.plan import plan_cases
    from attnbench.variants.presets import load_preset

    def planned(model: str) -> set[str]:
        preset = dataclasses.asdict(load_preset(model))
        return {c.variant for c in plan_cases({"model": preset, "variant": "all", "impl": "all", "device": "cpu"})}

    assert "dsa" in planned("tiny_dsa")
    assert "dsa" not in planned("llama3_8b")  # no q_rank: dsa is left out, the others planned
    assert {"mha", "gqa", "mla"} <= planned("llama3_8b")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_the_numerics_gate_exercises_the_selection(phase, dtype):
    from attnbench.harness.measure import numerics
    from attnbench.harness.measure.case import Case
    from attnbench.variants.presets import load_preset

    shape = load_preset("tiny_dsa")
    small = numerics.reduce_shape(shape)
    assert small.index_topk < 24 and small.index_topk == min(shape.index_topk, 8)  # the gate's 24 tokens
    case = Case(variant="dsa", impl="absorbed", compile=None, phase=phase, model="tiny_dsa", shape=shape, batch=2,
                seq=1024, decode_len=1, dtype=dtype, device="cpu", attention="self")
    err, tol = numerics.check(case)
    assert err <= tol


def _gate(impl: str = "absorbed", dtype: str = "float32", phase: str = "prefill") -> tuple[float, float]:
    from attnbench.harness.measure import numerics
    from attnbench.harness.measure.case import Case
    from attnbench.variants.presets import load_preset

    case = Case(variant="dsa", impl=impl, compile=None, phase=phase, model="tiny_dsa", shape=load_preset("tiny_dsa"),
                batch=2, seq=1024, decode_len=2, dtype=dtype, device="cpu")
    return numerics.check(case)


def test_the_gate_fails_a_selection_that_is_not_a_top_k(monkeypatch):
    from attnbench.variants.families.dsa.indexer import LightningIndexer

    original = LightningIndexer.forward

    def lowest(self, x_BLD, c_q_BLQ, k_BTI, *, q_start):  # the k worst tokens, outside float64
        idx_BLK = original(self, x_BLD, c_q_BLQ, k_BTI, q_start=q_start)
        if x_BLD.dtype == torch.float64:
            return idx_BLK
        scores_BLT = self.scores(x_BLD, c_q_BLQ, k_BTI, q_start=q_start)
        low = scores_BLT.masked_fill(scores_BLT == float("-inf"), float("inf")).topk(idx_BLK.shape[-1], largest=False)
        return torch.where(low.values == float("inf"), -1, low.indices)

    monkeypatch.setattr(LightningIndexer, "forward", lowest)
    for phase in ("prefill", "decode"):
        err, tol = _gate(phase=phase)
        assert err > 10 * tol, phase  # the output on that selection is right: the shortfall fails it


def test_the_gate_fails_wrong_attention_on_the_right_selection(monkeypatch):
    original = EagerSparseMLAKernel.__call__

    def rescaled(self, *args, scale, **kwargs):
        return original(self, *args, scale=scale * 1.5, **kwargs)

    monkeypatch.setattr(EagerSparseMLAKernel, "__call__", rescaled)
    err, tol = _gate()
    assert err > 10 * tol
    assert _gate("eager")[0] <= tol  # the dense baseline does not call the sparse kernel


def test_shortfall_is_zero_for_a_top_k_and_infinite_for_a_wrong_count():
    from attnbench.variants.families.dsa.selection import shortfall

    inf = float("-inf")
    scores = torch.tensor([[[1.0, inf, inf], [0.5, 2.0, inf], [3.0, 1.0, 2.0]]])
    assert shortfall(scores, torch.tensor([[[0, -1], [1, 0], [0, 2]]])) == 0.0
    assert shortfall(scores, torch.tensor([[[0, -1], [1, 0], [0, 1]]])) == pytest.approx((2.0 - 1.0) / 3.0)
    assert shortfall(scores, torch.tensor([[[0, 1], [1, 0], [0, 2]]])) == float("inf")  # an invisible token
    assert shortfall(scores, torch.tensor([[[-1, -1], [1, 0], [0, 2]]])) == float("inf")  # a query left empty


def test_an_fp8_cache_quantizes_the_latent_and_the_indexer_keys():
    from attnbench.harness.measure import numerics

    v32 = ModelShape(hidden=7168, heads=128, head_dim=128, d_c=512, d_r=64, q_rank=1536, nope_head_dim=128,
                     v_head_dim=128, rope_layout="interleaved", kv_dtype="fp8_e4m3", name="deepseek_v32")
    meta = variants.build("dsa", v32, device="meta")
    # FlashMLA's 656 B (512 e4m3, 4 float32 scales, 64 bf16 rotary values) plus the indexer key's 128 + 4.
    assert meta.kv_bytes_per_token("absorbed", torch.bfloat16) == 656 + 128 + 4 == 788
    full, fp8 = _layer(torch.float32), _layer(torch.float32, kv_dtype="fp8_e4m3")
    x_BTD = torch.randn(2, TOTAL, SHAPE.hidden)
    for impl in ("eager", "absorbed"):
        cache = fp8.new_cache(2, TOTAL, impl=impl)
        assert cache.fields["index_k"].dtype == torch.float8_e4m3fn and "index_k" in cache.scales
        err = rel_err(_prefill_then_decode(fp8, x_BTD, impl), _prefill_then_decode(full, x_BTD, impl))
        # Quantized, not the same numbers; no upper bound here: fp8 indexer keys may swap near-equal tokens,
        # which the gate below tells apart from the attention's error.
        assert 1e-3 < err, impl
    with pytest.raises(ValueError, match="^kv_dtype=fp8_e4m3: the sdpa kernel reads the packed cache rows"):
        fp8.new_cache(1, 8, impl="absorbed_sdpa")
    from attnbench.harness.measure.case import Case
    from attnbench.variants.presets import load_preset

    for phase in ("prefill", "decode"):
        case = Case(variant="dsa", impl="absorbed", compile=None, phase=phase, model="tiny_dsa",
                    shape=load_preset("tiny_dsa").replace(kv_dtype="fp8_e4m3"), batch=2, seq=1024, decode_len=1,
                    dtype="float32", device="cpu")
        err, tol = numerics.check(case)
        assert 10 * numerics.TOLERANCE["float32"] < err <= tol == numerics.tolerance(case), phase


def test_an_fp8_one_token_step_dequantizes_only_its_picks_and_equals_the_dense_masked_one():
    """The sparse step on an fp8 cache gathers its K picked rows (not the whole latent); the same
    dequantized numbers as the dense masked step over the whole fp8 cache."""
    fp8 = _layer(F64, kv_dtype="fp8_e4m3")
    x_BTD = torch.randn(2, TOTAL, SHAPE.hidden, dtype=F64)
    sparse = _prefill_then_decode(fp8, x_BTD, "absorbed")
    dense = _prefill_then_decode(fp8, x_BTD, "eager")
    assert rel_err(sparse, dense) <= 1e-10
    gathered = []
    cache = fp8.new_cache(2, TOTAL, impl="absorbed")
    fp8.prefill(x_BTD[:, :PREFILL], cache, impl="absorbed")
    original = cache.gather
    cache.gather = lambda name, index_BK: gathered.append((name, tuple(index_BK.shape))) or original(name, index_BK)
    fp8.decode(x_BTD[:, PREFILL:PREFILL + 1], cache, impl="absorbed")
    assert gathered == [("c_kv", (2, SHAPE.index_topk)), ("k_rope", (2, SHAPE.index_topk))]
