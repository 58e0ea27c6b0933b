"""The timers and the adaptive loop: real CPU timing, scripted fakes for the stopping rules and CUDA."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import pytest
import torch
from torch.utils import benchmark

import attnbench.harness.measure.timer
from attnbench import variants
from attnbench.harness.measure.stats import summarize
from attnbench.harness.measure.timer import CpuTimer, CudaTimer, MeasureSettings, capture_cuda_graph, measure
from tests.shapes import TINY

FAST = MeasureSettings(warmup_reps=0, warmup_s=0.0)  # fakes advance only the fake clock


class FakeClock:
    """Seconds that advance only when a scripted sample says so."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


class ScriptedTimer:
    """Returns the scripted samples in order and advances the fake clock by each."""

    name = "scripted"

    def __init__(self, samples_ms: Iterable[float], clock: FakeClock) -> None:
        self._samples = iter(samples_ms)
        self._clock = clock
        self.calls = 0

    def time_ms(self, fn: Callable[[], object]) -> float:
        fn()
        self.calls += 1
        sample = next(self._samples)
        self._clock.now_s += sample / 1e3
        return sample


def noisy_ms(seed: int) -> Iterable[float]:
    """Lognormal around 10 ms, far too noisy for a 0.1% CI in a few hundred samples."""
    rng = np.random.default_rng(seed)
    while True:
        yield float(10.0 * rng.lognormal(0.0, 1.0))


def scripted(samples_ms: Iterable[float]) -> tuple[ScriptedTimer, FakeClock]:
    clock = FakeClock()
    return ScriptedTimer(samples_ms, clock), clock


# -- the real CPU timer -------------------------------------------------------------------------

def test_cpu_timer_measures_a_busy_closure():
    a = torch.randn(128, 128)
    m = measure(lambda: [a @ a for _ in range(4)], CpuTimer(),
                MeasureSettings(warmup_s=0.05, budget_s=0.5, target_ci_rel=0.05))
    assert m.stop_reason in ("ci_target", "budget", "max_reps")
    assert len(m.samples_ms) >= 5 and all(s > 0 for s in m.samples_ms)
    assert m.stats["n_reps"] == len(m.samples_ms)
    assert m.first_call_ms > 0 and m.warmup_reps >= 3
    assert m.timed_s == pytest.approx(sum(m.samples_ms) / 1e3)
    assert 0 <= m.overhead_s < m.loop_wall_s and m.warmup_wall_s > 0


def alternate_with_torch_benchmark(timer, fn: Callable[[], object], *, seconds: float) -> tuple[float, float]:
    """Median ms of ``fn`` by ``timer`` and by ``torch.utils.benchmark``, call by call in turn.

    Machines drift over seconds (other jobs, clocks, temperature), so the two timers alternate
    single calls, swapping which goes first, to see the same conditions. torch's timer times one
    call per sample (``timeit(number=1)``) as ours does: its blocks of 10 calls would catch more
    preemptions per sample and shift the median. It synchronizes the accelerator around each.
    """
    theirs = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    ours_ms, theirs_ms = [], []

    def time_ours():
        ours_ms.append(timer.time_ms(fn))

    def time_theirs():
        theirs_ms.append(theirs.timeit(number=1).median * 1e3)

    for _ in range(3):
        fn()
    end_s = time.perf_counter() + seconds
    while time.perf_counter() < end_s or len(ours_ms) < 20:
        first, second = (time_ours, time_theirs) if len(ours_ms) % 2 == 0 else (time_theirs, time_ours)
        first()
        second()
    return summarize(ours_ms)["latency_ms"], float(np.median(theirs_ms))


def test_cpu_timer_agrees_with_torch_utils_benchmark():
    # One thread: on a small shared machine intra-op threads fight other processes for cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(512, 512), torch.randn(512, 512)  # ~3 ms per call on one core
        ours, theirs = alternate_with_torch_benchmark(CpuTimer(), lambda: torch.mm(a, b), seconds=2.0)
    finally:
        torch.set_num_threads(threads)
    assert ours == pytest.approx(theirs, rel=0.10), f"ours {ours:.3f} ms, torch.utils.benchmark {theirs:.3f} ms"


