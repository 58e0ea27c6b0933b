"""Time zero-argument closures: one ``Timer`` interface, a CPU and a CUDA backend, the adaptive loop.

The harness only ever times closures returned by ``layer.prepare(...)``: set-up is never inside a
sample. ``measure`` times the first call alone (it carries compilation, autotuning and lazy
initialisation, reported apart from the steady state), warms up, then repeats until the median's
confidence interval is tight enough, the time budget runs out, or ``max_reps`` is reached.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol

import torch

from harness.measure.stats import ci_rel, summarize

StopReason = Literal["ci_target", "budget", "max_reps"]

# The CI stopping rule sorts the samples: check it every max(_CHECK_MIN_REPS, 10% of n) reps so
# its cost stays O(log n) per repetition even at max_reps = 10 000.
_CHECK_MIN_REPS = 5
_CHECK_FRACTION = 0.10


class Timer(Protocol):
    """Times one call of ``fn`` and returns its duration in milliseconds."""

    name: str

    def time_ms(self, fn: Callable[[], object]) -> float: ...


class CpuTimer:
    """Wall-clock time of one call, from the monotonic ``perf_counter_ns`` (ns resolution)."""

    name = "cpu_wall"

    def time_ms(self, fn: Callable[[], object]) -> float:
        start_ns = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - start_ns) / 1e6


class Event(Protocol):
    """What ``CudaTimer`` needs of an event; ``torch.cuda.Event`` via ``_StreamEvent``, or a fake."""

    def record(self) -> None: ...

    def elapsed_time(self, end: Event) -> float: ...


class _StreamEvent:
    """A timing ``torch.cuda.Event`` recorded on ``device``'s current stream (not the current device's)."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._event = torch.cuda.Event(enable_timing=True)

    def record(self) -> None:
        self._event.record(torch.cuda.current_stream(self._device))

    def elapsed_time(self, end: _StreamEvent) -> float:
        return self._event.elapsed_time(end._event)


class CudaTimer:
    """GPU time of one call between two CUDA events, read after a synchronize.

    Events time the stream, not the host, so asynchronous launches are measured when they run.
    An eager closure of many tiny kernels still includes launch gaps; ``capture_cuda_graph``
    removes them. With ``l2_flush`` a buffer of twice the L2 size is written before each call
    (outside the events), so every repetition starts with a cold L2 as a real decode step reading
    a large cache does (as ``triton.testing.do_bench`` does with its 256 MB buffer). The buffer is
    allocated once here, so it counts in the allocator's peak while this timer is alive.

    ``events_factory``, ``synchronize`` and ``flush`` replace the CUDA pieces (tests use fakes).
    """

    def __init__(self, device: torch.device | str, *, l2_flush: bool = False,
                 events_factory: Callable[[], Event] | None = None,
                 synchronize: Callable[[], object] | None = None,
                 flush: Callable[[], object] | None = None) -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CudaTimer needs a cuda device, got device={str(device)!r}; use CpuTimer on cpu")
        if flush is not None and not l2_flush:
            raise ValueError("flush= is given but l2_flush=False; pass l2_flush=True to flush before each call")
        self.l2_flush = l2_flush
        self.name = "cuda_events_l2_flush" if l2_flush else "cuda_events"
        self._new_event = events_factory or partial(_StreamEvent, self.device)
        self._synchronize = synchronize or partial(torch.cuda.synchronize, self.device)
        self._flush = flush if flush is not None or not l2_flush else _l2_flusher(self.device)

    def time_ms(self, fn: Callable[[], object]) -> float:
        start, end = self._new_event(), self._new_event()
        if self._flush is not None:
            self._flush()  # queued before the start event on the same stream: not in the sample
        start.record()
        fn()
        end.record()
        self._synchronize()  # elapsed_time is only valid once the end event has completed
        return float(start.elapsed_time(end))


def _l2_flusher(device: torch.device) -> Callable[[], object]:
    # Writes go through L2 on NVIDIA GPUs, so writing 2x its size evicts whatever the last call left.
    l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size
    scratch = torch.empty(2 * l2_bytes, dtype=torch.uint8, device=device)
    return scratch.zero_


