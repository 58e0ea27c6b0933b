"""Held (dispatch-free) CUDA timing on a simulated device (issue 15, item 1).

``SimDevice`` keeps two clocks: the host's, advanced by each call's dispatch cost, and the GPU
stream's, advanced by each kernel's run time once the host has launched it (a kernel cannot start
before its launch, nor before the stream reaches it). Events stamp the stream's clock.
"""

from __future__ import annotations

import pytest
import torch

from attnbench.harness.measure.timer import BATCH_TARGET_MS, MAX_BATCH, CudaTimer, MeasureSettings, measure


class SimDevice:
    def __init__(self, *, host_ms: float, gpu_ms: float, flush_ms: float = 0.0) -> None:
        self.host_ms, self.gpu_ms, self.flush_ms = host_ms, gpu_ms, flush_ms
        self.host = 0.0  # ms
        self.stream = 0.0  # ms: when the stream has finished everything enqueued so far

    def _launch(self, run_ms: float, host_ms: float) -> None:
        self.host += host_ms
        self.stream = max(self.stream, self.host) + run_ms

    def step(self) -> None:
        self._launch(self.gpu_ms, self.host_ms)

    def flush(self) -> None:
        self._launch(self.flush_ms, 0.001)

    def hold(self, ms: float) -> None:
        self._launch(ms, 0.001)

    def synchronize(self) -> None:
        self.host = max(self.host, self.stream)

    def clock(self) -> float:
        return self.host / 1e3

    def event(self) -> SimDevice.Event:
        return SimDevice.Event(self)

    class Event:
        def __init__(self, sim: SimDevice) -> None:
            self.sim, self.at = sim, None

        def record(self) -> None:
            self.sim._launch(0.0, 0.0)
            self.at = self.sim.stream

        def query(self) -> bool:
            return self.at is not None and self.at <= self.sim.host

        def elapsed_time(self, end: SimDevice.Event) -> float:
            return end.at - self.at


def _timer(sim: SimDevice, mode: str, *, l2_flush: bool = False) -> CudaTimer:
    return CudaTimer("cuda", mode=mode, l2_flush=l2_flush, events_factory=sim.event, synchronize=sim.synchronize,
                     flush=sim.flush if l2_flush else None, hold=sim.hold, host_clock=sim.clock)


def test_per_call_timing_counts_the_host_dispatch():
    sim = SimDevice(host_ms=0.7, gpu_ms=0.022)  # ~140 ops of dispatch vs a 22 us memory floor
    assert _timer(sim, "per_call").time_ms(sim.step) == pytest.approx(0.722)


@pytest.mark.parametrize("l2_flush", [False, True])
def test_held_timing_excludes_the_host_dispatch(l2_flush):
    sim = SimDevice(host_ms=0.7, gpu_ms=0.022, flush_ms=0.05)
    timer = _timer(sim, "held", l2_flush=l2_flush)
    m = measure(sim.step, timer, MeasureSettings(warmup_reps=1, warmup_s=0.0, min_reps=6, max_reps=20),
                clock=sim.clock)
    assert timer.batch == min(MAX_BATCH, -(-BATCH_TARGET_MS // 0.022))  # about 1 ms of GPU work per sample
    assert m.stats["latency_ms"] == pytest.approx(0.022)
    assert timer.hold_expired == 0
    assert timer.name == "cuda_events" + ("_l2_flush" if l2_flush else "")


def test_a_hold_that_runs_out_is_counted_and_doubled():
    sim = SimDevice(host_ms=0.7, gpu_ms=0.022)
    timer = _timer(sim, "held")
    timer.batch, timer.hold_ms = 10, 1.0  # 7 ms of dispatch behind a 1 ms hold
    sample = timer.time_ms(sim.step)
    assert timer.hold_expired == 1 and timer.hold_ms == 2.0 and timer.batch == 5
    timer.begin_samples()
    assert timer.hold_expired == 0  # the row counts timed samples only
    assert sample > 0.022  # the leak the counter warns of


def test_per_call_mode_has_no_fit_and_a_bad_mode_is_refused():
    sim = SimDevice(host_ms=0.1, gpu_ms=1.0)
    timer = _timer(sim, "per_call")
    timer.fit(sim.step)
    assert timer.batch == 1
    with pytest.raises(ValueError, match="^mode='sync' is not one of: held, per_call$"):
        CudaTimer("cuda", mode="sync", events_factory=sim.event, synchronize=sim.synchronize, hold=sim.hold)


@pytest.mark.gpu
def test_held_timing_of_many_tiny_kernels_is_below_per_call_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: the simulated device above is the CPU check")
    x = torch.randn(1024, device="cuda")

    def step() -> None:
        for _ in range(100):
            x.mul_(1.0)

    held = measure(step, CudaTimer("cuda"), MeasureSettings(budget_s=0.5)).stats["latency_ms"]
    per_call = measure(step, CudaTimer("cuda", mode="per_call"), MeasureSettings(budget_s=0.5)).stats["latency_ms"]
    assert held < per_call


def test_timing_mode_names_each_cuda_choice_and_refuses_per_call_graphs():
    from attnbench.harness.measure.parse import timing_mode

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert timing_mode(cpu, cuda_graph=False, cuda_timing="per_call") == "cpu_wall"
    assert timing_mode(cuda, cuda_graph=False) == "cuda_events"
    assert timing_mode(cuda, cuda_graph=False, cuda_timing="per_call") == "cuda_events_per_call"
    assert timing_mode(cuda, cuda_graph=True) == "cuda_graph"
    with pytest.raises(ValueError, match="^measure.cuda_timing=per_call does not apply with measure.cuda_graph=true"):
        timing_mode(cuda, cuda_graph=True, cuda_timing="per_call")
    with pytest.raises(ValueError, match="^measure.cuda_timing='sync' is not one of: held, per_call$"):
        timing_mode(cuda, cuda_graph=False, cuda_timing="sync")
