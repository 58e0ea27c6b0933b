"""DeepSeek-V4 attention (csa, hca): against a float64 reference from the equations and against transformers,
the compression and the indexer's top-k on their own, sparse decode against dense masking, the cost model
against FlopCounterMode and the cache's tensors, and bad input at construction."""

from __future__ import annotations

import pytest
import torch

from attnbench import variants
from tests.dsv4_reference import brute_force_topk, layer_freqs, pooled_entries, reference
from tests.reference import rel_err
from tests.test_cost import count_flops
from attnbench.variants.families.dsv4 import cache_layout_of, layer_for_kind, model_kv_bytes, model_kv_bytes_per_token
from attnbench.variants.families.dsv4.compressor import select_topk
from attnbench.variants.shape import ModelShape

# Window 8 with entries every 2 (CSA) or 8 (HCA) tokens, 3 picked: 24 tokens run past the window's end,
# past the first compressed blocks, and CSA's 12 entries outnumber the picks (selection matters). 16
# indexer heads: with 4, all four ReLUs are 0 for 1 in 16 (query, entry) pairs, and equal scores of 0 at
# the k-th place make two right answers (a tie, seen at 1 seed in a few).
SHAPE = ModelShape(hidden=64, heads=4, head_dim=32, d_r=8, q_rank=24, sliding_window=8, csa_rate=2, hca_rate=8,
                   index_heads=16, index_head_dim=16, index_topk=3, o_groups=2, o_rank=16, attn_sinks=True,
                   rope_layout="interleaved", compress_rope_theta=160000.0, name="test")
SETTINGS = {"csa": ("csa", {}), "csa-rate4": ("csa", {"csa_rate": 4}), "hca": ("hca", {})}
B, PREFILL, TOTAL = 2, 5, 24
F64 = torch.float64


def _randomize(layer: variants.AttentionLayer) -> variants.AttentionLayer:
    """Non-trivial norm weights, position biases and sinks (they start at ones and zeros)."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if p.dim() == 1 or "position_bias" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in name else 0.0))
    return layer


def _layer(setting: str, dtype: torch.dtype = F64) -> variants.AttentionLayer:
    variant, changes = SETTINGS[setting]
    return _randomize(variants.build(variant, SHAPE.replace(**changes), dtype=dtype))


def _decode_by(layer, x_BTD: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """Prefill PREFILL tokens, then decode steps of the given sizes through one cache."""
    cache = layer.new_cache(B, x_BTD.shape[1])
    outs = [layer.prefill(x_BTD[:, :PREFILL], cache)]
    t = PREFILL
    for size in steps:
        outs.append(layer.decode(x_BTD[:, t:t + size], cache))
        t += size
    assert t == x_BTD.shape[1]
    return torch.cat(outs, dim=1)


# -- against the float64 reference ---------------------------------------------------------------------
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_prefill_then_token_decode_match_the_reference(setting, seed):
    layer = _layer(setting)
    x_BTD = torch.randn(B, TOTAL, SHAPE.hidden, dtype=F64)
    expected = reference(layer, x_BTD)
    # float64 throughout, but the rotary angles are float32 values (as the checkpoints compute them).
    assert rel_err(_decode_by(layer, x_BTD, [1] * (TOTAL - PREFILL)), expected) < 1e-6
    # Multi-token decode steps (the dense masked form) that straddle window closings and the ring's wrap.
    assert rel_err(_decode_by(layer, x_BTD, [3, 4, 2, 5, 5]), expected) < 1e-6


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_compression_equals_the_pooling_formula(setting, seed):
    """The entries a token-by-token decode writes through the state rings are the formula's, window by window."""
    layer = _layer(setting)
    x_BTD = torch.randn(B, TOTAL + 1, SHAPE.hidden, dtype=F64)  # one token into an open window
    cache = layer.new_cache(B, TOTAL + 1)
    layer.prefill(x_BTD[:, :PREFILL], cache)
    for t in range(PREFILL, TOTAL + 1):
        layer.decode(x_BTD[:, t:t + 1], cache)
    c = layer.config
    for b in range(B):
        x_TD = x_BTD[b].double()
        entries_SH = pooled_entries(x_TD, layer, "compressor.", width=c.head_dim, rate=c.rate, overlap=c.kind == "C",
                                    eps=c.norm_eps, freqs=layer_freqs(layer))
        assert cache["entries"].shape[1] == entries_SH.shape[0] == (TOTAL + 1) // c.rate
        assert rel_err(cache["entries"][b], entries_SH) < 1e-6
        if layer.indexer is not None:
            keys_SI = pooled_entries(x_TD, layer, "indexer.compressor.", width=c.index_head_dim, rate=c.rate,
                                     overlap=True, eps=c.norm_eps, freqs=layer_freqs(layer))
            assert rel_err(cache["index_entries"][b], keys_SI) < 1e-6


