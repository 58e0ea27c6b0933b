"""``bench(fn)``: the harness's timer on any zero-argument callable, attnbench's ``do_bench``.

    import torch, harness
    a = torch.randn(512, 512)
    result = harness.bench(lambda: a @ a, device="cpu", budget_s=1.0)
    print(result)             # median, its CI, n, first call, why it stopped, which timer
    result.median_ms, result.ci_rel, result.samples_ms

It is the same loop that times every case of a sweep (``attnbench.harness.measure.timer.measure``): the first
call is timed alone, then warm-up, then repetitions until the median's confidence interval is
within ``target_ci_rel``, the budget runs out, or ``max_reps`` is reached. Only the timer is chosen
here: CUDA events on a GPU (optionally with a cold L2 or a CUDA-graph replay), the wall clock on a
CPU. Set-up belongs outside ``fn``, as with ``layer.prepare``: everything ``fn`` does is timed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace

import torch

from attnbench.harness.errors import UserError
from attnbench.harness.measure.parse import resolve_device
from attnbench.harness.measure.timer import (CpuTimer, CudaTimer, MeasureSettings, StopReason, Timer,
                                             capture_cuda_graph, measure)

_SETTING_NAMES = tuple(f.name for f in fields(MeasureSettings))


@dataclass(frozen=True)
class BenchResult:
    """One callable's timing; all times in milliseconds."""

    median_ms: float
    ci_low_ms: float  # the median's distribution-free confidence interval (harness.measure.stats)
    ci_high_ms: float
    ci_rel: float  # CI half-width / median; inf when too few samples for any CI
    confidence: float
    n: int  # steady-state samples, len(samples_ms)
    samples_ms: tuple[float, ...]
    first_call_ms: float  # the very first call, alone: compilation, autotuning, lazy initialisation
    warmup_reps: int  # calls after the first and before the samples
    stop_reason: StopReason  # ci_target | budget | max_reps
    timer: str  # cpu_wall | cuda_events | cuda_events_l2_flush
    stats: Mapping[str, float | int]  # every latency column of a result row (mean, std, p10, p90, ...)

    def __str__(self) -> str:
        ci = "no CI: too few samples" if math.isinf(self.ci_rel) else (
            f"{self.confidence:.0%} CI {self.ci_low_ms:.4g}-{self.ci_high_ms:.4g} ms, +-{self.ci_rel:.1%}")
        return (f"{self.median_ms:.4g} ms ({ci}, n={self.n}) first call {self.first_call_ms:.4g} ms, "
                f"stop: {self.stop_reason}, {self.timer}")


def bench(fn: Callable[[], object], *, device: str | torch.device | None = None,
          settings: MeasureSettings | None = None, l2_flush: bool = False, cuda_graph: bool = False,
          **setting_overrides: float | int) -> BenchResult:
    """Time ``fn()`` with the harness's timer and stopping rule; returns its ``BenchResult``.

    ``device``: where ``fn`` runs, which picks the timer: ``None``/``"auto"`` (cuda if present, else
    cpu, as ``device=auto`` in a sweep), ``"cpu"`` (wall clock), ``"cuda"``/``"cuda:<index>"``
    (CUDA events on that device's current stream, where ``fn`` must launch its work).
    ``settings``: a ``MeasureSettings`` (default: ``MeasureSettings()``, as ``measure=default``);
    keyword overrides replace its fields, e.g. ``budget_s=1.0, target_ci_rel=0.02``.
    ``l2_flush``: write twice the L2 size before each sample (a cold cache, as a decode step sees).
    ``cuda_graph``: time replays of one captured call (no launch gaps); ``fn`` must be capturable.
    """
    _check_callable(fn)
    unknown = sorted(set(setting_overrides) - set(_SETTING_NAMES))
    if unknown:
        raise UserError(f"bench() got an unknown setting {unknown[0]!r}; valid: {', '.join(_SETTING_NAMES)}")
    if settings is not None and not isinstance(settings, MeasureSettings):
        raise UserError(f"settings={settings!r} is not allowed: pass a MeasureSettings or None")
    try:
        chosen = replace(settings or MeasureSettings(), **setting_overrides)
        where = resolve_device("auto" if device is None else str(device))
    except ValueError as error:
        raise UserError(str(error)) from None
    timer = _timer(where, l2_flush=l2_flush, cuda_graph=cuda_graph)
    first_call_ms = timer.time_ms(fn)
    step = capture_cuda_graph(fn, device=where) if cuda_graph else fn
    measurement = measure(step, timer, chosen, first_call_ms=first_call_ms)
    stats = measurement.stats
    return BenchResult(median_ms=float(stats["latency_ms"]), ci_low_ms=float(stats["latency_ci_low_ms"]),
                       ci_high_ms=float(stats["latency_ci_high_ms"]), ci_rel=float(stats["latency_ci_rel"]),
                       confidence=chosen.confidence, n=len(measurement.samples_ms),
                       samples_ms=measurement.samples_ms, first_call_ms=measurement.first_call_ms,
                       warmup_reps=measurement.warmup_reps, stop_reason=measurement.stop_reason, timer=timer.name,
                       stats=dict(stats))


def _check_callable(fn: object) -> None:
    if not callable(fn):
        shown = repr(fn)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise UserError(f"bench() needs a zero-argument callable, got {type(fn).__name__} {shown}; "
                        "wrap a call as lambda: f(x)")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: calling them will tell
        return
    try:
        signature.bind()
    except TypeError:
        raise UserError(f"bench() calls fn with no arguments, but {getattr(fn, '__name__', fn)!s}{signature} "
                        "needs some; wrap the call as lambda: f(x)") from None


def _timer(device: torch.device, *, l2_flush: bool, cuda_graph: bool) -> Timer:
    if device.type == "cuda":
        return CudaTimer(device, l2_flush=l2_flush)
    # Explicit, not a silent fallback: a CPU wall clock has neither an L2 flush nor graphs.
    for name, value in (("l2_flush", l2_flush), ("cuda_graph", cuda_graph)):
        if value:
            raise UserError(f"{name}=True applies to cuda devices only, got device={device.type!r}")
    return CpuTimer()
