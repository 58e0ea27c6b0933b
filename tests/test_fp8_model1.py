"""kv_dtype=fp8_model1, DeepSeek-V4's cache as FlashMLA stores it: the byte layout built independently
from FlashMLA's description, power-of-two scales, round-off within the format's bound, the bytes the
cache, the layout and the cost model count, csa/hca steps and the numerics gate, and refusals."""

from __future__ import annotations

import math

import pytest
import torch

from attnbench import variants
from attnbench.harness.measure import numerics
from attnbench.harness.measure.case import Case
from attnbench.harness.report.analysis.costmodel import model_cost
from tests.reference import rel_err
from tests.test_dsv4 import SHAPE, _randomize
from attnbench.variants import fp8_model1
from attnbench.variants.cache import KVCache
from attnbench.variants.families.dsv4 import model_kv_bytes_per_token
from attnbench.variants.fp8_model1 import Model1Format
from attnbench.variants.presets import load_preset
from attnbench.variants.registry import IMPLEMENTATIONS

M1 = "fp8_model1"
V4 = Model1Format(512, 64)  # a V4-Flash entry: 448 nope dims, 64 rotary


def test_a_v4_entry_is_584_bytes_and_a_block_is_padded_to_576() -> None:
    assert (V4.nope, V4.tile, V4.tiles) == (448, 64, 7)
    assert V4.value_bytes == 448 + 64 * 2 == 576 and V4.scale_bytes == 7 + 1
    assert V4.entry_bytes == 584
    assert V4.block_bytes == 37440 == 65 * 576 > 64 * 584  # 64 entries: 37,376 bytes, padded
    assert Model1Format(512, 64, block=256).block_bytes == 260 * 576 >= 256 * 584
    assert V4.nbytes(1) == V4.nbytes(64) == 37440 and V4.nbytes(65) == 2 * 37440


def _expected_block(x_PX: torch.Tensor, fmt: Model1Format) -> torch.Tensor:
    """One block's bytes assembled entry by entry from FlashMLA's description (not from the module's
    views): entry i's 448 e4m3 then 64 bf16 at byte i·576, its 7 ue8m0 exponents (byte = exponent + 127)
    and a zero at P·576 + i·8, zeros to the padded end."""
    P = x_PX.shape[0]
    out = torch.zeros(fmt.block_bytes, dtype=torch.uint8)
    for i in range(P):
        nope_GT = x_PX[i, :fmt.nope].double().view(fmt.tiles, fmt.tile)
        exps = [math.ceil(math.log2(max(a / 448.0, 1e-4))) for a in nope_GT.abs().amax(-1).tolist()]
        scaled = nope_GT / torch.tensor([2.0 ** e for e in exps], dtype=torch.float64).unsqueeze(1)
        values = scaled.float().to(torch.float8_e4m3fn).flatten().view(torch.uint8)
        rope = x_PX[i, fmt.nope:].to(torch.bfloat16).view(torch.uint8)
        out[i * fmt.value_bytes:(i + 1) * fmt.value_bytes] = torch.cat([values, rope])
        at = P * fmt.value_bytes + i * fmt.scale_bytes
        out[at:at + fmt.tiles] = torch.tensor([e + 127 for e in exps], dtype=torch.uint8)
    return out


@pytest.mark.parametrize("fmt", [Model1Format(512, 64, block=4), Model1Format(32, 8, block=3)],
                         ids=["v4", "tiny"])
def test_the_bytes_are_flashmlas_layout(fmt: Model1Format) -> None:
    g = torch.Generator().manual_seed(0)
    x_PX = torch.randn(fmt.block, fmt.width, generator=g) * torch.logspace(-3, 3, fmt.block).unsqueeze(1)
    x_PX[1, :fmt.tile] = 0  # a zero tile: the smallest scale, 2^-13
    block = fp8_model1.pack_blocks(x_PX.unsqueeze(0), fmt)[0]
    assert torch.equal(block, _expected_block(x_PX, fmt))
    assert block[1 * fmt.value_bytes:1 * fmt.value_bytes + fmt.tile].eq(0).all()
    assert block[fmt.block * fmt.value_bytes + fmt.scale_bytes] == 127 - 13