def test_indexer_topk_equals_a_brute_force_selection(seed):
    L, S, k, rate, start = 7, 9, 3, 2, 10  # queries at 10..16 see 5..8 of the 9 entries
    scores_BLS = torch.randn(2, L, S, dtype=F64)
    picks_BLk, valid_BLk = select_topk(scores_BLS, k=k, rate=rate, start=start)
    for b in range(2):
        for i in range(L):
            visible = (start + i + 1) // rate
            got = {int(s) for s, ok in zip(picks_BLk[b, i], valid_BLk[b, i], strict=True) if ok}
            assert got == brute_force_topk(scores_BLS[b, i].tolist(), visible, k)
    early_BLk, valid_early = select_topk(scores_BLS[:, :3], k=k, rate=rate, start=0)  # see 0, 1, 1 entries
    assert valid_early.sum(-1).tolist() == [[0, 1, 1]] * 2 and early_BLk.shape[-1] == 3


def test_sparse_decode_equals_dense_masked_attention(seed):
    """A one-token CSA step gathers its k picks; a prefill masks everything else: the same output."""
    layer = _layer("csa")
    x_BTD = torch.randn(B, TOTAL, SHAPE.hidden, dtype=F64)
    dense_BTD = layer.prefill(x_BTD, layer.new_cache(B, TOTAL))
    cache = layer.new_cache(B, TOTAL)
    layer.prefill(x_BTD[:, :TOTAL - 1], cache)
    assert (TOTAL // SHAPE.csa_rate) > SHAPE.index_topk  # a strict subset is gathered
    sparse_B1D = layer.decode(x_BTD[:, TOTAL - 1:], cache)
    assert rel_err(sparse_B1D, dense_BTD[:, -1:]) < 1e-12


# -- against transformers --------------------------------------------------------------------------------
# YaRN on the compressed layers' rope, as transformers applies it when the config asks (factor 4 here).
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}


@pytest.mark.parametrize(("layer_type", "rope_parameters"), [
    ("compressed_sparse_attention", None), ("heavily_compressed_attention", None), ("sliding_attention", None),
    ("compressed_sparse_attention", YARN)], ids=["csa", "hca", "window", "csa-yarn"])
