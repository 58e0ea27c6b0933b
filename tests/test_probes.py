"""What a step really ran (issue 15, items 2, 4, 5, 6, 7, 8, 11): CPU checks with fakes, GPU checks marked."""

from __future__ import annotations

import io
import logging

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from attnbench.harness import results
from attnbench.harness.measure import parse as parse_module
from attnbench.harness.measure import probes, runner
from attnbench.harness.sweep.job import run_job
from tests.test_run import _job_cfg


def test_sdpa_backend_names_the_fused_kernel_and_a_math_fallback():
    q = torch.randn(1, 2, 4, 8)
    assert probes.sdpa_backends(lambda: F.scaled_dot_product_attention(q, q, q)) == "flash_cpu"
    # v narrower than q/k (MLA's sdpa: 192 vs 128) has no fused CPU kernel: the math backend runs.
    assert probes.sdpa_backends(lambda: F.scaled_dot_product_attention(q, q, q[..., :4])) == "math"
    assert probes.sdpa_backends(lambda: q @ q.transpose(-1, -2)) == ""


def test_compile_watch_reads_cache_hits_and_graph_skips_from_inductor():
    from torch._dynamo.utils import counters

    with probes.watch_compile("reduce-overhead") as watch:  # what inductor does on a hit and a skip
        counters["inductor"]["fxgraph_cache_hit"] += 1
        counters["inductor"]["cudagraph_skips"] += 1
        logging.getLogger("torch._inductor.cudagraph_utils.__cudagraphs").warning("skipping cudagraphs due to "
                                                                                   "mutated inputs (2 instances)")
    assert watch.cache_hit is True
    assert watch.cudagraph_skipped == "skipping cudagraphs due to mutated inputs (2 instances)"
    with probes.watch_compile("default") as watch:
        counters["inductor"]["fxgraph_cache_miss"] += 1
    assert watch.cache_hit is False and watch.cudagraph_skipped is None  # default mode makes no graphs
    with probes.watch_compile("max-autotune") as watch:
        pass
    assert watch.cache_hit is None and watch.cudagraph_skipped == ""  # nothing compiled, nothing skipped
    with probes.watch_compile(None) as watch:
        counters["inductor"]["fxgraph_cache_hit"] += 1
    assert watch.cache_hit is None


def test_full_output_error():
    a = torch.tensor([1.0, -2.0, 4.0])
    assert probes.full_output_error(a, a.clone()) == 0.0
    assert probes.full_output_error(a + torch.tensor([0.0, 0.0, 0.4]), a) == pytest.approx(0.1)
    assert probes.full_output_error(a[:2], a) == float("inf")


def test_device_auto_refuses_a_cpu_fallback_when_nvml_sees_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(probes, "nvml_gpu_count", lambda: 2)
    with pytest.raises(ValueError, match=r"^device=auto: NVML sees 2 GPU\(s\) but torch cannot use CUDA \(.+\); "
                                         r"fix the driver or torch build, or pass device=cpu$"):
        parse_module.resolve_device("auto")
    monkeypatch.setattr(probes, "nvml_gpu_count", lambda: 0)
    assert parse_module.resolve_device("auto") == torch.device("cpu")


def test_nvml_gpu_count_without_a_driver_is_zero():
    class NoDriver:
        class NVMLError(Exception):
            pass

        def nvmlInit(self):
            raise NoDriver.NVMLError("Driver Not Loaded")

    assert probes.nvml_gpu_count(nvml=NoDriver()) == 0


def test_free_memory_is_read_after_the_previous_case_is_collected(tmp_path, monkeypatch):
    order: list[str] = []
    real_collect, real_available = runner.gc.collect, runner.available_bytes
    monkeypatch.setattr(runner.gc, "collect", lambda *a: order.append("gc") or real_collect(*a))
    monkeypatch.setattr(runner, "available_bytes", lambda d: order.append("free") or real_available(d))
    run_job(_job_cfg(variant="mha", impl="sdpa", phase="decode"), job_dir=tmp_path, root=tmp_path, log=io.StringIO())
    assert "free" in order and order[order.index("free") - 1] == "gc"


def test_a_cpu_row_records_backend_full_shape_error_and_working_set(tmp_path):
    run_job(_job_cfg(variant="mha", impl="sdpa", phase="decode"), job_dir=tmp_path, root=tmp_path, log=io.StringIO())
    row = results.load(tmp_path).iloc[0]
    assert row.status == "ok", row.reason
    assert row.sdpa_backend in ("flash_cpu", "math")
    assert row.numerics_full_rel_err == 0.0  # eager step against itself on CPU: no graph, no compile
    assert row.working_set_bytes == row.bytes_min and row.timing_batch == 1 and row.timing_hold_expired == 0
    assert pd.isna(row.l2_bytes) and pd.isna(row.l2_resident)  # no L2 to speak of on CPU


# -- real CUDA -------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_graph_with_reduce_overhead_is_a_skipped_row_not_a_nested_capture(tmp_path):
    from tests.test_gpu import _cfg

    frame = run_job(_cfg("variant=mha", "impl=sdpa", "phase=decode", "measure.cuda_graph=true",
                         "compile=reduce-overhead"), job_dir=tmp_path, root=tmp_path, log=io.StringIO())
    assert (frame.status == "skipped").all() and frame.reason.str.contains("inductor's own CUDA graphs").all()


@pytest.mark.gpu
def test_cuda_rows_carry_backend_working_set_and_full_shape_check(tmp_path):
    from tests.test_gpu import _cfg

    frame = run_job(_cfg("variant=mla", "phase=decode", "measure.cuda_graph=true"), job_dir=tmp_path,
                    root=tmp_path, log=io.StringIO())
    ok = frame[frame.status == "ok"]
    assert len(ok) and ok.l2_bytes.notna().all() and ok.numerics_full_rel_err.notna().all()
    assert (ok.timing_batch >= 1).all() and (ok.timing_hold_expired == 0).all()


@pytest.mark.gpu
def test_graph_peak_memory_counts_the_private_pool():
    from attnbench.harness.measure.timer import capture_cuda_graph

    a = torch.randn(2048, 2048, device="cuda")
    replay = capture_cuda_graph(lambda: (a @ a).relu().sum(0), device="cuda")
    assert replay.graph_pool_bytes >= 2048 * 2048 * 4  # the (a @ a) temporary lives in the pool


@pytest.mark.gpu
def test_calibration_clock_times_a_device_other_than_the_current_one():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices to tell device N from the current device")
    from attnbench.harness.measure.calibrate import best_call_s

    x = torch.randn(1 << 26, device="cuda:1")
    with torch.cuda.device(0):
        seconds = best_call_s(lambda: x.mul_(1.0), torch.device("cuda:1"), reps=2)
    assert seconds > 1e-5  # 256 MB read and written: an idle stream's timing would be ~0


@pytest.mark.gpu
def test_peak_memory_leaves_out_the_flush_buffer(tmp_path):
    from tests.test_gpu import _cfg

    hot = run_job(_cfg("variant=mha", "impl=sdpa", "phase=decode"), job_dir=tmp_path / "hot", root=tmp_path,
                  log=io.StringIO())
    cold = run_job(_cfg("variant=mha", "impl=sdpa", "phase=decode", "measure.l2_flush=true"),
                   job_dir=tmp_path / "cold", root=tmp_path, log=io.StringIO())
    l2 = torch.cuda.get_device_properties("cuda").L2_cache_size
    assert abs(int(cold.peak_mem_bytes.iloc[0]) - int(hot.peak_mem_bytes.iloc[0])) < l2  # not the 2 x L2 buffer
