"""Ceilings that are right: the read roof, no cached calibration from a busy machine, one calibration
of a device at a time, and a row above its roof measuring the ceilings again."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from attnbench.harness.measure import calibrate
from attnbench.harness.measure.calibrate import ceilings
from attnbench.harness.measure.cpuload import others_share

ROOT = Path(__file__).resolve().parent.parent
BUFFER = 64 << 20  # past the last-level cache of most CPUs, short enough for a unit test


def test_read_ceiling_is_at_least_the_copy_ceiling_on_cpu(monkeypatch):
    """Real measurement: a read stream moves bytes nearly as fast as a copy, or faster (a copy also
    writes and, with ordinary stores, reads each destination line first). Not always faster: with
    non-temporal stores (glibc's memcpy on large buffers) a copy skips that read, and one core's
    read stream is bound by its outstanding misses; measured on one AMD EPYC core, 64 MiB: copy
    45.5-46.3 GB/s, read 41.3-42.7 GB/s (0.89-0.92x). The bound catches a read probe that lags
    memory (a float sum ran 10-15% below a max on a 2-core CPU). One thread: on a CPU shared with
    other test runs, oversubscribed OpenMP barriers slow multi-threaded reductions far more than memcpy."""
    monkeypatch.setattr(calibrate, "CPU_MATMUL_SIZES", (128,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = calibrate.measure(torch.device("cpu"), torch.float32, size_bytes=BUFFER)
    finally:
        torch.set_num_threads(threads)
    print(f"\ncpu float32: copy {m.copy_gbps:.2f} GB/s, read {m.read_gbps:.2f} GB/s, "
          f"matmul {m.matmul_tflops:.4f} TFLOP/s, others used {m.others_cpu_share}")
    assert m.read_gbps >= 0.8 * m.copy_gbps > 0


def _burn(stop_at: float) -> None:
    x = 0
    while time.monotonic() < stop_at:
        x += 1


def test_a_calibration_on_a_busy_cpu_is_not_cached(tmp_path, caplog):
    """Real load: one busy process per CPU of ours while calibrating; the result is used but not cached."""
    cpus = len(os.sched_getaffinity(0))
    stop_at = time.monotonic() + 120
    ctx = multiprocessing.get_context("spawn")
    burners = [ctx.Process(target=_burn, args=(stop_at,), daemon=True) for _ in range(cpus)]
    for p in burners:
        p.start()
    try:
        time.sleep(0.5)  # the burners are running before the measurement starts
        with caplog.at_level("WARNING", logger="attnbench.harness.measure.calibrate"):
            busy = ceilings("cpu", torch.float32, cache_dir=tmp_path, size_bytes=BUFFER)
    finally:
        for p in burners:
            p.kill()
            p.join()
    print(f"\nunder load: copy {busy.copy_gbps:.2f} GB/s, read {busy.read_gbps:.2f} GB/s, "
          f"matmul {busy.matmul_tflops:.4f} TFLOP/s, others used {busy.others_cpu_share:.0%}")
    assert not busy.quiet and busy.others_cpu_share > calibrate.BUSY_SHARE
    assert not list(tmp_path.glob("ceilings-*.json")), "a busy calibration was cached"
    assert "not cached" in caplog.text


def test_the_load_probe_sees_only_our_own_work_as_ours():
    """The probe subtracts this process's CPU time: our own busy loop is not "others"."""
    with others_share() as load:
        _burn(time.monotonic() + 0.5)
    assert load.value is None or load.value < 0.9  # one of our CPUs was ours; shared machines add noise


def test_a_quiet_measurement_is_cached_and_replaces_a_busy_one(tmp_path, monkeypatch):
    fake = {"m": calibrate.Measurement(1.0, 1.5, 0.1, True, 0.5)}
    monkeypatch.setattr(calibrate, "measure", lambda device, dtype, *, size_bytes: fake["m"])
    busy = ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=1 << 16)
    assert not busy.quiet and not list(tmp_path.glob("ceilings-*.json"))
    fake["m"] = calibrate.Measurement(2.0, 3.0, 0.2, False, 0.0)  # idle but not yet stable
    assert not ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=1 << 16).quiet
    assert not list(tmp_path.glob("ceilings-*.json"))
    fake["m"] = calibrate.Measurement(2.0, 3.0, 0.2, True, 0.02)
    quiet = ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=1 << 16)
    assert quiet.quiet and quiet.bandwidth_gbps == 3.0
    fake["m"] = calibrate.Measurement(9.0, 9.0, 9.0, True, 0.0)
    assert ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=1 << 16) == quiet  # read from the cache


def test_stable_rates_go_on_until_the_best_stops_improving(monkeypatch):
    times = iter([1.0, 2.0, 0.5, 1.0, 0.49, 1.01])  # a, b in turn: neither improves > 3% in round 3
    monkeypatch.setattr(calibrate, "best_call_s", lambda fn, device: next(times))
    streams = {"a": (lambda: None, 1.0), "b": (lambda: None, 1.0)}
    assert calibrate.stable_rates(streams, torch.device("cpu")) == ({"a": 1 / 0.49, "b": 1.0}, True)
    times = iter([2.0 ** -k for k in range(6)])
    monkeypatch.setattr(calibrate, "best_call_s", lambda fn, device: next(times))
    assert calibrate.stable_rates({"a": (lambda: None, 1.0)}, torch.device("cpu")) == ({"a": 32.0}, False)