def test_from_hf_reproduces_transformers_prefill_and_decode(layer_type, rope_parameters, seed):
    pytest.importorskip("transformers", reason="the interop tests need the 'test' extra (transformers)")
    from transformers import DeepseekV4Config, DynamicCache
    from transformers.models.deepseek_v4 import modeling_deepseek_v4 as hf

    W = 8
    types = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"]
    config = DeepseekV4Config(
        hidden_size=64, num_attention_heads=4, head_dim=32, q_lora_rank=24, qk_rope_head_dim=8, sliding_window=W,
        compress_rates={"compressed_sparse_attention": 2, "heavily_compressed_attention": 8}, index_n_heads=16,
        index_head_dim=16, index_topk=3, o_groups=2, o_lora_rank=16, num_hidden_layers=3, layer_types=types,
        vocab_size=32, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        rope_parameters=dict(rope_parameters) if rope_parameters else None, max_position_embeddings=64)
    config._attn_implementation = "eager"
    attn = hf.DeepseekV4Attention(config, types.index(layer_type)).to(F64)
    with torch.no_grad():  # every parameter random, sinks and position biases included
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5 + (1.0 if p.dim() == 1 else 0.0))
    layer = variants.from_hf(attn)
    assert layer.variant == {"compressed_sparse_attention": "csa", "heavily_compressed_attention": "hca",
                             "sliding_attention": "dsv4_window"}[layer_type]
    if layer_type != "sliding_attention":  # the compressed base, with YaRN's frequencies when asked
        plain = 1.0 / 160000.0 ** (torch.arange(0, 8, 2) / 8)
        assert torch.allclose(layer.rope.inv_freq.float(), plain) == (rope_parameters is None)
    rotary = hf.DeepseekV4RotaryEmbedding(config)
    x_BTD = torch.randn(B, TOTAL, 64, dtype=F64)
    hf_cache = DynamicCache(config=config)  # transformers' V4 cache layers (window, compressor state)
    cache = layer.new_cache(B, TOTAL)
    for start, end in [(0, PREFILL)] + [(t, t + 1) for t in range(PREFILL, TOTAL)]:
        x = x_BTD[:, start:end]
        position_ids = torch.arange(start, end).unsqueeze(0).expand(B, -1)
        embeddings = {kind: rotary(x, position_ids, layer_type=kind) for kind in ("main", "compress")}
        # The window keys transformers' cache returns: the last W - 1 cached, then the new ones.
        key_pos = torch.arange(max(0, start - (W - 1)), end)
        q_pos = torch.arange(start, end).unsqueeze(1)
        blocked = (key_pos > q_pos) | (q_pos - key_pos >= W)
        mask = torch.zeros(blocked.shape, dtype=F64).masked_fill(blocked, torch.finfo(F64).min)
        expected, _ = attn(x, position_embeddings=embeddings, position_ids=position_ids,
                           attention_mask=mask[None, None].expand(B, 1, -1, -1), past_key_values=hf_cache)
        got = layer.prefill(x, cache) if start == 0 else layer.decode(x, cache)
        # transformers rotates and normalises in float32 even in a float64 module.
        assert rel_err(got, expected) < 1e-5, f"{layer_type} tokens [{start}, {end})"


# -- the cost model --------------------------------------------------------------------------------------
STEPS = [("prefill", 13, 0), ("decode", 1, 13), ("decode", 1, 15), ("decode", 1, 16), ("decode", 3, 13)]


@pytest.mark.parametrize("kind", ["C", "H", "S"])
def test_cost_flops_equal_flop_counter(kind, seed):
    layer = _randomize(layer_for_kind(SHAPE, kind)).float()
    impl = variants.IMPLEMENTATIONS.get("eager")
    for phase, q_len, cached in STEPS:  # windows closing and not, the ring wrapped and not
        cache = layer.new_cache(B, 20)
        cache.fill_random_(cached)
        step = layer.prepare(phase, torch.randn(B, q_len, SHAPE.hidden), cache)
        cost = impl.cost(layer, batch=B, q_len=q_len, cached=cached, new_kv=q_len)
        assert count_flops(step) == cost.flops, f"{kind} {phase} L={q_len} after {cached}"
        assert (cost.indexer_flops > 0) == (kind == "C") and cost.indexer_bytes <= cost.bytes_min