def capture_cuda_graph(fn: Callable[[], object], *, device: torch.device | str,
                       warmup: int = 3) -> Callable[[], object]:
    """A closure replaying one captured call of ``fn`` as a CUDA graph (no per-kernel launch cost).

    ``fn`` must close over its tensors (static inputs) and must not synchronize or read values on
    the host. It is first run ``warmup`` times on a side stream, as the PyTorch CUDA-graph docs
    require, so lazy initialisation (cuBLAS workspaces, autotuning) happens before capture. The
    closure returns the graph's static output, overwritten by each replay.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs need a cuda device, got device={str(device)!r}")
    if warmup < 1:
        raise ValueError(f"warmup={warmup!r} is not allowed: capture needs at least 1 warm-up call")
    with torch.cuda.device(device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn()

    def replay() -> object:
        graph.replay()
        return static_out

    return replay


@dataclass(frozen=True)
class MeasureSettings:
    """How long to warm up and when to stop repeating. Times in seconds, the CI target relative."""

    warmup_reps: int = 3  # warm up for at least this many calls after the first ...
    warmup_s: float = 0.2  # ... and at least this long (both), capped at max(warmup_reps, max_reps) calls
    min_reps: int = 5  # never stop before this many samples
    max_reps: int = 10_000
    target_ci_rel: float = 0.01  # stop when the CI half-width is <= 1% of the median; 0 disables
    budget_s: float = 5.0  # wall time for the repetitions (after warm-up); checked after min_reps
    confidence: float = 0.95

    def __post_init__(self) -> None:
        _check_int("warmup_reps", self.warmup_reps, minimum=0)
        _check_int("min_reps", self.min_reps, minimum=1)
        _check_int("max_reps", self.max_reps, minimum=1)
        if self.max_reps < self.min_reps:
            raise ValueError(f"max_reps={self.max_reps} is not allowed: it must be >= min_reps={self.min_reps}")
        _check_float("warmup_s", self.warmup_s, "a finite number >= 0", lambda v: 0.0 <= v < math.inf)
        _check_float("target_ci_rel", self.target_ci_rel, "a finite number >= 0", lambda v: 0.0 <= v < math.inf)
        _check_float("budget_s", self.budget_s, "a number > 0 (inf for no budget)", lambda v: v > 0.0)
        _check_float("confidence", self.confidence, "a number strictly between 0 and 1", lambda v: 0.0 < v < 1.0)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be an integer >= {minimum}")


def _check_float(name: str, value: object, allowed: str, ok: Callable[[float], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not ok(float(value)):
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be {allowed}")


@dataclass(frozen=True)
class Measurement:
    """One closure's timing. ``samples_ms`` keeps every steady-state sample; ``stats`` summarizes them."""

    first_call_ms: float  # the very first call, alone: compile, autotune, lazy init
    warmup_reps: int  # warm-up calls made after the first call (not in samples_ms)
    samples_ms: tuple[float, ...]
    stop_reason: StopReason
    stats: dict[str, float | int]  # harness.measure.stats.summarize(samples_ms)
    loop_wall_s: float  # wall time of the whole measure() call, first call and warm-up included
    warmup_wall_s: float  # wall time of the first call and the warm-up
    timed_s: float  # sum of samples_ms, in seconds

    @property
    def overhead_s(self) -> float:
        """Wall time of the repetition loop spent outside the samples (sync, flush, stop checks)."""
        return self.loop_wall_s - self.warmup_wall_s - self.timed_s


def measure(fn: Callable[[], object], timer: Timer, settings: MeasureSettings = MeasureSettings(), *,
            clock: Callable[[], float] = time.perf_counter, first_call_ms: float | None = None) -> Measurement:
    """Time ``fn`` with ``timer`` until ``settings`` say stop; ``clock`` (seconds) paces the budget.

    ``first_call_ms``: the caller already made and timed the first call (to check a compiled
    step's output before timing it), so it is recorded and not made again.

    The median is the statistic, not the mean: preemption on shared machines adds rare, large,
    one-sided outliers that the median ignores (see ``harness.measure.stats``).
    """
    start_s = clock()
    if first_call_ms is None:
        first_call_ms = timer.time_ms(fn)
    # The first call may have compiled (lots of cyclic garbage): collect it now, then pause the
    # collector for warm-up and repetitions, as ``timeit`` does, so no collection lands in a sample.
    gc.collect()
    with _gc_paused():
        warmup_reps = _warm_up(fn, timer, settings, clock)
        loop_start_s = clock()
        samples, stop_reason = _repeat(fn, timer, settings, clock)
    return Measurement(
        first_call_ms=first_call_ms,
        warmup_reps=warmup_reps,
        samples_ms=samples,
        stop_reason=stop_reason,
        stats=summarize(samples, settings.confidence),
        loop_wall_s=clock() - start_s,
        warmup_wall_s=loop_start_s - start_s,
        timed_s=sum(samples) / 1e3,
    )


def _warm_up(fn: Callable[[], object], timer: Timer, settings: MeasureSettings,
             clock: Callable[[], float]) -> int:
    """Calls until both ``warmup_reps`` and ``warmup_s`` are reached (at most the cap); returns the count.

    Time counts from after the first call: a long compile does not warm the clocks or caches of
    the steady state. Calls go through the timer so that its sync and flush are warm too.
    """
    cap = max(settings.warmup_reps, settings.max_reps)
    start_s = clock()
    reps = 0
    while reps < cap and (reps < settings.warmup_reps or clock() - start_s < settings.warmup_s):
        timer.time_ms(fn)
        reps += 1
    return reps


def _repeat(fn: Callable[[], object], timer: Timer, settings: MeasureSettings,
            clock: Callable[[], float]) -> tuple[tuple[float, ...], StopReason]:
    start_s = clock()
    samples_ms: list[float] = []
    next_check = settings.min_reps
    while True:
        samples_ms.append(timer.time_ms(fn))
        n = len(samples_ms)
        if n < settings.min_reps:
            continue
        if settings.target_ci_rel > 0 and (n >= next_check or n == settings.max_reps):
            next_check = n + max(_CHECK_MIN_REPS, math.ceil(_CHECK_FRACTION * n))
            if ci_rel(samples_ms, settings.confidence) <= settings.target_ci_rel:
                return tuple(samples_ms), "ci_target"
        if n >= settings.max_reps:
            return tuple(samples_ms), "max_reps"
        if clock() - start_s >= settings.budget_s:
            return tuple(samples_ms), "budget"


@contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
