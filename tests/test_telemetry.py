"""NVML telemetry: the sampler against scripted readings, the null sampler, and real pynvml here."""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from attnbench.harness.measure.telemetry import EMPTY_COLUMNS, NullSampler, NvmlSampler, reason_names, telemetry_for
from tests.fake_nvml import CONSTANTS, GIB, MIB, NVML_ERROR_UNKNOWN, FakeNvml, NVMLError, Script

FAST = 0.001  # polling interval for tests, s


def _window(fake: FakeNvml, *, polls: int = 6) -> NvmlSampler:
    with NvmlSampler(0, interval_s=FAST, nvml=fake) as sampler:
        fake.wait_for("nvmlDeviceGetPowerUsage", polls)
    return sampler


def test_summary_matches_scripted_readings():
    fake = FakeNvml()
    row = _window(fake).summary(tokens=1000)
    n = row["nvml_samples"]
    assert tuple(row) == EMPTY_COLUMNS
    assert isinstance(n, int) and n >= 7  # six polls from the thread, one more at exit
    assert row["nvml_window_s"] > 0
    assert row["nvml_gpu_util_pct"] == 90 and row["nvml_mem_util_pct"] == 40
    assert row["nvml_mem_used_peak_bytes"] == GIB + (n - 1) * MIB
    assert row["nvml_power_mean_w"] == pytest.approx(200 + (n - 1) / 2)  # mean of the ramp
    assert row["nvml_sm_clock_mhz"] == pytest.approx(statistics.fmean(
        1980 if i % 2 == 0 else 1755 for i in range(n)))
    assert row["nvml_mem_clock_mhz"] == 2619
    assert row["nvml_temp_max_c"] == 60 + n - 1
    assert row["nvml_energy_source"] == "counter"
    assert row["nvml_energy_j"] == pytest.approx(12.345)
    assert row["nvml_energy_per_token_j"] == pytest.approx(0.012345)
    # the power cap appeared at the fourth poll: throttled, and idle is named but does not count
    assert row["nvml_throttled"] is True
    assert row["nvml_throttle_reasons"] == "gpu_idle,sw_power_cap"
    assert fake.refcount == 0, "NVML is shut down after the window"


def test_idle_and_application_clocks_are_not_throttling():
    fake = FakeNvml(Script(reasons=lambda i: 0x1 | 0x2))
    row = _window(fake, polls=2).summary(tokens=1)
    assert row["nvml_throttled"] is False
    assert row["nvml_throttle_reasons"] == "gpu_idle,applications_clocks_setting"


def test_no_reasons_seen_is_an_empty_string():
    row = _window(FakeNvml(Script(reasons=lambda i: 0)), polls=1).summary(tokens=1)
    assert row["nvml_throttled"] is False and row["nvml_throttle_reasons"] == ""


def test_reason_names_cover_every_pynvml_bit_and_unknown_ones():
    import pynvml

    names, throttled = reason_names(0x200 | 0x8000, pynvml)
    assert names == ["board_limit", "unknown_0x8000"] and throttled
    names, _ = reason_names(pynvml.nvmlClocksThrottleReasonAll, pynvml)
    assert not any(n.startswith("unknown") for n in names), names


def test_window_shorter_than_an_interval_still_has_samples():
    with NvmlSampler(0, interval_s=10.0, nvml=FakeNvml()) as sampler:
        pass
    row = sampler.summary(tokens=8)
    assert row["nvml_samples"] >= 1  # the thread's first poll and the one at exit
    assert row["nvml_power_mean_w"] is not None


def test_unsupported_queries_leave_their_columns_none():
    fake = FakeNvml(unsupported={"nvmlDeviceGetTemperature", "nvmlDeviceGetTotalEnergyConsumption",
                                 "nvmlDeviceGetUtilizationRates"})
    sampler = _window(fake)
    row = sampler.summary(tokens=100)
    assert row["nvml_temp_max_c"] is None
    assert row["nvml_gpu_util_pct"] is None and row["nvml_mem_util_pct"] is None
    assert row["nvml_power_mean_w"] is not None and row["nvml_sm_clock_mhz"] is not None
    # without the counter, energy is mean power times the window, and the row says so
    assert row["nvml_energy_source"] == "power_integral"
    assert row["nvml_energy_j"] == pytest.approx(row["nvml_power_mean_w"] * row["nvml_window_s"])
    assert row["nvml_energy_per_token_j"] == pytest.approx(row["nvml_energy_j"] / 100)
    assert "Not Supported" in sampler.errors["temp"]


def test_unsupported_query_is_asked_once():
    fake = FakeNvml(unsupported={"nvmlDeviceGetPowerUsage"})
    sampler = NvmlSampler(0, interval_s=FAST, nvml=fake)
    asked = []
    original = fake.nvmlDeviceGetPowerUsage
    fake.nvmlDeviceGetPowerUsage = lambda h: asked.append(h) or original(h)
    with sampler:
        fake.wait_for("nvmlDeviceGetMemoryInfo", 5)
    assert len(asked) == 1
    row = sampler.summary(tokens=1)
    assert row["nvml_power_mean_w"] is None and row["nvml_energy_source"] == "counter"


def test_nothing_to_measure_energy_with_gives_none():
    fake = FakeNvml(unsupported={"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTotalEnergyConsumption"})
    row = _window(fake, polls=0).summary(tokens=1)
    assert row["nvml_energy_j"] is None and row["nvml_energy_source"] is None
    assert row["nvml_energy_per_token_j"] is None