def test_csa_decode_attention_flops_do_not_grow_with_the_context():
    layer = variants.build("csa", SHAPE)
    impl = variants.IMPLEMENTATIONS.get("eager")
    counted, costs = [], []
    for context in (40, 80):  # both past index_topk * csa_rate = 6 tokens, both closing no window
        cache = layer.new_cache(1, context + 1)
        cache.fill_random_(context)
        counted.append(count_flops(layer.prepare("decode", torch.randn(1, 1, SHAPE.hidden), cache)))
        costs.append(impl.cost(layer, batch=1, q_len=1, cached=context, new_kv=1))
    assert counted == [c.flops for c in costs]
    attention = [c.flops - c.indexer_flops for c in costs]
    assert attention[0] == attention[1]
    assert costs[1].indexer_flops > costs[0].indexer_flops  # the scan is linear in the context
    assert costs[1].indexer_bytes > costs[0].indexer_bytes
    assert costs[0].bytes_min - costs[0].indexer_bytes == costs[1].bytes_min - costs[1].indexer_bytes


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_cache_bytes_equal_the_layouts_function(setting):
    layer = _layer(setting, torch.bfloat16)
    for max_len in (3, 8, 21):  # shorter than a window, a ring, past both
        cache = layer.new_cache(B, max_len)
        layout = cache.layout
        assert cache.nbytes() == layout.nbytes(batch=B, context=max_len, dtype=torch.bfloat16) \
            == B * layout.bytes_at(max_len, torch.bfloat16)
    c = layer.config
    H, I, m = c.head_dim, c.index_head_dim, c.rate
    state = (3 * m * 2 * (H + I)) if c.kind == "C" else 2 * m * H
    entries = (H + I) if c.kind == "C" else H
    assert layout.bytes_at(1000, torch.bfloat16) == 2 * (8 * H + state + (1000 // m) * entries)
    assert layout.bytes_per_token(torch.bfloat16) == 2 * entries // m


def test_fill_random_fills_every_field_in_place():
    layer = variants.build("csa", SHAPE)
    cache = layer.new_cache(B, 20)
    pointers = {name: buf.data_ptr() for name, buf in cache.buffers.items()}
    cache.fill_random_(13)
    for name, buf in cache.buffers.items():
        rows = cache.layout.rows(next(f for f in cache.layout.fields if f.name == name), 13)
        assert buf.data_ptr() == pointers[name] and buf[:, :rows].abs().amin(dim=0).gt(0).any(), name
    assert cache.length == 13


V4_FLASH = ModelShape(hidden=4096, heads=64, head_dim=512, d_r=64, q_rank=1024, sliding_window=128, csa_rate=4,
                      hca_rate=128, index_heads=64, index_head_dim=128, index_topk=512, o_groups=8, o_rank=1024,
                      attn_sinks=True, rope_layout="interleaved", compress_rope_theta=160000.0, num_layers=43,
                      layer_pattern="HH" + "HC" * 20 + "H", name="deepseek_v4_flash")


def test_v4_flash_kv_per_token_and_the_whole_model():
    bf16 = torch.bfloat16
    assert V4_FLASH.layer_kinds().count("C") == 20 and V4_FLASH.layer_kinds().count("H") == 23
    csa, hca = (cache_layout_of(variants.build(v, V4_FLASH, device="meta").config) for v in ("csa", "hca"))
    assert (csa.elements_per_token, hca.elements_per_token) == (160, 4)
    assert (csa.bytes_per_token(bf16), hca.bytes_per_token(bf16)) == (320, 8)
    assert model_kv_bytes_per_token(V4_FLASH, dtype=bf16) == 20 * 320 + 23 * 8 == 6584
    fixed = 20 * csa.bytes_at(0, bf16) + 23 * hca.bytes_at(0, bf16)
    assert fixed == 0  # nothing before the first token; the window and state fill as tokens arrive
    full = 20 * (128 * 512 + 6 * 4 * (512 + 128)) + 23 * (128 * 512 + 2 * 128 * 512)  # windows and state
    context = 1 << 17
    assert model_kv_bytes(V4_FLASH, context=context, dtype=bf16) == 2 * full + context * 6584

    from attnbench.harness.report.analysis.costmodel import model_cost

    cost = model_cost("csa", V4_FLASH, "bfloat16")
    assert cost.kv_bytes_per_token_model == 6584 and cost.ring_layers == 0
    window_only = model_cost("hca", V4_FLASH.replace(layer_pattern="SH", num_layers=4), "bfloat16")
    assert window_only.ring_layers == 2 and window_only.kv_bytes_per_token_model == 2 * 8  # S layers stop growing
    assert cost.kv_bytes_model_at(context) == model_kv_bytes(V4_FLASH, context=context, dtype=bf16)
    with torch.device("meta"):
        per_kind = {k: sum(p.numel() for p in layer_for_kind(V4_FLASH, k).parameters()) for k in "CH"}
    assert cost.weight_bytes_model == 2 * (20 * per_kind["C"] + 23 * per_kind["H"])


# -- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("variant", "changes", "needle"), [
    ("csa", {"sliding_window": 6, "csa_rate": 4}, r"^csa_rate=4 does not divide the window sliding_window=6; "
                                                  r"valid csa_rate: 1, 2, 3, 6$"),
    ("hca", {"hca_rate": 16}, r"^hca_rate=16 does not divide the window sliding_window=8; valid hca_rate: 1, 2, 4, 8$"),
    ("csa", {"index_topk": 0}, r"^index_topk=0 is not allowed: index_topk must be a positive integer$"),
    ("csa", {"o_groups": 3}, r"^o_groups=3 does not divide heads=4; valid o_groups: 1, 2, 4$"),
    ("hca", {"q_rank": None}, r"^variant=hca needs q_rank, o_groups, o_rank, sliding_window in the model shape; "
                              r"test has no q_rank \(a DeepSeek-V4 preset sets them\)$"),
    ("csa", {"d_r": 7}, r"^d_r=7 is not allowed: RoPE rotates pairs of a head's trailing dims"),
    ("hca", {"d_r": 40}, r"^d_r=40 is not allowed: .* at most head_dim=32$"),
    ("csa", {"d_r": 24}, r"^d_r=24 is not allowed: the indexer .* at most index_head_dim=16$"),
])
def test_bad_inputs_fail_at_construction_in_one_line(variant, changes, needle):
    with pytest.raises(ValueError, match=needle):
        variants.build(variant, SHAPE.replace(**changes))


