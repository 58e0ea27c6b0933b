"""The fp8 KV cache axis (kv_dtype=fp8_e4m3): round-off within the format's bound, real bytes, every
family's steps, paged and ragged caches, the numerics gate's tolerance, and refusals."""

from __future__ import annotations

import pytest
import torch

from attnbench import variants
from attnbench.harness.measure import numerics
from attnbench.harness.measure.case import Case
from tests.reference import rel_err
from tests.shapes import COMPILING, TINY
from attnbench.variants import quant
from attnbench.variants.cache import CacheField, CacheLayout, KVCache
from attnbench.variants.presets import load_preset
from attnbench.variants.registry import IMPLEMENTATIONS

FP8 = "fp8_e4m3"


@pytest.mark.parametrize("tile", [128, 32, 8])
def test_round_trip_error_is_within_the_formats_bound(tile: int) -> None:
    g = torch.Generator().manual_seed(0)
    # Tiles of very different magnitudes, a zero tile and values near the subnormal range.
    x_RX = torch.randn(64, 4 * tile, generator=g, dtype=torch.float64)
    x_RX *= torch.logspace(-6, 6, 64, dtype=torch.float64).unsqueeze(1)
    x_RX[3] = 0
    x_RX[5, :tile] = 1e-30
    values_RX, scale_RG = quant.quantize(x_RX, tile)
    assert values_RX.dtype == torch.float8_e4m3fn and scale_RG.shape == (64, 4)
    back_RX = quant.dequantize(values_RX, scale_RG, torch.float64)
    bound_RX = quant.round_trip_bound(x_RX, tile)
    # float32 arithmetic in the scaling adds a few units of 2^-24 on top of e4m3's own round-off.
    assert ((back_RX - x_RX).abs() <= bound_RX * (1 + 1e-5) + 1e-300).all()
    assert (back_RX[3] == 0).all()
    # Not vacuous: e4m3 does round (most values move), and by about its 3 mantissa bits.
    moved = (back_RX - x_RX).abs() / x_RX.abs().clamp_min(1e-300)
    assert 0.01 < moved[x_RX.abs() > 0].mean() < 2 ** -4


def test_bytes_per_token_are_the_real_bytes() -> None:
    v3 = load_preset("deepseek_v3")
    bf16 = torch.bfloat16
    mla = variants.build("mla", v3, device="meta")
    mla8 = variants.build("mla", v3.replace(kv_dtype=FP8), device="meta")
    assert mla.kv_bytes_per_token(dtype=bf16) == 1152  # (512 + 64) x 2
    # FlashMLA's layout: 512 e4m3 + 4 float32 scales + the 64-wide rotary key in bf16.
    assert mla8.kv_bytes_per_token(dtype=bf16) == 512 + 4 * 4 + 64 * 2 == 656
    llama = load_preset("llama3_8b").replace(kv_dtype=FP8)
    gqa8 = variants.build("gqa", llama, device="meta")
    assert gqa8.kv_bytes_per_token(dtype=bf16) == 2 * 8 * (128 + 4)  # K and V: 8 heads, a scale per head
    cache = KVCache(mla8.cache_layout("standard"), batch=2, max_len=16, dtype=bf16, device="meta")
    assert cache.nbytes() == mla8.cache_layout("standard").nbytes(batch=2, context=16, dtype=bf16) == 2 * 16 * 656


def _layers(variant: str, **changes: object) -> tuple[variants.AttentionLayer, variants.AttentionLayer]:
    shape = TINY.replace(**changes)
    full = variants.build(variant, shape, seed=0)
    fp8 = variants.build(variant, shape.replace(kv_dtype=FP8), seed=0)
    return full, fp8


def _run(layer: variants.AttentionLayer, impl: str, x_BTD: torch.Tensor, *, page_size: int | None = None,
         prefix: int = 9) -> torch.Tensor:
    cache = layer.new_cache(x_BTD.shape[0], max(16, x_BTD.shape[1]), impl=impl, page_size=page_size)
    ys = [layer.prefill(x_BTD[:, :prefix], cache, impl=impl)]
    ys += [layer.decode(x_BTD[:, t:t + 1], cache, impl=impl) for t in range(prefix, x_BTD.shape[1])]
    return torch.cat(ys, dim=1)


CASES = [(v, i.name) for v in ("mha", "mqa", "gqa", "mla") for i in IMPLEMENTATIONS
         if i.name not in COMPILING and i.supports(variants.build(v, TINY.replace(kv_dtype=FP8), device="meta"),
                                                   phase="decode", device=torch.device("cpu"),
                                                   dtype=torch.float32) is None]


@pytest.mark.parametrize(("variant", "impl"), CASES)
def test_an_fp8_cache_is_close_to_the_full_precision_one(variant: str, impl: str) -> None:
    full, fp8 = _layers(variant)
    x_BTD = torch.randn(2, 14, TINY.hidden, generator=torch.Generator().manual_seed(1))
    expected, actual = _run(full, impl, x_BTD), _run(fp8, impl, x_BTD)
    err = rel_err(actual, expected)
    # Quantized (not the same numbers), and within the gate's fp8 tolerance.
    assert 1e-3 < err <= numerics.FP8_KV_TOLERANCE, err


@pytest.mark.parametrize(("variant", "impl"), [("gqa", "eager"), ("mla", "absorbed"), ("mla", "eager")])
def test_a_paged_fp8_cache_equals_the_contiguous_fp8_one(variant: str, impl: str) -> None:
    _, fp8 = _layers(variant)
    x_BTD = torch.randn(3, 13, TINY.hidden, generator=torch.Generator().manual_seed(2))
    assert rel_err(_run(fp8, impl, x_BTD, page_size=4), _run(fp8, impl, x_BTD)) <= 1e-6


