"""Memory predicted from a dry run covers every allocation of a case, and the fill allocates nothing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir

from attnbench import variants
from attnbench.harness import results
from attnbench.harness.measure.memory import _cpu_transient_peak_bytes
from attnbench.harness.measure.runner import RunContext, run_case
from attnbench.harness.measure.timer import MeasureSettings
from attnbench.harness.sweep.plan import plan_cases
from tests.test_run import CONF, ROOT
from attnbench.variants.registry import IMPLEMENTATIONS

ONE_SAMPLE = MeasureSettings(warmup_reps=0, warmup_s=0.0, min_reps=1, max_reps=1, target_ci_rel=0.0, budget_s=0.01)
# Decode short and at 128k; prefill where eager's scores stay small (1k: 48 MiB of them). Every
# variant x implementation (DSA's below): 45 cases, ~80 s on an idle 2-core CPU (two profiler sessions each).
SWEEP = [("decode", "1k"), ("decode", "128k"), ("prefill", "1k")]
# DSA's two paths: dense scores masked to the picks (eager) and the gather of the picked latents
# (absorbed). Its other implementations add MLA's kernels, measured in mla's cases, to one of these
# (and cost ~35 s more of this test's ~2 min).
DSA_PATHS = ("eager", "absorbed")


def _cases(phase: str, seq: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", "device=cpu", "dtype=float32", f"phase={phase}",
                                           f"seq={seq}"])
    return plan_cases(cfg)


def test_measured_peak_is_within_the_prediction_for_a_sweep():
    ctx = RunContext(settings=ONE_SAMPLE, check_numerics=False)
    ratios = {}
    for phase, seq in SWEEP:
        for case in _cases(phase, seq):
            if not getattr(IMPLEMENTATIONS.get(case.impl), "runs_on_fake_tensors", True):
                continue  # flex: its compiled kernel can't be dry-run; predicted from the cost model (known low)
            if case.variant == "dsa" and case.impl not in DSA_PATHS:
                continue
            row = run_case(case, ctx)
            assert row["status"] == "ok", (case.label(), row["reason"])
            assert row["peak_mem_over_predicted"] == row["peak_mem_bytes"] / row["predicted_mem_bytes"]
            ratios[case.label()] = row["predicted_mem_bytes"] / row["peak_mem_bytes"]
    tightest, loosest = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
    print(f"\n{len(ratios)} cases; worst measured/predicted peak {1 / ratios[tightest]:.3f} ({tightest}); "
          f"loosest prediction {ratios[loosest]:.3f}x the measured peak ({loosest})")
    bad = {k: round(v, 3) for k, v in ratios.items() if not 1.0 <= v <= 1.5}
    assert not bad, f"predicted / measured peak outside [1, 1.5]: {bad}"


@pytest.mark.parametrize("variant", ["gqa", "mla"])
def test_fill_random_allocates_nothing_beside_the_cache(variant):
    layer = variants.build(variant, model="tiny")
    cache = layer.new_cache(2, 4096, impl="eager")
    before = {k: v.data_ptr() for k, v in cache.buffers.items()}
    assert _cpu_transient_peak_bytes(lambda: cache.fill_random_(4000, seed=1)) == 0
    assert {k: v.data_ptr() for k, v in cache.buffers.items()} == before
    again = layer.new_cache(2, 4096, impl="eager")
    again.fill_random_(4000, seed=1)
    for name, buf in cache.buffers.items():
        assert torch.equal(buf, again.buffers[name])  # seeded: repeatable
        assert buf[:, :4000].std() == pytest.approx(1.0, rel=0.05) and buf[:, 4000:].abs().sum() == 0


def test_one_million_token_prefill_without_calibration_is_skipped_by_a_named_guard(tmp_path):
    """``measure=quick`` does not calibrate; the step-time guard still holds, from built-in rates."""
    out = tmp_path / "run"
    started = time.monotonic()
    # Both guards on one variant: eager materializes the scores (memory), sdpa and flex don't (time).
    # Every variant took ~50 s, mostly dry runs that predict the same two answers.
    proc = subprocess.run([sys.executable, "run.py", "measure=quick", "seq=1M", "phase=prefill", "model=tiny",
                           "variant=gqa", "impl=all", "device=cpu", f"hydra.run.dir={out}"], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    frame = results.load(out)
    assert len(frame) and (frame["status"] == "skipped").all(), frame[["impl", "status", "reason"]]
    # Implementations that do not materialize the scores fit in memory: only the time guard stops them.
    assert any(r.startswith("max_step_s guard: predicted") for r in frame["reason"]), frame["reason"].tolist()
    assert any(r.endswith("(memory_headroom guard)") for r in frame["reason"]), frame["reason"].tolist()
    assert all(r.startswith("max_step_s guard: predicted") or r.endswith("(memory_headroom guard)")
               for r in frame["reason"])
    assert time.monotonic() - started < 120


def test_fill_random_of_some_sequences_leaves_the_others():
    layer = variants.build("gqa", model="tiny")
    cache = layer.new_cache(3, 64, impl="eager")
    cache.fill_random_(40, seed=1, sequences=1)
    for buf in cache.buffers.values():
        assert buf[0, :40].abs().sum() > 0 and buf[1:].abs().sum() == 0
    assert cache.length == 40


def test_a_case_whose_weights_and_cache_cannot_fit_is_not_dry_run(monkeypatch):
    # batch 100000 at 1M tokens: fake tensors took over a minute to say what the layout says at once.
    from attnbench.harness.measure import predict

    ran = []

    def refuse(*args, **kwargs):
        ran.append(True)
        raise RuntimeError("the dry run ran")  # predict_memory falls back to the cost model on any error

    monkeypatch.setattr(predict, "dry_run", refuse)
    case = next(c for c in _cases("decode", "1M") if c.impl == "eager" and c.variant == "gqa")
    meta = variants.build(case.variant, case.shape, dtype=case.torch_dtype, device="meta")
    impl = IMPLEMENTATIONS.get(case.impl)
    cost = impl.cost(meta, batch=case.batch, q_len=case.q_len, cached=case.cached, new_kv=case.new_kv)
    found = predict.predict_memory(case, meta, impl, cost, fits_bytes=1 << 20)
    assert found.method == "cost_model" and found.cache_bytes > 1 << 20 and not ran
    predict.predict_memory(case, meta, impl, cost, fits_bytes=float("inf"))
    assert ran  # a case that may fit is dry-run