def test_cross_attention_and_unsupported_caches_and_kernels_are_refused():
    with pytest.raises(ValueError, match=r"^attention='cross' is not allowed for DeepSeek-V4 attention"):
        variants.build("csa", SHAPE, attention="cross")
    with pytest.raises(ValueError, match="^layer kind 'F' has no DeepSeek-V4 layer"):
        model_kv_bytes(SHAPE.replace(layer_pattern="CF", num_layers=2), context=8, dtype=torch.float32)
    layer = variants.build("csa", SHAPE)
    with pytest.raises(ValueError, match=r"^page_size=4: a ring \(sliding-window\) or compressed cache is not paged"):
        layer.new_cache(B, 16, page_size=4)
    # The runner sizes the cache before building it: the same refusal there (a skipped row), not an assert.
    with pytest.raises(ValueError, match=r"^page_size=64: a ring \(sliding-window\) or compressed cache is not paged"):
        layer.cache_layout("standard").nbytes(batch=B, context=128, dtype=torch.float32, page_size=64)
    cache = layer.new_cache(B, 16)
    cache.set_seq_lens([3, 5])
    with pytest.raises(ValueError, match=r"^seq_lens=\[3, 5\]: csa decodes uniform batches only"):
        layer.decode(torch.randn(B, 1, SHAPE.hidden), cache)
    cpu = torch.device("cpu")
    reasons = {name: variants.IMPLEMENTATIONS.get(name).supports(layer, phase="decode", device=cpu,
                                                                 dtype=torch.float32) for name in ("sdpa", "flex")}
    assert reasons["sdpa"].startswith("learned sinks need a kernel that applies them; the sdpa kernel does not")
    assert reasons["flex"].startswith("csa masks each query's compressed entries in the step")
    with pytest.raises(ValueError, match="^learned sinks need a kernel"):
        layer.new_cache(B, 16, impl="sdpa")


def test_without_sinks_sdpa_runs_and_matches_eager(seed):
    layer = _randomize(variants.build("hca", SHAPE.replace(attn_sinks=False)))
    x_BTD = torch.randn(B, 12, SHAPE.hidden)
    outs = {}
    for impl in ("eager", "sdpa"):
        cache = layer.new_cache(B, 12, impl=impl)
        outs[impl] = torch.cat([layer.prefill(x_BTD[:, :9], cache, impl=impl)]
                               + [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(9, 12)], dim=1)
    assert rel_err(outs["sdpa"], outs["eager"]) < 1e-5
