"""The report's parts on their own: capacity against a hand computation, the baseline join,
one row per case and device, filters, and the units readers see."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from attnbench.harness import results
from attnbench.harness.report.analysis.baseline import Baseline, with_ratios
from attnbench.harness.report.analysis.capacity import capacity_table, longest_context
from attnbench.harness.report.analysis.costmodel import model_cost, shape_of
from attnbench.harness.report.data import apply_filters, parse_filters, prepare
from attnbench.harness.text.units import human_bytes, number, parse_bytes, tokens

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report_sweep"
GiB = 2**30


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return results.load(FIXTURE)


def _tiny_by_hand() -> dict[str, tuple[int, int]]:
    """(KV bytes per token, attention weight bytes) of one layer at conf/model/tiny.yaml in float32:
    hidden 64, 4 heads of 16, GQA 2 kv heads, MLA d_c 32, d_r 8, q_rank 24."""
    f32, D, N, H, K, C, R, Q = 4, 64, 4, 16, 2, 32, 8, 24
    def gqa(k: int) -> tuple[int, int]:
        # DeepSeek-V2 Table 1: 2 * n_kv * d_h elements per token; q, o of D x NH and k, v of D x KH
        return 2 * k * H * f32, (2 * D * N * H + 2 * D * k * H) * f32
    mla_params = (D * Q + Q  # q down-projection and its RMSNorm
                  + Q * N * (H + R)  # q up-projection to nope + rope parts
                  + D * (C + R) + C  # joint kv down-projection and the latent's RMSNorm
                  + C * N * H * 2  # W_UK and W_UV
                  + N * H * D)  # W_O
    return {"mha": gqa(N), "gqa": gqa(K), "mqa": gqa(1), "mla": ((C + R) * f32, mla_params * f32)}


def test_cost_model_sizes_match_a_hand_computation(rows):
    shape = shape_of(rows.iloc[0])
    for variant, (kv, weights) in _tiny_by_hand().items():
        cost = model_cost(variant, shape, "float32")
        assert (cost.kv_bytes_per_token_layer, cost.weight_bytes_layer) == (kv, weights), variant
        assert cost.kv_bytes_per_token_model == 2 * kv  # tiny has 2 layers


def test_capacity_table_matches_a_hand_computation(rows):
    ok = rows[rows["status"] == "ok"]
    table, _ = capacity_table(rows, ok, budget_bytes=80 * GiB, batches=(1, 8))
    assert len(table) == 4 * 2
    for variant, (kv, weights) in _tiny_by_hand().items():
        for batch in (1, 8):
            # longest L with 2 layers x (weights + batch x L x kv) <= 90% of 80 GiB
            expected = math.floor((0.9 * 80 * GiB - 2 * weights) / (batch * 2 * kv))
            row = table[(table["variant"] == variant) & (table["batch"] == batch)].iloc[0]
            assert row["max_context_tokens"] == expected, (variant, batch)
            assert 2 * weights + batch * expected * 2 * kv <= 0.9 * 80 * GiB
            assert 2 * weights + batch * (expected + 1) * 2 * kv > 0.9 * 80 * GiB


def test_capacity_shows_the_leanest_measured_peak_at_the_longest_context(rows):
    rows = rows.assign(device="cuda:0")  # a GPU's memory is its budget (CPU rows have none unless given)
    ok = rows[rows["status"] == "ok"]
    table, notes = capacity_table(rows, ok, budget_bytes=None, batches=(1, 32))
    assert set(table["budget_bytes"]) == {int(ok["device_mem_total_bytes"].max())}
    assert any("each GPU's own memory" in n for n in notes)
    for variant in ("mha", "mla"):
        row = table[(table["variant"] == variant) & (table["batch"] == 1)].iloc[0]
        measured = ok[(ok["variant"] == variant) & (ok["batch"] == 1) & (ok["phase"] == "decode")]
        longest = measured[measured["seq"] == measured["seq"].max()]
        assert row["measured_seq"] == 256
        assert row["measured_peak_bytes"] == longest["peak_mem_bytes"].min()
        assert row["measured_impl"] == longest.loc[longest["peak_mem_bytes"].idxmin(), "impl"]
    unmeasured = table[table["batch"] == 32]
    assert unmeasured["measured_peak_bytes"].isna().all() and (unmeasured["max_context_tokens"] > 0).all()


def test_longest_context_edges():
    cost = model_cost("mha", shape_of({"hidden": 64, "heads": 4, "head_dim": 16, "kv_heads": 2, "d_c": 32,
                                       "d_r": 8, "q_rank": None, "nope_head_dim": None, "v_head_dim": None,
                                       "num_layers": 1}), "float32")
    assert longest_context(cost, batch=1, budget_bytes=cost.weight_bytes_model, reserve=0.0) == 0
    assert longest_context(cost, batch=1, budget_bytes=10, reserve=0.0) == 0
    with pytest.raises(ValueError, match="reserve=1.5 is not allowed"):
        longest_context(cost, batch=1, budget_bytes=GiB, reserve=1.5)


def test_baseline_join_stays_on_one_device(rows):
    ok = rows[rows["status"] == "ok"]
    gpu = ok.assign(env_device_name="GPU", latency_ms=ok["latency_ms"] / 4, case_id=ok["case_id"] + "g")
    gpu = gpu[~((gpu["variant"] == "mha") & (gpu["impl"] == "eager") & (gpu["seq"] == 64))]
    out, notes = with_ratios(pd.concat([ok, gpu], ignore_index=True), Baseline())
    cpu_part, gpu_part = out[out["env_device_name"] != "GPU"], out[out["env_device_name"] == "GPU"]
    assert cpu_part["speedup"].notna().all()
    # Same 4x on every GPU row, so GPU speed-ups equal the CPU ones where the GPU has a baseline...
    merged = gpu_part.assign(case_id=gpu_part["case_id"].str[:-1]).merge(cpu_part, on="case_id")
    with_base = merged["speedup_x"].notna()
    assert (merged.loc[with_base, "speedup_x"] - merged.loc[with_base, "speedup_y"]).abs().max() < 1e-9
    # ...and where it has none (seq 64, decode and prefill), the ratio is NaN, never the CPU's baseline.
    assert set(merged.loc[~with_base, "seq_x"]) == {64}
    assert any("no mha/eager row" in n for n in notes)


def test_baseline_can_be_chosen_and_is_checked(rows):
    ok = rows[rows["status"] == "ok"]
    out, _ = with_ratios(ok, Baseline.parse("variant=mla,impl=absorbed"))
    base = out[(out["variant"] == "mla") & (out["impl"] == "absorbed")]
    assert (base["speedup"] == 1.0).all()
    assert Baseline.parse("impl=sdpa") == Baseline("mha", "sdpa")
    with pytest.raises(ValueError, match="baseline part 'seq=4' is not one of"):
        Baseline.parse("seq=4")


def test_a_case_repeated_in_another_run_is_kept_once(rows):
    again = rows.assign(run_root="rerun", finished_at=rows["finished_at"] + pd.Timedelta(seconds=1000),
                        latency_ms=rows["latency_ms"] * 2)
    data = prepare(pd.concat([rows, again], ignore_index=True))
    assert len(data.ok) == (rows["status"] == "ok").sum()
    assert set(data.ok["run_root"]) == {"rerun"}  # the latest ok row wins
    assert any("repeat a case" in note for note in data.notes)


def test_filters(rows):
    assert parse_filters(["variant=mha,mla", "seq=64"]) == {"variant": ["mha", "mla"], "seq": ["64"]}
    picked = apply_filters(rows, {"variant": ["mha", "mla"], "seq": ["64"]})
    assert set(picked["variant"]) == {"mha", "mla"} and set(picked["seq"]) == {64}
    with pytest.raises(ValueError, match="filter 'variant' is not key=value"):
        parse_filters(["variant"])
    with pytest.raises(ValueError, match="filter key 'colour' is not a results column; valid: variant"):
        apply_filters(rows, {"colour": ["red"]})


def test_units():
    assert parse_bytes("--budget", "80GiB") == 80 * GiB
    assert parse_bytes("--budget", "1.5TB") == 1_500_000_000_000
    assert parse_bytes("--budget", "4096") == 4096
    for bad in ("80 XB", "-1GiB", "GiB", "0"):
        with pytest.raises(ValueError, match="--budget="):
            parse_bytes("--budget", bad)
    assert [number(v) for v in (0.0123456, 1.23456, 123.456, 12345.6, float("nan"), 2.5e-5)] == [
        "0.0123", "1.23", "123", "12,346", "", "2.50e-05"]
    assert [tokens(v) for v in (4096, 32768, 2**20, 1500)] == ["4k", "32k", "1M", "1,500"]
    assert human_bytes(80 * GiB) == "80 GiB" and human_bytes(1536) == "1.5 KiB"


def test_unknown_figure_or_width_is_refused_before_anything_is_written(tmp_path):
    from attnbench.harness.report import build_report

    with pytest.raises(ValueError, match="figure 'nope' is not one of: latency, kv_cache"):
        build_report(FIXTURE, tmp_path / "r", figures=("nope",))
    with pytest.raises(ValueError, match="width='wide' is not one of: single, double"):
        build_report(FIXTURE, tmp_path / "r", widths=("wide",))
    assert not (tmp_path / "r").exists()
