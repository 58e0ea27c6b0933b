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

from attnbench.harness.measure.stats import ci_rel, summarize

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

    def query(self) -> bool: ...


class _StreamEvent:
    """A timing ``torch.cuda.Event`` recorded on ``device``'s current stream (not the current device's)."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._event = torch.cuda.Event(enable_timing=True)

    def record(self) -> None:
        self._event.record(torch.cuda.current_stream(self._device))

    def elapsed_time(self, end: _StreamEvent) -> float:
        return self._event.elapsed_time(end._event)

    def query(self) -> bool:
        return self._event.query()


CudaTiming = Literal["held", "per_call"]
CUDA_TIMINGS: tuple[str, ...] = ("held", "per_call")
# A held sample enqueues enough calls to last about this long on the GPU (event resolution is ~0.5 us
# and the hold's own release costs a few us), and never more than this many calls (the driver's
# queue of pending launches is finite: past it the host blocks and the hold may run out).
BATCH_TARGET_MS = 1.0
MAX_BATCH = 64


class CudaTimer:
    """GPU time of a call between CUDA events; ``held`` (the default) excludes the host's dispatch.

    ``per_call``: record, call, record, synchronize. Each sample starts on an idle GPU, so it counts
    the Python dispatch of every kernel in the step: an MLA decode step of ~140 small ops measures
    the host, not the GPU (issue 15, item 1).

    ``held`` (nvbench's blocking kernel): a spin kernel holds the stream while the host enqueues
    ``batch`` calls, each between its own pair of events (and after its own flush); the GPU then
    runs them back to back, and a sample is the mean of the per-call event intervals. If the hold
    ran out before the host finished enqueueing, the sample may include dispatch time: counted in
    ``hold_expired`` (a row column; timed samples only) and the next hold is twice as long and the
    batch half as large (the driver's queue of pending launches may have been the limit). ``fit(fn)`` picks the
    batch and the hold from a few timed calls; before it, a sample is one held call.

    With ``l2_flush`` a buffer of twice the L2 size is written before each call, outside that
    call's events: the flush is done (stream order) before the start event, so it cannot hide the
    first launch. The buffer is allocated here; ``flush_bytes`` says how much, so the peak-memory
    reading can leave it out.

    ``events_factory``, ``synchronize``, ``flush`` and ``hold`` (spin the stream for ms) replace the
    CUDA pieces (tests use fakes).
    """

    def __init__(self, device: torch.device | str, *, l2_flush: bool = False, mode: CudaTiming = "held",
                 events_factory: Callable[[], Event] | None = None,
                 synchronize: Callable[[], object] | None = None,
                 flush: Callable[[], object] | None = None,
                 hold: Callable[[float], object] | None = None,
                 host_clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CudaTimer needs a cuda device, got device={str(device)!r}; use CpuTimer on cpu")
        if mode not in CUDA_TIMINGS:
            raise ValueError(f"mode={mode!r} is not one of: {', '.join(CUDA_TIMINGS)}")
        if flush is not None and not l2_flush:
            raise ValueError("flush= is given but l2_flush=False; pass l2_flush=True to flush before each call")
        self.l2_flush, self.mode = l2_flush, mode
        self.name = ("cuda_events" if mode == "held" else "cuda_events_per_call") + ("_l2_flush" if l2_flush else "")
        self._new_event = events_factory or partial(_StreamEvent, self.device)
        self._synchronize = synchronize or partial(torch.cuda.synchronize, self.device)
        self.flush_bytes = 0
        if flush is None and l2_flush:
            flush, self.flush_bytes = _l2_flusher(self.device)
        self._flush = flush
        self._hold = hold if hold is not None or mode != "held" else _spinner(self.device)
        self._host_clock = host_clock
        self.batch = 1
        self.hold_ms = 1.0
        self.hold_expired = 0  # held samples whose hold ran out before the last call was enqueued

    def fit(self, fn: Callable[[], object], *, probes: int = 3) -> None:
        """Choose ``batch`` (calls per held sample) and ``hold_ms`` from ``probes`` per-call timings."""
        if self.mode != "held":
            return
        host_ms = []
        for _ in range(probes):
            t0 = self._host_clock()
            self._one_call(fn)
            host_ms.append((self._host_clock() - t0) * 1e3)
        # A held single call gives the GPU's time alone (a per-call probe would count the dispatch).
        self.batch, self.hold_ms = 1, 2.0 * min(host_ms) + 0.1
        per_call = max(min(self._held(fn) for _ in range(probes)), 1e-6)
        self.batch = max(1, min(MAX_BATCH, math.ceil(BATCH_TARGET_MS / per_call)))
        # The host's time per call (sync included, an upper bound on its dispatch) times the batch,
        # doubled: holding too long costs wall time, holding too short leaks dispatch into a sample.
        self.hold_ms = 2.0 * self.batch * min(host_ms) + 0.1
        self.hold_expired = 0

    def begin_samples(self) -> None:
        """Warm-up is over: ``hold_expired`` counts the timed samples only (warm-up settles the batch)."""
        self.hold_expired = 0

    def time_ms(self, fn: Callable[[], object]) -> float:
        return self._held(fn) if self.mode == "held" else self._one_call(fn)

    def _one_call(self, fn: Callable[[], object]) -> float:
        start, end = self._new_event(), self._new_event()
        if self._flush is not None:
            self._flush()
            self._synchronize()  # the flush has finished before the start event: it hides no launch
        start.record()
        fn()
        end.record()
        self._synchronize()  # elapsed_time is only valid once the end event has completed
        return float(start.elapsed_time(end))

    def _held(self, fn: Callable[[], object]) -> float:
        pairs = [(self._new_event(), self._new_event()) for _ in range(self.batch)]
        self._synchronize()
        self._hold(self.hold_ms)
        for start, end in pairs:
            if self._flush is not None:
                self._flush()  # in stream order before this call's start event: outside the interval
            start.record()
            fn()
            end.record()
        if pairs[0][0].query():  # the GPU already reached the first call: the hold ran out
            # Either the hold was short or the driver's launch queue filled (the host then blocks until
            # the GPU drains it): a longer hold and half the batch address both.
            self.hold_expired += 1
            self.hold_ms *= 2
            self.batch = max(1, self.batch // 2)
        self._synchronize()
        return float(sum(s.elapsed_time(e) for s, e in pairs) / len(pairs))


def _l2_flusher(device: torch.device) -> tuple[Callable[[], object], int]:
    # Writes go through L2 on NVIDIA GPUs, so writing 2x its size evicts whatever the last call left.
    l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size
    scratch = torch.empty(2 * l2_bytes, dtype=torch.uint8, device=device)
    return scratch.zero_, scratch.nbytes


def _spinner(device: torch.device) -> Callable[[float], object]:
    """Spin ``device``'s current stream for about ``ms`` (``torch.cuda._sleep`` counts clock cycles:
    the cycles per ms are measured once here, as the clock runs now)."""
    cycles = 1_000_000
    with torch.cuda.device(device):
        torch.cuda._sleep(cycles)  # warm: the first launch loads the kernel
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
    cycles_per_ms = cycles / max(start.elapsed_time(end), 1e-3)

    def hold(ms: float) -> None:
        with torch.cuda.device(device):
            torch.cuda._sleep(int(ms * cycles_per_ms))

    return hold


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
        torch.cuda.synchronize(device)
        reserved, allocated = torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn()
        torch.cuda.synchronize(device)
        # The graph's private pool keeps the step's temporaries reserved (a replay allocates nothing, so
        # the allocator's peak never sees them): what the capture reserved beyond what stays live.
        pool_bytes = max(0, (torch.cuda.memory_reserved(device) - reserved)
                         - (torch.cuda.memory_allocated(device) - allocated))

    def replay() -> object:
        graph.replay()
        return static_out

    replay.graph_pool_bytes = pool_bytes  # type: ignore[attr-defined] - read by the runner's peak memory
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
    one-sided outliers that the median ignores (see ``attnbench.harness.measure.stats``).
    """
    start_s = clock()
    if first_call_ms is None:
        first_call_ms = timer.time_ms(fn)
    # The first call may have compiled (lots of cyclic garbage): collect it now, then pause the
    # collector for warm-up and repetitions, as ``timeit`` does, so no collection lands in a sample.
    gc.collect()
    fit = getattr(timer, "fit", None)
    if fit is not None:
        fit(fn)  # a batching timer picks its calls per sample from the warm step
    with _gc_paused():
        warmup_reps = _warm_up(fn, timer, settings, clock)
        begin = getattr(timer, "begin_samples", None)
        if begin is not None:
            begin()
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