def test_first_call_is_reported_apart_from_the_steady_state():
    calls = itertools.count()

    def fn():
        if next(calls) == 0:
            time.sleep(0.05)  # stands in for compilation or autotuning
        # Plain Python, not a torch op: on a loaded 2-core machine an op's second intra-op thread
        # can wait a scheduler tick (~10 ms) for a core, which is not what this test is about.
        return sum(range(1000))

    m = measure(fn, CpuTimer(), MeasureSettings(warmup_s=0.0, budget_s=0.2))
    assert m.first_call_ms >= 50
    assert m.stats["latency_ms"] < 5


def test_a_prepared_decode_step_can_be_measured():
    layer = variants.build("gqa", TINY, seed=0)
    cache = layer.new_cache(2, 16)
    layer.prefill(torch.randn(2, 8, TINY.hidden), cache)
    step = layer.prepare("decode", torch.randn(2, 1, TINY.hidden), cache)
    m = measure(step, CpuTimer(), MeasureSettings(warmup_s=0.0, budget_s=0.1))
    assert m.stats["latency_ms"] > 0 and cache.length == 8  # the closure does not advance the cache


# -- the stopping rules, on scripted samples ----------------------------------------------------

def test_stops_on_ci_target_for_a_stable_closure():
    timer, _ = scripted(itertools.cycle([1.000, 1.001, 0.999]))
    m = measure(lambda: None, timer, MeasureSettings(warmup_reps=0, warmup_s=0.0, min_reps=10))
    assert m.stop_reason == "ci_target"
    assert len(m.samples_ms) == 10  # the first check is at min_reps
    assert m.stats["latency_ci_rel"] <= 0.01


def test_stops_on_budget_for_a_noisy_closure(seed):
    timer, clock = scripted(noisy_ms(seed))
    m = measure(lambda: None, timer, MeasureSettings(warmup_reps=0, warmup_s=0.0, budget_s=0.5,
                                                     target_ci_rel=0.001), clock=clock)
    assert m.stop_reason == "budget"
    assert m.timed_s >= 0.5 > m.timed_s - m.samples_ms[-1] / 1e3  # stopped at the first sample past it
    assert m.loop_wall_s == pytest.approx(m.first_call_ms / 1e3 + m.timed_s)  # the fake clock has no overhead
    assert m.overhead_s == pytest.approx(0.0, abs=1e-12)


def test_min_reps_is_respected_even_when_the_budget_is_spent(seed):
    timer, clock = scripted(noisy_ms(seed))
    m = measure(lambda: None, timer, MeasureSettings(warmup_reps=0, warmup_s=0.0, min_reps=12,
                                                     budget_s=1e-6), clock=clock)
    assert (m.stop_reason, len(m.samples_ms)) == ("budget", 12)
    timer, clock = scripted(itertools.repeat(1.0))
    m = measure(lambda: None, timer, MeasureSettings(warmup_reps=0, warmup_s=0.0, min_reps=12), clock=clock)
    assert (m.stop_reason, len(m.samples_ms)) == ("ci_target", 12)


def test_stops_at_max_reps(seed):
    timer, clock = scripted(noisy_ms(seed))
    m = measure(lambda: None, timer, MeasureSettings(warmup_reps=0, warmup_s=0.0, max_reps=30,
                                                     budget_s=math.inf, target_ci_rel=1e-6), clock=clock)
    assert (m.stop_reason, len(m.samples_ms)) == ("max_reps", 30)


def test_ci_rule_is_checked_only_every_few_reps(seed, monkeypatch):
    checks = []
    real_ci_rel = attnbench.harness.measure.timer.ci_rel
    monkeypatch.setattr(attnbench.harness.measure.timer, "ci_rel",
                        lambda xs, c: checks.append(len(xs)) or real_ci_rel(xs, c))
    timer, clock = scripted(noisy_ms(seed))
    m = measure(lambda: None, timer, MeasureSettings(warmup_reps=0, warmup_s=0.0, max_reps=2000,
                                                     budget_s=math.inf, target_ci_rel=1e-6), clock=clock)
    assert len(m.samples_ms) == 2000
    assert checks[0] == 5 and checks[-1] == 2000
    assert len(checks) < 60  # every max(5, 10% of n) reps: ~ log(2000/50)/log(1.1) + 10