def test_counter_that_does_not_tick_falls_back_to_power_with_the_source_named():
    row = _window(FakeNvml(Script(energy_mj=lambda i: 7_000)), polls=1).summary(tokens=1)
    assert row["nvml_energy_source"] == "power_integral"


def test_transient_error_blanks_one_reading_only():
    def power(i: int) -> int:
        if i == 1:
            raise NVMLError(NVML_ERROR_UNKNOWN)
        return 100_000

    fake = FakeNvml(Script(power_mw=power))
    row = _window(fake).summary(tokens=1)
    assert row["nvml_power_mean_w"] == pytest.approx(100.0)
    assert fake.calls["nvmlDeviceGetPowerUsage"] == row["nvml_samples"], "asked again after a transient error"


@pytest.mark.parametrize("how", ["missing", "not_found"])
def test_reasons_fall_back_to_the_throttle_api(how):
    fake = FakeNvml(**{how: {"nvmlDeviceGetCurrentClocksEventReasons"}})
    row = _window(fake, polls=4).summary(tokens=1)
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == row["nvml_samples"]
    assert row["nvml_throttled"] is True


def test_unsupported_reasons_give_none_not_false():
    fake = FakeNvml(unsupported={"nvmlDeviceGetCurrentClocksEventReasons"})
    row = _window(fake, polls=1).summary(tokens=1)
    assert row["nvml_throttled"] is None and row["nvml_throttle_reasons"] is None


def test_a_bug_in_the_thread_is_raised_not_lost():
    fake = FakeNvml(Script(temp_c=lambda i: 1 // 0))
    with pytest.raises(RuntimeError, match="sampling thread failed"):
        with NvmlSampler(0, interval_s=FAST, nvml=fake):
            fake.wait_for("nvmlDeviceGetPowerUsage", 1)
    assert fake.refcount == 0


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="interval_s"):
        NvmlSampler(0, interval_s=0, nvml=FakeNvml())
    with pytest.raises(ValueError, match="device_index"):
        NvmlSampler(-1, nvml=FakeNvml())
    sampler = _window(FakeNvml(), polls=1)
    with pytest.raises(ValueError, match="tokens"):
        sampler.summary(tokens=0)


def test_null_sampler_on_cpu_gives_all_none_and_a_reason():
    factory, reason = telemetry_for("cpu")
    assert reason == "device is cpu"
    with factory() as sampler:
        pass
    assert isinstance(sampler, NullSampler) and sampler.reason == reason
    assert sampler.summary(tokens=5) == dict.fromkeys(EMPTY_COLUMNS)


def test_telemetry_for_cuda_with_nvml_gives_a_working_factory():
    fake = FakeNvml()
    factory, reason = telemetry_for("cuda:0", nvml=fake, interval_s=FAST)
    assert reason is None and fake.refcount == 0, "the probe shuts NVML down again"
    with factory() as sampler:
        fake.wait_for("nvmlDeviceGetPowerUsage", 1)
    assert sampler.summary(tokens=1)["nvml_samples"] >= 2


@pytest.mark.parametrize("code, start", [(12, "no NVML on this machine: "),
                                         (999, "pynvml could not initialise: Unknown Error")])
def test_nvml_that_cannot_initialise_gives_a_reason(code, start):
    factory, reason = telemetry_for("cuda:0", nvml=FakeNvml(init_error=code))
    assert reason.startswith(start), reason
    assert factory().summary(tokens=1) == dict.fromkeys(EMPTY_COLUMNS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA present the index is checked against torch's devices")
def test_device_nvml_does_not_know_gives_a_reason():
    fake = FakeNvml(device_count=1)
    _, reason = telemetry_for("cuda:3", nvml=fake)
    assert reason.startswith("NVML cannot find CUDA device 3"), reason
    assert fake.refcount == 0


def test_real_pynvml_never_raises():
    """Here (no GPU) this gives a one-line reason; on a GPU machine, a working sampler."""
    factory, reason = telemetry_for("cuda:0")
    with factory() as sampler:
        time.sleep(0.01)
    row = sampler.summary(tokens=1)
    assert tuple(row) == EMPTY_COLUMNS
    if torch.cuda.is_available():
        return
    assert isinstance(reason, str) and "\n" not in reason
    assert reason.startswith(("no NVML on this machine", "pynvml could not initialise", "NVML cannot find"))
    assert row == dict.fromkeys(EMPTY_COLUMNS)


def test_fake_constants_are_pynvml_constants():
    import pynvml

    for name, value in CONSTANTS.items():
        assert getattr(pynvml, name) == value, name
    fake = FakeNvml()
    for name in dir(fake):
        if name.startswith("nvml") and callable(getattr(fake, name)):
            assert hasattr(pynvml, name), f"the fake has {name}, pynvml does not"


@pytest.mark.gpu
def test_real_gpu_window():
    factory, reason = telemetry_for("cuda")
    assert reason is None, reason
    a = torch.randn(4096, 4096, device="cuda")
    with factory() as sampler:
        deadline = time.perf_counter() + 1.2  # the energy counter ticks about every 100 ms
        while time.perf_counter() < deadline:
            a @ a
            torch.cuda.synchronize()
    row = sampler.summary(tokens=1)
    assert row["nvml_samples"] > 10
    assert row["nvml_power_mean_w"] > 0 and row["nvml_energy_j"] > 0
    assert row["nvml_mem_used_peak_bytes"] >= a.numel() * a.element_size()
    assert row["nvml_gpu_util_pct"] > 0