def test_scales_are_powers_of_two_that_use_the_upper_half_of_e4m3() -> None:
    g = torch.Generator().manual_seed(1)
    x_RX = torch.randn(256, 512, generator=g) * torch.logspace(-2, 4, 256).unsqueeze(1)
    _, scale_RG, _ = fp8_model1.quantize(x_RX, V4)
    assert scale_RG.dtype == torch.float8_e8m0fnu and scale_RG.shape == (256, 7)
    scale = scale_RG.double()
    assert torch.equal(scale, 2.0 ** scale.log2().round())
    amax_RG = x_RX[:, :448].double().view(256, 7, 64).abs().amax(-1)
    above_RG = amax_RG / 448 > 2.0 ** -13  # else FlashMLA's floor: amax / 448 clamped to 1e-4, scale 2^-13
    assert 0 < above_RG.sum() < above_RG.numel()
    ratio = (amax_RG / scale)[above_RG]
    assert ((ratio <= 448) & (ratio > 224)).all()
    assert (scale[~above_RG] == 2.0 ** -13).all()


def test_round_trip_is_within_the_formats_bound_and_rope_is_bf16() -> None:
    g = torch.Generator().manual_seed(2)
    x_RX = torch.randn(128, 512, generator=g, dtype=torch.float64) * torch.logspace(-3, 5, 128, dtype=torch.float64
                                                                                    ).unsqueeze(1)
    x_RX[7, :64] = 1e-9  # below the smallest scale's range: subnormal or flushed
    nope, scale, rope = fp8_model1.quantize(x_RX, V4)
    back_RX = fp8_model1.dequantize(nope, scale, rope, torch.float64)
    bound_RX = fp8_model1.round_trip_bound(x_RX, V4)
    # The input is rounded to float32 before scaling: a few units of 2^-24 on top of the format's bound.
    assert ((back_RX - x_RX).abs() <= bound_RX * (1 + 1e-6) + x_RX.abs() * 2 ** -23).all()
    assert torch.equal(back_RX[:, 448:], x_RX[:, 448:].to(torch.bfloat16).double())
    moved = ((back_RX - x_RX).abs() / x_RX.abs())[:, :448]
    assert 0.01 < moved.mean() < 2 ** -4  # e4m3 does round, by about its 3 mantissa bits


def test_v4_flash_bytes_per_token_count_the_584_byte_entries_and_the_padding() -> None:
    v4 = load_preset("deepseek_v4_flash").replace(kv_dtype=M1)
    bf16 = torch.bfloat16
    csa, hca = (variants.build(name, v4, device="meta") for name in ("csa", "hca"))
    for layer in (csa, hca):
        fields = {f.name: f for f in layer.cache_layout("standard").fields}
        assert fields["entries"].bytes_per_row(bf16) == fields["window"].bytes_per_row(bf16) == 584
    # A token adds 1/4 (CSA) or 1/128 (HCA) of a 585-byte share of a padded block; CSA's indexer keys
    # stay fp8_e4m3 as DeepSeek-V3.2 keeps them, 128 + 4 bytes per entry.
    assert csa.kv_bytes_per_token(dtype=bf16) == math.ceil(585 / 4 + 132 / 4) == 180
    assert hca.kv_bytes_per_token(dtype=bf16) == math.ceil(585 / 128) == 5
    assert model_kv_bytes_per_token(v4, dtype=bf16) == 20 * 180 + 23 * 5
    # The report's cost model (capacity, figures) asks the same layouts: the padded blocks count there too.
    model = model_cost("csa", v4, "bfloat16")
    assert model.kv_bytes_per_token_model == 20 * 180 + 23 * 5
    auto_model = model_cost("csa", v4.replace(kv_dtype="auto"), "bfloat16")
    assert model.kv_bytes_model_at(4096) < auto_model.kv_bytes_model_at(4096)
    layout = csa.cache_layout("standard")
    entries = 4096 // 4
    expected = (math.ceil(entries / 64) + math.ceil(128 / 64)) * 37440 + entries * 132 \
        + (8 + 4) * 2 * 512 * 2 + (8 + 4) * 2 * 128 * 2  # entries, window, index keys, the states
    assert layout.bytes_at(4096, bf16) == expected
    cache = KVCache(layout, batch=2, max_len=4096 + 3, dtype=bf16, device="meta")
    assert cache.nbytes() == layout.nbytes(batch=2, context=4096 + 3, dtype=bf16)
    cost = csa.cost(path="standard", batch=1, q_len=1, cached=4096, new_kv=1, dtype=bf16)
    auto = variants.build("csa", v4.replace(kv_dtype="auto"), device="meta").cost(
        path="standard", batch=1, q_len=1, cached=4096, new_kv=1, dtype=bf16)
    # The step reads 127 window rows and 512 picked entries at 584 bytes each instead of 1,024.
    assert auto.cache_read_bytes - cost.cache_read_bytes == (127 + 512) * (1024 - 584) + 1024 * (256 - 132)