def test_warmup_needs_both_the_count_and_the_time():
    # 15.625 ms = 1/64 s is exact in binary, so 8 samples reach 0.125 s exactly.
    for warmup_reps, warmup_s, expected in ((3, 0.125, 8), (20, 0.125, 20), (3, 0.0, 3)):
        timer, clock = scripted(itertools.repeat(15.625))
        m = measure(lambda: None, timer, MeasureSettings(warmup_reps=warmup_reps, warmup_s=warmup_s,
                                                         min_reps=6), clock=clock)
        assert m.warmup_reps == expected
        assert timer.calls == 1 + expected + len(m.samples_ms)  # first call, warm-up, samples
        assert m.warmup_wall_s == pytest.approx((1 + expected) * 15.625 / 1e3)


def test_warmup_is_capped():
    timer, clock = scripted(itertools.repeat(1.0))
    m = measure(lambda: None, timer, MeasureSettings(warmup_reps=3, warmup_s=1e9, min_reps=5, max_reps=50),
                clock=clock)
    assert m.warmup_reps == 50


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("warmup_reps", -1, "warmup_reps=-1 is not allowed: warmup_reps must be an integer >= 0"),
    ("warmup_reps", 2.5, "warmup_reps=2.5 is not allowed: warmup_reps must be an integer >= 0"),
    ("min_reps", 0, "min_reps=0 is not allowed: min_reps must be an integer >= 1"),
    ("max_reps", True, "max_reps=True is not allowed: max_reps must be an integer >= 1"),
    ("max_reps", 3, "max_reps=3 is not allowed: it must be >= min_reps=5"),
    ("warmup_s", -0.1, "warmup_s=-0.1 is not allowed: warmup_s must be a finite number >= 0"),
    ("target_ci_rel", float("nan"), "target_ci_rel=nan is not allowed: target_ci_rel must be a finite number >= 0"),
    ("budget_s", 0, r"budget_s=0 is not allowed: budget_s must be a number > 0 \(inf for no budget\)"),
    ("confidence", 1.0, "confidence=1.0 is not allowed: confidence must be a number strictly between 0 and 1"),
])
def test_bad_settings_name_the_field(field, value, needle):
    with pytest.raises(ValueError, match="^" + needle + "$"):
        MeasureSettings(**{field: value})


# -- CUDA logic on a fake backend ---------------------------------------------------------------

class FakeCuda:
    """Events, synchronize and flush that log their calls; elapsed times come from a script."""

    def __init__(self, elapsed_ms: Iterable[float]) -> None:
        self.log: list[str] = []
        self._elapsed = iter(elapsed_ms)
        self._names = itertools.cycle(["start", "end"])

    def event(self) -> FakeCuda.Event:
        return FakeCuda.Event(next(self._names), self)

    def synchronize(self) -> None:
        self.log.append("sync")

    def flush(self) -> None:
        self.log.append("flush")

    def fn(self) -> None:
        self.log.append("fn")

    class Event:
        def __init__(self, name: str, backend: FakeCuda) -> None:
            self.name, self.backend = name, backend

        def record(self) -> None:
            self.backend.log.append(f"{self.name}.record")

        def elapsed_time(self, end: FakeCuda.Event) -> float:
            assert (self.name, end.name) == ("start", "end")
            self.backend.log.append("elapsed")
            return next(self.backend._elapsed)


def test_cuda_timer_orders_flush_events_and_sync():
    fake = FakeCuda([1.5, 2.5])
    timer = CudaTimer("cuda:0", l2_flush=True, mode="per_call", events_factory=fake.event,
                      synchronize=fake.synchronize, flush=fake.flush)
    assert [timer.time_ms(fake.fn), timer.time_ms(fake.fn)] == [1.5, 2.5]
    # The flush is finished (sync) before the start event, so it cannot hide the first launch.
    one_call = ["flush", "sync", "start.record", "fn", "end.record", "sync", "elapsed"]
    assert fake.log == one_call * 2
    assert timer.name == "cuda_events_per_call_l2_flush"