def test_a_ring_cache_in_fp8_runs_past_the_window() -> None:
    full, fp8 = _layers("swa", sliding_window=4, attn_sinks=True)
    with torch.no_grad():
        for layer in (full, fp8):
            layer.sinks.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    x_BTD = torch.randn(2, 14, TINY.hidden, generator=torch.Generator().manual_seed(3))
    err = rel_err(_run(fp8, "eager", x_BTD, prefix=6), _run(full, "eager", x_BTD, prefix=6))
    assert 1e-3 < err <= numerics.FP8_KV_TOLERANCE, err


def test_the_fill_writes_finite_values_in_place() -> None:
    layout = CacheLayout((CacheField("c_kv", (32,)), CacheField("k_rope", (8,), quantize=False)),
                         packed=True).stored_as(FP8)
    cache = KVCache(layout, batch=2, max_len=20, dtype=torch.float32, device="cpu")
    before = {name: buf.data_ptr() for name, buf in cache.buffers.items()}
    cache.fill_random_(12, seed=0)
    assert {name: buf.data_ptr() for name, buf in cache.buffers.items()} == before
    c_kv = cache.read("c_kv", 12)
    assert torch.isfinite(c_kv).all() and c_kv.abs().max() <= 1 and c_kv.std() > 0.1
    assert not layout.packed and cache.fields["c_kv"].dtype == torch.float8_e4m3fn
    assert cache.fields["k_rope"].dtype == torch.float32


def test_a_kernel_that_reads_packed_rows_refuses_an_fp8_cache() -> None:
    _, fp8 = _layers("mla")
    with pytest.raises(ValueError, match=r"^kv_dtype=fp8_e4m3: the sdpa_packed|^kv_dtype=fp8_e4m3: the .* kernel"):
        fp8.new_cache(1, 8, impl="absorbed_sdpa")
    reason = IMPLEMENTATIONS.get("absorbed_sdpa").supports(fp8, phase="decode", device=torch.device("cpu"),
                                                           dtype=torch.float32)
    assert reason is not None and "absorbed" in reason and "\n" not in reason


def test_bad_kv_dtype_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"^kv_dtype='fp4' is not one of: auto, fp8_e4m3, fp8_model1$"):
        TINY.replace(kv_dtype="fp4")


def _case(kv_dtype: str, impl: str = "absorbed") -> Case:
    return Case(variant="mla", impl=impl, compile=None, phase="decode", model="test",
                shape=TINY.replace(kv_dtype=kv_dtype), batch=1, seq=20, decode_len=1, dtype="float32",
                device="cpu", attention="self", timing="cpu_wall", l2_flush=False)


def test_the_gate_holds_an_fp8_cache_to_the_fp8_tolerance_against_a_full_precision_reference() -> None:
    err8, tol8 = numerics.check(_case(FP8))
    err, tol = numerics.check(_case("auto"))
    assert tol == numerics.TOLERANCE["float32"] and err <= tol
    assert tol8 == numerics.TOLERANCE["float32"] + numerics.FP8_KV_TOLERANCE
    # The reference kept full precision: the fp8 case's error is the quantization's, far above fp32's.
    assert 10 * tol < err8 <= tol8


def test_kv_dtype_enters_the_case_id_only_when_it_is_fp8() -> None:
    uses = variants.VARIANTS.get("mla").uses
    assert "kv_dtype" in uses
    auto, fp8 = _case("auto"), _case(FP8)
    assert "kv_dtype" not in auto.identity(uses) and fp8.identity(uses)["kv_dtype"] == FP8
    assert auto.case_id(uses) != fp8.case_id(uses)


@pytest.mark.parametrize("variant", ["csa", "hca"])
def test_deepseek_v4_caches_its_window_and_entries_in_fp8_and_reads_only_the_picks(variant: str) -> None:
    from tests.test_dsv4 import SHAPE as V4

    full = variants.build(variant, V4, seed=0)
    fp8 = variants.build(variant, V4.replace(kv_dtype=FP8), seed=0)
    layout = fp8.cache_layout("standard")
    stored = {f.name: f.storage for f in layout.fields}
    assert stored["window"] == stored["entries"] == FP8 and stored.get("index_entries", FP8) == FP8
    assert all(stored[name] == "auto" for name in stored if "state" in name)  # the pooling's working state
    x_BTD = torch.randn(2, 30, V4.hidden, generator=torch.Generator().manual_seed(4))
    err = rel_err(_run(fp8, "eager", x_BTD, prefix=20), _run(full, "eager", x_BTD, prefix=20))
    assert 1e-3 < err <= numerics.FP8_KV_TOLERANCE, err
    cache = fp8.new_cache(2, 64)
    assert cache.nbytes() == layout.nbytes(batch=2, context=64, dtype=torch.float32)
    # The cost model counts the stored bytes: fewer than the same cache in the compute dtype.
    costs = [layer.cost(path="standard", batch=1, q_len=1, cached=40, new_kv=1) for layer in (full, fp8)]
    assert costs[1].cache_read_bytes < costs[0].cache_read_bytes


def test_a_sparse_read_gathers_and_dequantizes_only_the_picked_rows() -> None:
    layout = CacheLayout((CacheField("entries", (32,)),)).stored_as(FP8)
    for page_size in (None, 4):
        cache = KVCache(layout, batch=2, max_len=16, dtype=torch.float64, device="cpu", page_size=page_size)
        x_BSC = torch.randn(2, 16, 32, dtype=torch.float64)
        cache.write(0, entries=x_BSC)
        picks_BK = torch.tensor([[3, 0, 15], [7, 7, 1]])
        expected = torch.stack([cache.read("entries", 16)[b, picks_BK[b]] for b in range(2)])
        assert torch.equal(cache.gather("entries", picks_BK), expected)
