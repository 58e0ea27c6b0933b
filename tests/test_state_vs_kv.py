"""State against KV: whole-model cache of the seven models by schedule, the crossover, the figure."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from attnbench.harness.report import figures, flagged
from attnbench.harness.report.analysis.capacity import RESERVE
from attnbench.harness.report.figures import FigureInput
from attnbench.harness.report.analysis.state_kv import (available, crossover_tokens, layer_bytes, memory_table,
                                                        model_bytes, models)

BY_PRESET = {m.preset: m for m in models()}
QWEN, KIMI = BY_PRESET["qwen3_next_80b_a3b"], BY_PRESET["kimi_linear_48b_a3b"]
BF16 = torch.bfloat16


def test_every_model_is_available():
    assert [available(m) for m in models()] == [None] * 7


def test_a_linear_layers_state_equals_one_full_layers_kv_where_the_issue_says():
    assert crossover_tokens(QWEN) == 1024  # 2 MiB against 2 x 2 x 256 x 2 B per token
    assert crossover_tokens(KIMI) == pytest.approx(2 * 2**20 / 1152)  # ~1,820 against (512 + 64) x 2 B


def test_the_hybrids_sum_fixed_states_and_growing_kv():
    state = layer_bytes(QWEN, "L", 0, BF16)
    assert state == layer_bytes(QWEN, "L", 2**20, BF16) == 32 * 128 * 128 * 4 + (2 * 16 * 128 + 32 * 128) * 3 * 2
    for context in (4096, 2**20):
        assert model_bytes(QWEN, context) == 36 * state + 12 * context * 2 * 2 * 256 * 2
    kimi_state = layer_bytes(KIMI, "L", 0, BF16)
    assert kimi_state == 32 * 128 * 128 * 4 + 3 * 32 * 128 * 3 * 2
    assert model_bytes(KIMI, 4096) == 20 * kimi_state + 7 * 4096 * (512 + 64) * 2


def test_the_table_grows_as_each_schedule_says():
    table = dict(memory_table((4096, 2**20)))
    llama = table["Llama-3-70B (GQA)"]
    assert llama[1] == 256 * llama[0] == 80 * 2**20 * 2 * 8 * 128 * 2  # every layer grows
    qwen = table["Qwen3-Next-80B-A3B"]
    assert qwen[1] < 256 * qwen[0]  # the 36 states do not grow
    assert table["gpt-oss-120b (SWA)"][1] < 256 * table["gpt-oss-120b (SWA)"][0]  # nor do the 18 rings


def _rows() -> pd.DataFrame:
    rows = []
    for model, variant, impl, ms in (("tiny_hybrid", "gdn", "eager", (1.0, 1.0)),
                                     ("tiny_hybrid", "gqa", "sdpa", (0.5, 2.0)),
                                     ("llama3_70b", "gqa", "sdpa", (3.0, 30.0)),
                                     ("deepseek_v3", "mla", "absorbed", (2.0, 9.0)),
                                     ("tiny", "mha", "eager", (0.1, 0.2))):
        for seq, latency in zip((4096, 131072), ms, strict=True):
            rows.append(dict(model=model, variant=variant, impl=impl, compile="none", phase="decode", seq=seq, batch=1,
                             dtype="float32", device="cpu", latency_ms=latency, flags=""))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("width", ["single", "double"])
def test_the_figure_draws_hybrids_apart_from_the_other_models(width):
    data = FigureInput(ok=_rows(), capacity=pd.DataFrame(), budget_bytes=None, reserve=RESERVE)
    drawn = figures.draw("state_vs_kv", data, width=width)
    assert drawn.figure is not None, drawn.caption
    memory, crossover, hybrids, others = drawn.figure.axes
    assert len([line for line in memory.get_lines() if not line.get_label().startswith("_")]) == 7
    assert [line.get_label() for line in hybrids.get_lines()] == ["gdn (tiny_hybrid)", "gqa (tiny_hybrid)"]
    assert sorted(line.get_label() for line in others.get_lines()) == ["gqa (llama3_70b)", "mla (deepseek_v3)"]
    assert "1,024 tokens" in drawn.caption and "1,820 tokens" in drawn.caption


def test_a_flagged_step_is_drawn_hollow_and_listed():
    rows = _rows()
    noisy = (rows["variant"] == "gqa") & (rows["model"] == "tiny_hybrid") & (rows["seq"] == 131072)
    rows.loc[noisy, "flags"] = "noisy"
    data = FigureInput(ok=rows, capacity=pd.DataFrame(), budget_bytes=None, reserve=RESERVE)
    drawn = figures.draw("state_vs_kv", data, width="single")
    hybrids = drawn.figure.axes[2]
    hollow = [line for line in hybrids.get_lines() if line.get_gid() == flagged.FLAGGED_GID]
    assert [list(zip(*line.get_data(), strict=True)) for line in hollow] == [[(131072, 2.0)]]
    assert hollow[0].get_markerfacecolor() == "none"
    gqa = next(line for line in hybrids.get_lines() if line.get_label() == "gqa (tiny_hybrid)")
    assert gqa.get_markevery() == [0]  # the clean point keeps its filled marker, the flagged one does not
    assert "Flagged rows (hollow grey markers): gqa/sdpa" in drawn.caption


def test_the_figure_is_left_out_without_a_linear_layer():
    data = FigureInput(ok=_rows().query("variant != 'gdn'"), capacity=pd.DataFrame(), budget_bytes=None,
                       reserve=RESERVE)
    drawn = figures.draw("state_vs_kv", data, width="single")
    assert drawn.figure is None and "no decode rows of a linear layer" in drawn.caption
