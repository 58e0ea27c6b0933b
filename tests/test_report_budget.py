"""Decode throughput at a memory budget (harness/report/analysis/budget.py, its table and figure, and
conf/experiment/throughput_budget.yaml): the batch that fits against a hand computation, the
latency measured or interpolated (never extrapolated), tokens/s from the fixture's own latencies,
and an experiment whose batch ladder brackets the batches of its stated GPU budget."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from attnbench.harness import results
from attnbench.harness.report import figures
from attnbench.harness.report.analysis.baseline import Baseline, with_ratios
from attnbench.harness.report.analysis.budget import Ladder, ratios, throughput_table
from attnbench.harness.report.analysis.capacity import largest_batch
from attnbench.harness.report.analysis.costmodel import model_cost, shape_of
from attnbench.harness.report.data import prepare
from attnbench.harness.report.figures import FigureInput
from attnbench.harness.report.figures.legend import legend_inside
from attnbench.harness.report.tables.views import throughput_view
from attnbench.variants.presets import load_preset

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "report_sweep"
MiB, GiB = 2**20, 2**30
# tiny (conf/model/tiny.yaml), float32: one layer's KV bytes per token and attention weights (test_report_parts).
TINY = {"mha": (512, 4 * 64 * 64 * 4), "gqa": (256, (2 * 64 * 64 + 2 * 64 * 32) * 4)}


@pytest.fixture(scope="module")
def ok() -> pd.DataFrame:
    measured, _ = with_ratios(prepare(results.load(FIXTURE)).ok, Baseline())
    return measured


def test_largest_batch_matches_a_hand_computation(ok):
    shape = shape_of(ok.iloc[0])
    for variant, (kv, weights) in TINY.items():
        cost = model_cost(variant, shape, "float32")
        for budget in (1 * MiB, 3 * MiB, 80 * GiB):
            tokens = 129  # 128 cached and the step's new one
            # largest B with 2 layers x (weights + B x tokens x kv) <= 90% of the budget
            expected = math.floor((0.9 * budget - 2 * weights) / (2 * tokens * kv))
            assert largest_batch(cost, tokens=tokens, budget_bytes=budget, reserve=0.1) == expected, (variant, budget)
    assert largest_batch(model_cost("mha", shape, "float32"), tokens=129, budget_bytes=2 * 65536) == 0  # weights alone
    with pytest.raises(ValueError, match="reserve=1"):
        largest_batch(model_cost("mha", shape, "float32"), tokens=1, budget_bytes=GiB, reserve=1)


def test_a_ladder_interpolates_linearly_in_batch_and_never_extrapolates():
    ladder = Ladder("sdpa", "none", np.array([4, 8, 16]), np.array([10.0, 14.0, 30.0]))
    assert ladder.latency_at(8) == (14.0, "measured", 8, 8)
    assert ladder.latency_at(12) == (22.0, "interpolated", 8, 16)
    assert ladder.latency_at(5) == (11.0, "interpolated", 4, 8)
    assert ladder.latency_at(3) is None and ladder.latency_at(17) is None


def _table(ok: pd.DataFrame, budget: int) -> pd.DataFrame:
    table, _ = throughput_table(ok, budget_bytes=budget, reserve=0.1, baseline_variant="mha")
    return table.set_index("variant")


def test_tokens_per_s_come_from_the_fixtures_own_latency(ok):
    table = _table(ok, 2 * MiB)
    assert set(table.index) == {"mha", "gqa", "mqa", "mla"}
    decode = ok[(ok["phase"] == "decode") & (ok["seq"] == 128)]
    for variant, row in table.iterrows():
        assert pd.notna(row["tokens_per_s"]), (variant, row["reason"])
        mine = decode[(decode["variant"] == variant) & (decode["impl"] == row["impl"])].set_index("batch")
        if row["latency_from"] == "measured":
            assert row["batch"] in mine.index and row["latency_ms"] == mine.loc[row["batch"], "latency_ms"]
        else:
            lo, hi = row["batch_low"], row["batch_high"]
            assert lo < row["batch"] < hi and {lo, hi} <= set(mine.index)
            t0, t1 = mine.loc[lo, "latency_ms"], mine.loc[hi, "latency_ms"]
            assert math.isclose(row["latency_ms"], t0 + (t1 - t0) * (row["batch"] - lo) / (hi - lo))
        # tokens/s = batch x new tokens per step / (one layer's latency x num_layers)
        assert math.isclose(row["tokens_per_s"], row["batch"] * 1 / (row["latency_ms"] / 1e3 * 2))
        # the fastest of the implementations that reach the batch (expanded's cache is not MLA's: never)
        assert row["impl"] != "expanded"
    assert math.isclose(table.loc["mla", "vs_baseline"], table.loc["mla", "tokens_per_s"] / table.loc["mha",
                                                                                                          "tokens_per_s"])


def test_a_batch_beyond_the_measured_ladder_says_which_to_add(ok):
    table = _table(ok, 80 * GiB)
    for _, row in table.iterrows():
        assert pd.isna(row["tokens_per_s"]) and "above the largest measured" in row["reason"]
        assert f"add batch={row['batch']}" in row["reason"]
    shown = throughput_view(table.reset_index()).shown
    assert "tokens/s" not in shown.columns  # empty in every row: dropped
    assert shown["latency"].str.contains("add batch=").all()


def test_ratios_pair_each_variant_with_those_before_it():
    rows = pd.DataFrame({"variant": ["mha", "gqa", "mla"], "tokens_per_s": [1.0, 2.0, 5.0]})
    assert ratios(rows) == [("mla", "mha", 5.0), ("mla", "gqa", 2.5), ("gqa", "mha", 2.0)]


def test_the_figure_marks_each_variant_at_the_budget(ok):
    data = FigureInput(ok=ok, capacity=pd.DataFrame(), budget_bytes=2 * MiB, reserve=0.1)
    for width in ("single", "double"):
        drawn = figures.draw("throughput_budget", data, width=width)
        assert drawn.figure is not None and legend_inside(drawn.figure, margin=0.0)
        ax = drawn.figure.axes[0]
        stars = [c for c in ax.collections if len(c.get_offsets())]
        assert len(stars) == 1 and len(stars[0].get_offsets()) == 4  # one star per variant, at the budget
        assert np.allclose(stars[0].get_offsets()[:, 0], 2 * MiB)
        assert ax.get_xscale() == "log" and "memory budget" in ax.get_xlabel()
        labels = {t.get_text() for t in drawn.figure.legends[0].get_texts()}
        assert {"budget", "tokens/s at the budget"} <= labels and any(t.startswith("mla/mha ") for t in labels)
        assert "tokens/s = batch x new tokens per step / (one layer's step latency x 2 layers)" in drawn.caption


def test_the_experiments_ladder_brackets_its_gpu_budget():
    """conf/experiment/throughput_budget.yaml at 80 GB in bf16 (its stated GPU run): every variant's batch
    lies inside the batch ladder, so the report interpolates, never needs to extrapolate."""
    conf = yaml.safe_load((ROOT / "conf" / "experiment" / "throughput_budget.yaml").read_text())
    params = conf["hydra"]["sweeper"]["params"]
    ladder = [int(b) for b in str(params["batch"]).split(",")]
    assert params["variant"].split(",") == ["mha", "gqa", "mla"]
    assert conf["defaults"] == [{"override /model": "deepseek_v2_lite"}] and conf["phase"] == "decode"
    shape = load_preset("deepseek_v2_lite")
    tokens = 4096 + 1  # seq: 4k, one new token
    assert conf["seq"] == "4k"
    for variant in ("mha", "gqa", "mla"):
        batch = largest_batch(model_cost(variant, shape, "bfloat16"), tokens=tokens, budget_bytes=80 * 10**9)
        assert ladder[0] < batch < ladder[-1], (variant, batch)
    assert "expanded" not in params["impl"]  # its cache is not MLA's own: not what the budget sizes


def test_cpu_rows_get_no_budget_from_host_ram_only_a_note_naming_the_option(ok):
    from attnbench.harness.report.analysis.capacity import capacity_table

    assert ok["device_mem_total_bytes"].notna().any() and ok["device"].astype(str).str.startswith("cpu").all()
    table, notes = throughput_table(ok, budget_bytes=None, reserve=0.1, baseline_variant="mha")
    assert table.empty and notes and all("--budget" in n for n in notes if "budget" in n), notes
    capacity, notes = capacity_table(ok, ok, budget_bytes=None)
    assert capacity.empty and any("--budget" in n and "CPU" in n for n in notes), notes
    gpu = ok.assign(device="cuda:0")  # the same rows on a GPU: its memory is the budget
    assert not throughput_table(gpu, budget_bytes=None, reserve=0.1, baseline_variant="mha")[0].empty


def test_a_hybrids_step_sums_its_schedules_layer_kinds():
    """tiny_hybrid (LLLF): gdn's model step is 3 gdn steps and 1 gqa step, each kind's fastest implementation."""
    rows, _ = with_ratios(prepare(results.load(ROOT / "tests" / "fixtures" / "state_sweep")).ok, Baseline())
    # A gqa row first: each variant is sized from its own rows' shape.
    rows = rows[rows["seq"] == 1024].sort_values("variant", ascending=False)
    ladder = pd.concat([rows.assign(batch=b, latency_ms=rows["latency_ms"] * (1 + b / 8)) for b in (1, 2, 4)])
    gdn_shape = shape_of(rows[rows["variant"] == "gdn"].iloc[0])
    budget = int(model_cost("gdn", gdn_shape, "float32").model_bytes(batch=4, tokens=1025) / 0.9) + 1
    table = _table(ladder, budget)
    gdn = table.loc["gdn"]
    assert gdn["batch"] == 4
    assert gdn["impl"] == "schedule (3 gdn + 1 gqa)" and gdn["latency_from"] == "measured", gdn["reason"]
    at = ladder[ladder["batch"] == gdn["batch"]].groupby("variant")["latency_ms"].min()
    assert math.isclose(gdn["latency_ms"], (3 * at["gdn"] + at["gqa"]) / 4)
    assert math.isclose(gdn["tokens_per_s"], gdn["batch"] / (gdn["latency_ms"] / 1e3 * 4))
    assert not str(table.loc["gqa", "impl"]).startswith("schedule")  # gqa alone: four full layers, its own step
    _, notes = throughput_table(ladder[ladder["variant"] == "gdn"], budget_bytes=budget, reserve=0.1,
                                baseline_variant="gdn")
    assert any("measure gqa in the same setting" in n for n in notes)