def test_cuda_timer_without_flush_and_inside_measure():
    fake = FakeCuda(itertools.chain([100.0], itertools.repeat(2.0)))  # a slow first call, then steady
    timer = CudaTimer("cuda", mode="per_call", events_factory=fake.event, synchronize=fake.synchronize)
    m = measure(fake.fn, timer, FAST)
    assert "flush" not in fake.log and fake.log[:5] == ["start.record", "fn", "end.record", "sync", "elapsed"]
    assert m.first_call_ms == 100.0 and set(m.samples_ms) == {2.0} and m.stop_reason == "ci_target"


def test_cuda_pieces_refuse_a_cpu_device_and_a_stray_flush():
    with pytest.raises(ValueError, match="^CudaTimer needs a cuda device, got device='cpu'"):
        CudaTimer("cpu")
    with pytest.raises(ValueError, match="^flush= is given but l2_flush=False"):
        CudaTimer("cuda", flush=lambda: None, events_factory=lambda: None, synchronize=lambda: None)
    with pytest.raises(ValueError, match="^CUDA graphs need a cuda device, got device='cpu'$"):
        capture_cuda_graph(lambda: None, device="cpu")


# -- real CUDA (run on a GPU machine; skipped here) ---------------------------------------------

@pytest.mark.gpu
def test_cuda_timer_agrees_with_torch_utils_benchmark():
    # ~1 TFLOP per call: about 2 ms on an H100, so the host-side launch and sync that torch's
    # wall-clock timer includes (tens of us) stay well inside the tolerance.
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    ours, theirs = alternate_with_torch_benchmark(CudaTimer("cuda"), lambda: torch.mm(a, b), seconds=2.0)
    assert ours == pytest.approx(theirs, rel=0.10), f"ours {ours:.3f} ms, torch.utils.benchmark {theirs:.3f} ms"
    m = measure(lambda: torch.mm(a, b), CudaTimer("cuda"), MeasureSettings(budget_s=1.0))
    assert m.stats["latency_ms"] == pytest.approx(ours, rel=0.10)


@pytest.mark.gpu
def test_l2_flush_buffer_is_twice_l2_and_allocated_once():
    before = torch.cuda.memory_allocated()
    timer = CudaTimer("cuda", l2_flush=True)
    l2_bytes = torch.cuda.get_device_properties("cuda").L2_cache_size
    assert torch.cuda.memory_allocated() - before >= 2 * l2_bytes
    x = torch.randn(1 << 20, device="cuda")
    allocated = torch.cuda.memory_allocated()
    samples = [timer.time_ms(lambda: x.mul_(1.0)) for _ in range(10)]
    assert torch.cuda.memory_allocated() == allocated and all(s > 0 for s in samples)


@pytest.mark.gpu
def test_cuda_graph_replays_the_captured_work():
    counter = torch.zeros(1, device="cuda")
    replay = capture_cuda_graph(lambda: counter.add_(1), device="cuda", warmup=3)
    assert counter.item() == 3  # warm-up ran; capture records without running
    for _ in range(5):
        replay()
    assert counter.item() == 8

    a = torch.randn(256, 256, device="cuda")
    replay = capture_cuda_graph(lambda: a @ a, device="cuda")
    expected = a @ a
    a.mul_(2)  # static inputs: a replay reads the current values
    torch.testing.assert_close(replay(), 4 * expected)
    m = measure(replay, CudaTimer("cuda"), MeasureSettings(budget_s=0.2))
    assert m.stats["latency_ms"] > 0


def test_a_first_call_made_by_the_caller_is_not_made_again():
    calls = []
    m = measure(lambda: calls.append(1), CpuTimer(), MeasureSettings(warmup_reps=2, warmup_s=0.0, min_reps=6,
                                                                      max_reps=6), first_call_ms=123.0)
    assert m.first_call_ms == 123.0
    assert len(calls) == m.warmup_reps + m.stats["n_reps"] == 2 + 6
