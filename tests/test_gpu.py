"""The CUDA paths end to end: events, CUDA graphs, allocator peak, NVML columns (skipped on CPU)."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from attnbench.harness import results
from attnbench.harness.sweep.job import run_job
from tests.test_run import CONF, _job_cfg

pytestmark = pytest.mark.gpu


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["experiment=smoke", "device=cuda", "dtype=bfloat16", *overrides])


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_run_fills_timing_memory_and_telemetry(tmp_path, cuda_graph):
    cfg = _cfg("variant=mla", "phase=decode", f"measure.cuda_graph={str(cuda_graph).lower()}",
               "measure.telemetry_window_s=1.0")
    run_job(cfg, job_dir=tmp_path, root=tmp_path, log=io.StringIO())
    frame = results.load(tmp_path)
    assert (frame.status == "ok").all(), frame[["impl", "status", "reason"]]
    assert (frame.timing == ("cuda_graph" if cuda_graph else "cuda_events")).all() and not frame.l2_flush.any()
    assert (frame.timing_batch >= 1).all() and (frame.timing_hold_expired == 0).all()  # held: no dispatch leaked
    assert (frame.peak_mem_bytes >= frame.kv_cache_bytes).all()
    assert (frame.nvml_samples > 0).all() and frame.nvml_power_mean_w.notna().all()


def test_graph_and_plain_runs_of_one_case_are_two_cases_and_both_resume(tmp_path):
    """A GPU row file with the NVML columns filled concatenates with a CPU one under plain pandas."""
    plain = run_job(_cfg("variant=mha", "impl=sdpa", "phase=decode"), job_dir=tmp_path / "0",
                    root=tmp_path, log=io.StringIO())
    graph = run_job(_cfg("variant=mha", "impl=sdpa", "phase=decode", "measure.cuda_graph=true",
                         "resume=true"), job_dir=tmp_path / "1", root=tmp_path, log=io.StringIO())
    assert len(graph) == 1, "resume must not take a plain-timed ok row for the graph-timed case"
    assert set(plain.case_id).isdisjoint(graph.case_id)
    cpu = run_job(_job_cfg(variant="mha", impl="eager", phase="decode"), job_dir=tmp_path / "2", root=tmp_path,
                  log=io.StringIO())
    assert len(cpu) == 1
    files = results.row_files([tmp_path])
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert len(frame) == 3 and frame.nvml_power_mean_w.notna().sum() == 2


def test_cuda_oom_is_a_row_and_memory_is_released(tmp_path):
    free, total = torch.cuda.mem_get_info()
    # Ask the predictor's headroom to allow everything, so the allocation itself fails.
    cfg = _cfg("variant=mha", "impl=eager", "phase=prefill", "model=deepseek_v2_lite", "seq=256k",
               "measure.memory_headroom=1000", "measure.check_numerics=false", "measure.max_step_s=1e9")
    frame = run_job(cfg, job_dir=tmp_path, root=tmp_path, log=io.StringIO())
    assert (frame.status == "oom").all()
    assert torch.cuda.memory_allocated() < 0.01 * total
