"""``run.py`` end to end: configs compose, runs and sweeps write rows, faults become statuses,
bad input is one line, an interrupted sweep resumes without losing or repeating a case."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from attnbench.harness import results
from attnbench.harness.errors import UserError
from attnbench.harness.sweep.job import run_job
from attnbench.harness.sweep.plan import plan_cases
from attnbench.variants.implementation import KernelImplementation
from attnbench.variants.impls.hf import transformers_missing
from attnbench.variants.kernels.eager import EagerKernel
from attnbench.variants.presets import load_preset
from attnbench.variants.registry import IMPLEMENTATIONS, VARIANTS

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
QUICK = ["experiment=smoke", "measure.calibrate=false"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def _options(group: str) -> list[str]:
    """A group's yaml files, plus the variants and implementations the registries give (ConfigStore)."""
    registered = {"variant": VARIANTS.names, "impl": IMPLEMENTATIONS.names}.get(group, list)()
    return sorted({p.stem for p in (CONF / group).glob("*.yaml")} | set(registered))


@pytest.mark.parametrize("model", _options("model"))
def test_every_model_preset_composes_and_plans(model):
    cases = plan_cases(_compose([f"model={model}", "device=cpu"]))
    shape = load_preset(model)
    windowed = shape.sliding_window is not None  # swa needs a window in the shape
    compressed_q = shape.q_rank is not None  # dsa's indexer reads MLA's compressed query
    # csa and hca need DeepSeek-V4's fields as well (variants.families.dsv4.config_of)
    v4 = windowed and None not in (shape.q_rank, shape.o_groups, shape.o_rank)
    # gdn and kda need the linear keys; kda one value head per key head (Kimi Linear), not GDN's grouping
    linear = shape.linear_num_key_heads is not None
    kda = linear and shape.linear_num_value_heads in (None, shape.linear_num_key_heads)
    assert {c.variant for c in cases} == {"mha", "mqa", "gqa", "mla"} | ({"swa"} if windowed else set()) \
        | ({"dsa"} if compressed_q else set()) | ({"csa", "hca"} if v4 else set()) \
        | ({"gdn"} if linear else set()) | ({"kda"} if kda else set())


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes_and_plans(experiment):
    cfg = _compose([f"experiment={experiment}", "device=cpu"])
    assert plan_cases(cfg)


@pytest.mark.parametrize("measure", _options("measure"))
def test_every_measure_config_instantiates(measure):
    from attnbench.harness.sweep.job import measure_settings

    assert measure_settings(_compose([f"measure={measure}"]).measure).min_reps >= 1


# What a variant needs of the shape beyond the tiny preset: swa a window (gpt-oss has one); csa and hca
# DeepSeek-V4's fields (no preset of this branch has them), set on tiny.
_MODEL_FOR = {"swa": ["model=gpt_oss_20b"],
              "csa": ["model=tiny", "+model.o_groups=2", "+model.o_rank=8", "+model.sliding_window=8",
                      "+model.hca_rate=8", "+model.attn_sinks=true"]}
_MODEL_FOR["hca"] = _MODEL_FOR["csa"]
# gdn and kda: the linear keys (Qwen3-Next's and Kimi Linear's presets have them), set on tiny; "all" too, so
# that impl=chunked (theirs only) has a variant to run.
_MODEL_FOR["gdn"] = _MODEL_FOR["kda"] = _MODEL_FOR["all"] = ["model=tiny", "+model.linear_num_key_heads=2"]


@pytest.mark.parametrize("variant", _options("variant"))
@pytest.mark.parametrize("impl", _options("impl"))
def test_every_variant_and_impl_config_composes(variant, impl):
    model = _MODEL_FOR.get(variant, ["model=tiny"])
    cases = plan_cases(_compose([f"variant={variant}", f"impl={impl}", *model, "device=cpu"]))
    assert cases


