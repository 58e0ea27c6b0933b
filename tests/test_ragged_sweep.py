"""Ragged decode batches and paged caches through the harness: planning, bad input, a run's rows,
the memory prediction and the capacity table, all from the cache layout's function."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnbench import variants
from attnbench.harness import results
from attnbench.harness.measure.predict import predict_memory
from attnbench.harness.report.analysis.capacity import MAX_CONTEXT, longest_context
from attnbench.harness.report.analysis.costmodel import model_cost
from attnbench.harness.sweep.plan import plan_cases
from attnbench.variants.cache import CacheLayout
from attnbench.variants.presets import load_preset
from attnbench.variants.registry import IMPLEMENTATIONS

ROOT = Path(__file__).resolve().parent.parent


def _cfg(**over):  # noqa: ANN003, ANN202
    cfg = {"model": {**load_preset("tiny").as_dict()}, "variant": {"name": "gqa"}, "impl": {"name": "eager"},
           "phase": "decode", "seq": "64", "batch": 4, "decode_len": 1, "dtype": "auto", "device": "cpu",
           "compile": "none", "attention": "self"}
    cfg.update(over)
    return cfg


@pytest.mark.parametrize(("seq_lens", "expected"), [
    (["1k", "4k", "32k", "32k"], (1024, 4096, 32768, 32768)),
    ("16,64", (16, 64, 16, 64)),  # fewer lengths than the batch repeat when they divide it
    ("spread", (16, 32, 48, 64)),  # seq·(b+1)/batch
])
def test_seq_lens_plan_a_ragged_batch(seq_lens, expected) -> None:  # noqa: ANN001
    case = plan_cases(_cfg(seq_lens=seq_lens, page_size=16))[0]
    assert case.seq_lens == expected and case.seq == max(expected) and case.page_size == 16
    assert case.capacities == [n + 1 for n in expected]
    assert "page_size=16" in case.label() and "seq_lens=" in case.label()


def test_a_uniform_contiguous_case_keeps_its_case_id() -> None:
    plain = plan_cases(_cfg())[0]
    assert "seq_lens" not in plain.identity(("hidden",)) and "page_size" not in plain.identity(("hidden",))
    paged = plan_cases(_cfg(page_size=16))[0]
    assert paged.case_id(()) != plain.case_id(())


@pytest.mark.parametrize(("over", "message"), [
    ({"seq_lens": [1, 2, 3, 4, 5]}, r"seq_lens has 5 lengths for batch=4; give batch lengths"),
    ({"seq_lens": [1, 2, 3]}, r"seq_lens has 3 lengths for batch=4; give batch lengths"),
    ({"seq_lens": "1k,x"}, r"seq_lens='x' is not a size"),
    ({"page_size": 12}, r"page_size=12 is not allowed: a page size is a positive power of two \(e.g. 16, 64\)$"),
    ({"page_size": 0}, r"page_size=0 is not allowed"),
    ({"seq_lens": [1, 2, 3, 4], "attention": "cross", "variant": {"name": "mha"}},
     r"seq_lens \(a ragged batch\) applies to self-attention decode only$"),
])
def test_bad_ragged_or_paged_input_fails_in_one_line(over, message) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="^" + message):
        plan_cases(_cfg(**over))


def test_prediction_counts_the_layouts_bytes() -> None:
    case = plan_cases(_cfg(seq_lens=[8, 64, 8, 8], page_size=16, variant={"name": "mla"},
                           impl={"name": "absorbed"}))[0]
    meta = variants.build("mla", case.shape, device="meta")
    impl = IMPLEMENTATIONS.get("absorbed")
    cost = impl.cost(meta, batch=4, q_len=1, cached=case.cached, new_kv=1)
    predicted = predict_memory(case, meta, impl, cost)
    # Pages of 16: 1 + 5 + 1 + 1 for the lengths 9, 65, 9, 9, and a [4, 5] int32 block table.
    assert predicted.cache_bytes == 8 * 16 * meta.kv_bytes_per_token("absorbed") + 4 * 5 * 4


def test_a_run_records_the_measured_cache_equal_to_the_layouts_function(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "run.py", "model=tiny", "device=cpu", "measure=quick", "seq=64",
                           "batch=4", "seq_lens=[8,64]", "page_size=16", "variant=mla", "impl=absorbed",
                           f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = results.load(out).iloc[0]
    assert (row.status, row.seq, row.seq_lens, row.page_size) == ("ok", 64, "8,64,8,64", 16), row.reason
    layer = variants.build("mla", load_preset("tiny"), device="meta")
    expected = layer.cache_layout("absorbed").nbytes(batch=4, context=[9, 65, 9, 65], dtype=torch.float32,
                                                      page_size=16)
    # The runner asserts the measured bytes equal the analytic ones before timing.
    assert row.kv_cache_bytes == row.kv_cache_bytes_analytic == expected


def test_capacity_follows_the_layouts_function() -> None:
    cost = model_cost("gqa", load_preset("tiny"), "float32")
    per_token = cost.kv_bytes_per_token_model
    budget = cost.weight_bytes_model + 1000 * per_token
    assert longest_context(cost, batch=1, budget_bytes=budget, reserve=0.0) == 1000  # the closed form's answer
    assert longest_context(cost, batch=3, budget_bytes=budget, reserve=0.0) == 333

    class Ring(CacheLayout):
        def positions(self, context: int) -> int:
            return min(64, context)

    ring = dataclasses.replace(cost, layout=Ring(cost.layout.fields, cost.layout.packed))
    assert longest_context(ring, batch=1, budget_bytes=budget, reserve=0.0) == MAX_CONTEXT
    small = cost.weight_bytes_model + 10 * per_token
    assert longest_context(ring, batch=1, budget_bytes=small, reserve=0.0) == 10