@pytest.mark.parametrize("variant", ["csa", "hca"])
def test_steps_on_the_model1_cache_stay_near_full_precision(variant: str, seed: int) -> None:
    # The indexer keeps every entry: rounded indexer keys would pick other entries (the numerics gate
    # replays the picks; here the comparison is of the cache's round-off alone).
    shape = SHAPE.replace(index_topk=16)
    full = _randomize(variants.build(variant, shape, dtype=torch.float32, seed=seed))
    m1 = variants.build(variant, shape.replace(kv_dtype=M1), dtype=torch.float32, seed=seed)
    m1.load_state_dict(full.state_dict())
    x_BTD = torch.randn(2, 20, SHAPE.hidden)
    outs = []
    for layer in (full, m1):
        cache = layer.new_cache(2, 20)
        outs.append(torch.cat([layer.prefill(x_BTD[:, :13], cache)]
                              + [layer.decode(x_BTD[:, t:t + 1], cache) for t in range(13, 20)], dim=1))
    assert isinstance(cache.fields["entries"], torch.Tensor) and cache.fields["entries"].dtype == torch.uint8
    err = rel_err(outs[1], outs[0])
    assert 1e-3 < err < numerics.FP8_KV_TOLERANCES[M1], err


def test_gather_and_read_decode_the_same_rows_and_fill_random_fills_in_place() -> None:
    layout = variants.build("hca", SHAPE.replace(kv_dtype=M1), dtype=torch.float32).cache_layout("standard")
    cache = KVCache(layout, batch=2, max_len=64, dtype=torch.float32, device="cpu")
    before = {name: buf.data_ptr() for name, buf in cache.buffers.items()}
    cache.fill_random_(64, seed=0)
    assert {name: buf.data_ptr() for name, buf in cache.buffers.items()} == before
    entries_BSX = cache.read("entries", 8)
    assert entries_BSX.shape == (2, 8, 32) and entries_BSX.std() > 0.5
    picks_BK = torch.tensor([[7, 0, 3], [1, 1, 6]])
    want_BKX = entries_BSX.gather(1, picks_BK.unsqueeze(-1).expand(-1, -1, 32))
    assert torch.equal(cache.gather("entries", picks_BK), want_BKX)


def test_the_gate_holds_v4_fp8_model1_cases_to_the_fp8_tolerance() -> None:
    case = Case(variant="hca", impl="eager", compile=None, phase="decode", model="deepseek_v4_flash",
                shape=load_preset("deepseek_v4_flash").replace(kv_dtype=M1), batch=1, seq=20, decode_len=1,
                dtype="float32", device="cpu", attention="self", timing="cpu_wall", l2_flush=False)
    err, tol = numerics.check(case)
    assert tol == numerics.TOLERANCE["float32"] + numerics.FP8_KV_TOLERANCES[M1]
    assert 1e-3 < err <= tol, err


def test_other_families_refuse_fp8_model1_in_one_line() -> None:
    from tests.shapes import TINY
    layer = variants.build("gqa", TINY.replace(kv_dtype=M1))
    reason = IMPLEMENTATIONS.get("eager").supports(layer, phase="decode", device=torch.device("cpu"),
                                                  dtype=torch.float32)
    assert reason is not None and reason.startswith("kv_dtype=fp8_model1 is DeepSeek-V4's") and "\n" not in reason
    with pytest.raises(ValueError, match="^kv_dtype=fp8_model1 is DeepSeek-V4's cache layout"):
        layer.new_cache(1, 8)