def _run(args: list[str], *, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_single_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = _run([*QUICK, "variant=mla", "phase=decode", f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    frame = results.load(out)
    # hf joins "all" wherever transformers is installed (the 'hf' extra; the 'test' extra has it).
    hf = set() if transformers_missing() else {"hf"}
    assert set(frame["impl"]) == {"eager", "sdpa", "flex", "absorbed", "absorbed_sdpa", "absorbed_native",
                                  "absorbed_fold_o", "expanded"} | hf
    assert (frame["status"] == "ok").all()
    assert (out / "config.yaml").exists() and (out / "env.json").exists()
    assert "latency_ms" in proc.stdout and "absorbed_sdpa" in proc.stdout  # the summary table


def test_multirun_end_to_end(tmp_path):
    out = tmp_path / "sweep"
    proc = _run(["-m", *QUICK, "variant=mha,mla", "impl=eager", "seq=32,64", "phase=decode", f"hydra.sweep.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    frame = results.load(out)
    assert len(frame) == 4 and set(frame["job_num"]) == {0, 1, 2, 3}
    assert set(zip(frame.variant, frame.seq, strict=True)) == {("mha", 32), ("mha", 64), ("mla", 32), ("mla", 64)}
    assert (frame["launcher"] == "basic").all()


# The results schema: columns and their units (README "Results schema").
SCHEMA = {
    "case_id", "status", "reason", "variant", "impl", "compile", "phase", "model", "batch", "seq", "decode_len",
    "q_len", "dtype", "device", "hidden", "heads", "kv_heads", "head_dim", "d_c", "d_r", "q_rank", "num_layers",
    "latency_ms", "latency_mean_ms", "latency_std_ms", "latency_min_ms", "latency_p10_ms", "latency_p90_ms",
    "latency_ci_low_ms", "latency_ci_high_ms", "latency_ci_rel", "n_reps", "samples_ms", "first_call_ms",
    "warmup_reps", "tokens_per_s", "flops", "tflops", "bytes_min", "gbps", "frac_peak_bandwidth", "frac_peak_flops",
    "peak_mem_bytes", "kv_cache_bytes", "kv_cache_bytes_analytic", "kv_bytes_per_token", "kv_bytes_per_token_model",
    "intensity_flops_per_byte", "numerics_rel_err", "numerics_max_abs_err", "numerics_tol", "harness_overhead_s", "case_wall_s",
    "predicted_mem_bytes", "nvml_power_mean_w", "nvml_energy_per_token_j", "nvml_throttled", "env_device_name",
    "env_torch", "env_git_commit", "env_host", "env_time_utc", "run_root", "launcher", "env_device_index", "timing",
    "l2_flush", "finished_at",
}


def _job_cfg(**over):
    cfg = _compose([*QUICK, "device=cpu", *[f"{k}={v}" for k, v in over.items()]])
    return cfg


def test_schema_and_derived_values(tmp_path):
    frame = run_job(_job_cfg(variant="mla", impl="absorbed", phase="decode"), job_dir=tmp_path, root=tmp_path,
                    log=io.StringIO())
    assert SCHEMA <= set(frame.columns), sorted(SCHEMA - set(frame.columns))
    row = results.load(tmp_path).iloc[0]
    assert row.status == "ok" and row.latency_ci_low_ms <= row.latency_ms <= row.latency_ci_high_ms
    assert row.tokens_per_s == pytest.approx(row.batch * row.q_len / (row.latency_ms / 1e3))
    assert row.gbps == pytest.approx(row.bytes_min / (row.latency_ms / 1e3) / 1e9)
    assert row.kv_cache_bytes == row.kv_cache_bytes_analytic
    assert 0 < row.numerics_max_abs_err < 1e-3  # float32 against float64: small, and not a zero left unset
    assert row.peak_mem_bytes >= row.kv_cache_bytes
    assert len(row.samples_ms) == row.n_reps
    assert 0 <= row.harness_overhead_s <= row.case_wall_s


class _Broken:
    """A kernel that fails in a chosen way, to check each fault becomes its status."""

    dense_causal = True

    def __init__(self, name: str, fault: str) -> None:
        self.name, self.fault = name, fault
        self.finished_full_calls = 0

    def __call__(self, q, k, v, *, scale, mask):  # noqa: ANN001
        if self.fault == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB (injected)")
        if self.fault == "error":
            raise RuntimeError("kernel launch failed (injected)")
        if self.fault == "value":
            raise ValueError("a shape this kernel never expected (injected)")
        if self.fault == "slow":
            full = k.numel() > 8192  # the gate's reduced shape stays fast
            for _ in range(200 if full else 0):
                time.sleep(0.01)  # many small steps: what a recurrent prefill is, and no roofline sees
            self.finished_full_calls += full
            return EagerKernel()(q, k, v, scale=scale, mask=mask)
        return EagerKernel()(q, k, v, scale=scale, mask=mask) * 1.5  # wrong numbers, fast


def test_each_fault_is_a_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    IMPLEMENTATIONS.names()  # discover the built-ins first
    for fault in ("oom", "error", "wrong"):
        impl = KernelImplementation(name=f"test_{fault}", path="standard", kernel=_Broken(fault, fault),
                                    description="fault injection")
        monkeypatch.setitem(IMPLEMENTATIONS._items, impl.name, impl)
    cfg = _job_cfg(variant="mha", impl="eager")
    cfg.impl = ["test_oom", "test_error", "test_wrong", "absorbed", "eager"]
    frame = run_job(cfg, job_dir=tmp_path, root=tmp_path, log=io.StringIO())
    status = dict(zip(frame.impl + "/" + frame.phase, frame.status, strict=True))
    assert status["test_oom/decode"] == "oom" and status["test_error/decode"] == "error"
    assert status["test_wrong/decode"] == "incorrect" and status["absorbed/decode"] == "skipped"
    assert status["eager/decode"] == "ok" and status["eager/prefill"] == "ok"
    wrong = frame[frame.impl == "test_wrong"].iloc[0]
    assert pd.isna(wrong.latency_ms) and "against the float64 reference" in wrong.reason
    reason = frame[frame.impl == "absorbed"].iloc[0].reason
    assert reason.startswith("absorbed applies to dsa, mla only; mha supports: eager")
    assert len(results.load(tmp_path)) == len(frame)


def test_a_setting_attnbench_refuses_once_built_is_a_skip_and_a_foreign_value_error_an_error(tmp_path, monkeypatch):
    """hf takes no block table and a linear state has no pages: found when the step is built or the
    cache sized, after support; they are skips with the refusal's reason. A ValueError raised outside
    attnbench's code (here by a test kernel) stays an error: it may be a bug."""
    IMPLEMENTATIONS.names()
    impl = KernelImplementation(name="test_value", path="standard", kernel=_Broken("value", "value"),
                                description="fault injection")
    monkeypatch.setitem(IMPLEMENTATIONS._items, impl.name, impl)
    cfg = _job_cfg(variant="mha", impl="eager", phase="decode", model="smollm2_135m", page_size=64)
    cfg.impl = ["hf", "test_value"]
    frame = run_job(cfg, job_dir=tmp_path / "paged", root=tmp_path / "paged", log=io.StringIO())
    by_impl = frame.set_index("impl")
    assert by_impl.loc["hf", "status"] == "skipped" and "block table" in by_impl.loc["hf", "reason"]
    assert by_impl.loc["test_value", "status"] == "error"
    cfg = _job_cfg(variant="gdn", impl="eager", phase="decode", model="tiny_hybrid", page_size=64)
    row = run_job(cfg, job_dir=tmp_path / "gdn", root=tmp_path / "gdn", log=io.StringIO()).iloc[0]
    assert row.status == "skipped" and row.reason.startswith("page_size=64: a linear-attention state has no pages")


def test_a_step_of_many_small_steps_is_stopped_at_max_step_s(tmp_path, monkeypatch):
    """The roofline predicts microseconds; the step sleeps 2 s in 10-ms slices. Its first call is
    stopped at max_step_s (and so is the memory dry run), and the case is skipped saying so."""
    IMPLEMENTATIONS.names()
    slow = _Broken("slow", "slow")
    impl = KernelImplementation(name="test_slow", path="standard", kernel=slow, description="fault injection")
    monkeypatch.setitem(IMPLEMENTATIONS._items, impl.name, impl)
    cfg = _job_cfg(variant="mha", impl="eager", phase="decode", seq=256, **{"measure.max_step_s": 0.3})
    cfg.impl = ["test_slow"]
    row = run_job(cfg, job_dir=tmp_path, root=tmp_path, log=io.StringIO()).iloc[0]
    assert row.status == "skipped" and row.reason == ("max_step_s guard: its first call ran past 0.3 s and was "
                                                      "stopped (measure.max_step_s=0.3)")
    assert slow.finished_full_calls == 0  # neither the dry run nor the first call ran its 2 s


def test_case_that_cannot_fit_is_skipped_before_allocating(tmp_path):
    cfg = _job_cfg(variant="mha", impl="sdpa", phase="decode", model="deepseek_v3", seq="1M", batch=64)
    row = run_job(cfg, job_dir=tmp_path, root=tmp_path, log=io.StringIO()).iloc[0]
    assert row.status == "skipped" and row.reason.startswith("predicted ") and "GiB free on cpu" in row.reason


def test_bad_job_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="^kv_heads=3 does not divide heads=8"):
        run_job(_job_cfg(variant="gqa", heads=8, kv_heads=3), job_dir=tmp_path, root=tmp_path, log=io.StringIO())


@pytest.mark.parametrize("args", [["variant=mxa"], ["seq=abc"], ["batch=0"], ["d_r=5", "variant=mla"],
                                  ["heads=8", "kv_heads=3", "variant=gqa"], ["impl=turbo"], ["seed=abc"],
                                  ["measure.check_numerics=maybe"], ["measure.memory_headroom=abc"]])
def test_bad_input_is_one_line_without_traceback(args, tmp_path):
    proc = _run([*args, f"hydra.run.dir={tmp_path}"], timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_interrupted_sweep_resumes_without_loss_or_repeat(tmp_path):
    out = tmp_path / "sweep"
    args = ["-m", *QUICK, "variant=mha,mqa,gqa,mla", "impl=eager", "phase=decode", "name=resumable",
            f"hydra.sweep.dir={out}"]
    proc = subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(results.row_files([out]) if out.exists() else []) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = results.load(out, attempts=True)
    assert 2 <= len(before) < 4, "the kill should land mid-sweep"
    first_files = {p: p.stat().st_mtime_ns for p in results.row_files([out])}

    resumed = _run([*args, "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = results.load(out, attempts=True)
    assert sorted(after.variant) == ["gqa", "mha", "mla", "mqa"], "every case once, none lost or repeated"
    assert (after.status == "ok").all()
    assert all(p.stat().st_mtime_ns == t for p, t in first_files.items()), "finished rows untouched"


@pytest.mark.compile
def test_compiled_case_reports_first_call_apart_and_checks_numerics(tmp_path):
    cfg = _job_cfg(variant="mqa", impl="sdpa", phase="decode", compile="default")
    row = run_job(cfg, job_dir=tmp_path, root=tmp_path, log=io.StringIO()).iloc[0]
    assert row.status == "ok", row.reason
    assert row.compile == "default" and row.numerics_compile_rel_err <= 1e-4
    assert row.first_call_ms > 10 * row.latency_ms  # compilation is in the first call only


def test_variant_all_says_which_variants_it_leaves_out_and_why():
    """variant=all measures what the shape makes; a variant dropped whole is named with its reason
    (an fp8 cache has no linear-attention state; kda refuses GDN's value-head grouping)."""
    cfg = _job_cfg(variant="all", impl="eager", model="tiny_hybrid", kv_dtype="fp8_e4m3")
    left_out: dict[str, str] = {}
    cases = plan_cases(cfg, left_out=left_out)
    assert {case.variant for case in cases}.isdisjoint(left_out)
    assert left_out["gdn"].startswith("kv_dtype='fp8_e4m3' is not supported by a linear-attention layer")
    assert "value heads" in left_out["kda"] and "sliding_window" in left_out["swa"]
    assert {case.variant for case in cases} | set(left_out) == set(VARIANTS.names())