_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from attnbench.harness.measure import calibrate
    log = Path(sys.argv[2])
    def measure(device, dtype, *, size_bytes):
        with log.open("a") as f:
            f.write(f"start {time.time()}\\n")
        time.sleep(1.0)
        with log.open("a") as f:
            f.write(f"end {time.time()}\\n")
        return calibrate.Measurement(1.0, 1.0, 1.0, True, 0.0)
    calibrate.measure = measure
    calibrate.ceilings("cpu", "float32", cache_dir=Path(sys.argv[1]), size_bytes=1 << 16, force=True)
""")


def test_two_processes_calibrating_at_once_take_turns(tmp_path):
    log = tmp_path / "log.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path / "cal"), str(log)], cwd=ROOT, env=env)
             for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    events = [line.split() for line in log.read_text().splitlines()]
    assert [kind for kind, _ in events] == ["start", "end", "start", "end"], events  # never interleaved
    assert float(events[2][1]) >= float(events[1][1])


def test_the_lock_file_is_not_followed_through_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "calibrate-cpu.lock").symlink_to(target)
    with pytest.raises(OSError), calibrate.calibration_lock(tmp_path / "cal", torch.device("cpu")):
        pass
    assert target.read_text() == "keep"


def test_an_old_cache_without_a_read_ceiling_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setattr(calibrate, "measure", lambda device, dtype, *, size_bytes: calibrate.Measurement(
        2.0, 3.0, 1.0, True, 0.0))
    first = ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=1 << 16)
    path = tmp_path / f"ceilings-float32-{first.fingerprint}.json"
    old = json.loads(path.read_text())
    del old["read_gbps"]
    path.write_text(json.dumps(old))
    with pytest.warns(RuntimeWarning, match="measuring again"):
        assert ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=1 << 16).read_gbps == 3.0


def _ceilings(copy: float, read: float, matmul: float) -> calibrate.Ceilings:
    return calibrate.Ceilings(copy_gbps=copy, read_gbps=read, matmul_tflops=matmul, device_name="cpu",
                              dtype="float32", fingerprint="0", measured_at="now")


def test_a_row_above_its_ceiling_measures_the_ceilings_again_once(caplog):
    from attnbench.harness.measure.runner import RunContext, run_case
    from attnbench.harness.measure.timer import MeasureSettings
    from tests.test_predict_memory import _cases

    calls = []

    def recalibrate():
        calls.append(1)
        return _ceilings(5.0, 8.0, 1e-9)  # still absurdly low: the next rows stay above it

    settings = MeasureSettings(warmup_reps=0, warmup_s=0.0, min_reps=1, max_reps=1, target_ci_rel=0.0, budget_s=0.01)
    ctx = RunContext(settings=settings, check_numerics=False, ceilings=_ceilings(1.0, 2.0, 1e-12),
                     recalibrate=recalibrate, max_step_s=float("inf"))  # the absurd roof must not skip it
    cases = [c for c in _cases("decode", "1k") if c.impl == "eager"][:2]
    with caplog.at_level("WARNING", logger="attnbench.harness.measure.runner"):
        first, second = (run_case(case, ctx) for case in cases)
    assert calls == [1], "measured again for the first row above the roof only"
    assert first["status"] == second["status"] == "ok"
    # the first row's fractions use the new ceilings, its columns name them
    assert first["ceiling_read_gbps"] == 8.0 and first["ceiling_matmul_tflops"] == 1e-9
    assert first["frac_peak_flops"] == pytest.approx(first["tflops"] / 1e-9)
    assert first["frac_peak_bandwidth"] == pytest.approx(first["gbps"] / 8.0)  # the read roof
    assert "measuring the ceilings again" in caplog.text and "after the ceilings were measured again" in caplog.text


def test_the_bandwidth_roof_is_the_faster_stream():
    assert _ceilings(4.0, 6.0, 1.0).bandwidth_gbps == 6.0
    assert _ceilings(6.0, 4.0, 1.0).bandwidth_gbps == 6.0
    assert set(_ceilings(4.0, 6.0, 1.0).columns()) == {"ceiling_copy_gbps", "ceiling_read_gbps",
                                                        "ceiling_matmul_tflops", "ceiling_quiet", "ceiling_measured_at"}


def test_the_step_time_guard_trusts_only_a_quiet_calibration():
    from attnbench.harness.measure.runner import RunContext, run_case
    from attnbench.harness.measure.timer import MeasureSettings
    from tests.test_predict_memory import _cases

    case = next(c for c in _cases("decode", "1k") if c.impl == "eager")
    settings = MeasureSettings(warmup_reps=0, warmup_s=0.0, min_reps=1, max_reps=1, target_ci_rel=0.0, budget_s=0.01)
    slow = _ceilings(1e-9, 1e-9, 1e-12)  # a step would take hours at these rates
    row = run_case(case, RunContext(settings=settings, check_numerics=False, ceilings=slow))
    assert row["status"] == "skipped" and row["reason"].startswith("max_step_s guard") \
        and "calibrated ceilings" in row["reason"]
    busy = dataclasses.replace(slow, quiet=False)
    row = run_case(case, RunContext(settings=settings, check_numerics=False, ceilings=busy))
    assert row["status"] == "ok" and row["predicted_step_s"] < 1e-3  # built-in rates
