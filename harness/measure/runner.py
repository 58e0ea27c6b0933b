"""Measure one case in named stages: support, prediction, numerics gate, build, first call, timing,
derived metrics; every outcome is a row (``attnbench.harness.measure.row`` assembles it).

Order matters: nothing is allocated before the case is known to be supported and to fit, and
nothing is timed before its output is known to be right. Set-up (weights, cache, inputs, masks,
folded weights, the compiled wrapper) happens before the timer starts; the timer only calls the
prepared zero-argument step.
"""

from __future__ import annotations

import gc
import logging
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from attnbench import variants
from attnbench.harness.logs import to_log_files
from attnbench.harness.measure import cpuload, numerics, trust
from attnbench.harness.measure.calibrate import Ceilings, last_level_cache_bytes
from attnbench.harness.measure.case import Case
from attnbench.harness.measure.deadline import Overran, deadline
from attnbench.harness.measure.dryrun import case_inputs
from attnbench.harness.measure.memory import available_bytes, held_after, step_peak_bytes, tensor_bytes
from attnbench.harness.measure.metrics import Measured, derive
from attnbench.harness.measure.predict import built_in_rates, predict_memory, predict_seconds
from attnbench.harness.measure.refusal import is_refusal
from attnbench.harness.measure.probes import CUDAGRAPH_COMPILE_MODES, full_output_error, sdpa_backends, watch_compile
from attnbench.harness.measure.row import CaseRow, add_trust
from attnbench.harness.measure.timer import CpuTimer, CudaTimer, MeasureSettings, Timer, capture_cuda_graph, measure
from attnbench.variants.cost import Cost
from attnbench.variants.implementation import Implementation
from attnbench.variants.registry import IMPLEMENTATIONS, VARIANTS

_log = logging.getLogger(__name__)


@dataclass
class RunContext:
    settings: MeasureSettings
    ceilings: Ceilings | None = None
    telemetry: Callable[[], AbstractContextManager] | None = None  # a sampler factory, None: no NVML
    check_numerics: bool = True
    max_step_s: float = 60.0  # skip cases whose roofline estimate per step exceeds this
    memory_headroom: float = 0.85  # fraction of free memory a case may be predicted to use
    telemetry_window_s: float = 1.0
    seed: int = 0
    job_columns: dict[str, Any] = field(default_factory=dict)
    # Measures the ceilings again (bypassing the cache): called once per run when a row beats them.
    recalibrate: Callable[[], Ceilings] | None = None
    recalibrated: bool = False
    # The machine's load per CPU, read at each case's start and end; None: trust.load_per_cpu (tests inject one).
    load: Callable[[], float | None] | None = None
    # Others' share of our CPUs during each case; None: cpuload.others_share (tests inject one).
    others: Callable[[], AbstractContextManager[cpuload.Share]] | None = None
    stage: Callable[[str], None] = lambda name: None  # told each stage of a case (harness.sweep.progress)


ABOVE_CEILING = 1.05  # a fraction of a roof above this is not timing noise


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    if text:
        return f"{type(error).__name__}: {text[0]}"[:500]
    # A bare exception (an assert) says nothing by itself: where it was raised does.
    frames = traceback.extract_tb(error.__traceback__)
    last = frames[-1] if frames else None
    where = f" at {'/'.join(Path(last.filename).parts[-2:])}:{last.lineno} in {last.name}" if last else ""
    return f"{type(error).__name__}{where} (the traceback is in the job log)"[:500]


def _timer(case: Case, device: torch.device) -> Timer:
    # The case's timing mode is part of its identity: the timer follows it (Case checks it fits the device).
    if device.type != "cuda":
        return CpuTimer()
    mode = "per_call" if case.timing == "cuda_events_per_call" else "held"
    return CudaTimer(device, l2_flush=case.l2_flush, mode=mode)


def _timer_bytes(case: Case, device: torch.device) -> int:
    """Bytes the timer allocates for itself: the L2 flush buffer (``attnbench.harness.measure.timer._l2_flusher``)."""
    if device.type == "cuda" and case.l2_flush:
        return 2 * torch.cuda.get_device_properties(device).L2_cache_size
    return 0


def run_case(case: Case, ctx: RunContext) -> dict[str, Any]:
    """Everything a case yields as one row; never raises for a case's own failure."""
    device = torch.device(case.device)
    load = ctx.load or trust.load_per_cpu
    load_start = load()
    # Build, numerics, first call and timing: a warning anywhere in them (a recompile limit, an
    # unfused fallback) is the case's, and goes to its row and to the job log.
    with (ctx.others or cpuload.others_share)() as others, trust.catching() as caught:
        if device.type != "cuda":
            row = _run_case(case, ctx)
        else:
            # Device N is the current device for the whole case: every bare synchronize, event, stream and
            # allocation inside (the layer's, torch's, inductor's) then means N, not device 0 (issue 15, item 9).
            with torch.cuda.device(device):
                row = _run_case(case, ctx)
    _trust(row, case, ctx, caught, load_start=load_start, load_end=load(), others=others.value)
    return row


def _trust(row: dict[str, Any], case: Case, ctx: RunContext, caught: trust.Caught, *, load_start: float | None,
           load_end: float | None, others: float | None) -> None:
    """The row's warnings, load and flags (harness.measure.trust)."""
    for text, count in caught.counts.items():
        _log.warning("%s: %s%s", case.label(), text, f" (x{count})" if count > 1 else "")
    reason = caught.fallback()
    if not reason and case.device.startswith("cuda") and "math" in (row.get("sdpa_backend") or "").split(","):
        reason = "SDPA ran its math backend on CUDA (no fused kernel took these shapes)"
    threads = torch.get_num_threads()
    busy = (any(trust.is_busy(load, own_threads=threads) for load in (load_start, load_end))
            or trust.is_crowded(others, own_threads=threads))
    above = row["status"] == "ok" and _above_ceiling(row)
    flags = trust.flags(row, target_ci_rel=ctx.settings.target_ci_rel, fallback=bool(reason), busy=busy,
                        above_ceiling=above)
    add_trust(row, warnings=caught.text(), fallback_reason=reason, load_start=load_start, load_end=load_end,
              others_cpu_share=others, flags=flags)
    if row["flags"]:
        _log.info("%s: flagged %s%s", case.label(), row["flags"], f" ({reason})" if reason else "")


@dataclass(frozen=True)
class Stop:
    """How a case ends before it is timed: ``skipped`` (it cannot or should not run) or ``incorrect``."""

    status: Literal["skipped", "incorrect"]
    reason: str


@dataclass(frozen=True)
class Supported:
    """What the support stage found, on the meta device: the implementation, the layer, its cost."""

    impl: Implementation
    meta: Any  # the variant's layer on the meta device: shapes only, no storage
    cost: Cost


@dataclass
class Built:
    """The case's objects on its device. ``step`` is what is timed (compiled, then maybe a graph
    replay); ``plain`` is the same step uncompiled, the full-shape check's reference."""

    layer: Any
    cache: Any
    x_BLD: torch.Tensor
    memory_BMD: torch.Tensor | None
    step: Callable[[], Any]
    prepared_bytes: int  # what the prepared closure holds (masks, folded weights)
    plain: Callable[[], Any] | None = None
    timer: Timer | None = None


def _run_case(case: Case, ctx: RunContext) -> dict[str, Any]:
    """The stages in order; each returns a ``Stop`` to end the case, and hands its columns to the row."""
    row = CaseRow.start(case, uses=VARIANTS.get(case.variant).uses, job_columns=ctx.job_columns,
                        ceilings=ctx.ceilings)
    built: Built | None = None
    try:
        supported = _support(case, row)
        if isinstance(supported, Stop):
            return row.finish(supported.status, supported.reason)
        stop = _predict(case, supported, ctx, row) or _gate(case, ctx, row)
        if stop is not None:
            return row.finish(stop.status, stop.reason)
        built = _build(case, ctx, row)
        stop = _first_call(case, supported, built, ctx, row) or _full_shape_check(case, built, row)
        if stop is not None:
            return row.finish(stop.status, stop.reason)
        _time(case, built, ctx, row)
        _peak_memory(case, built, row)
        _derive(case, supported.cost, ctx, row)
        return row.finish("ok", "")
    except torch.OutOfMemoryError as error:
        return row.finish("oom", _one_line(error))
    except Overran as error:
        return row.finish("skipped", f"max_step_s guard: {error} (measure.max_step_s={ctx.max_step_s:g})")
    except Exception as error:  # noqa: BLE001 - a failing case is a row, the sweep goes on
        if is_refusal(error):
            return row.finish("skipped", str(error).strip().splitlines()[0])
        # The row keeps one line; the traceback goes to the job log file (not the console).
        if not to_log_files(_log, f"{case.label()} failed", exc_info=error):
            _log.debug("%s failed", case.label(), exc_info=True)
        return row.finish("error", _one_line(error))
    finally:
        del built  # the case's tensors, released before the collection
        gc.collect()
        if case.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _support(case: Case, row: CaseRow) -> Supported | Stop:
    """Whether the implementation runs the case, and what the case costs: asked of the layer built on
    the meta device, so an unsupported case allocates nothing."""
    dtype = case.torch_dtype
    impl = IMPLEMENTATIONS.get(case.impl)
    meta = variants.build(case.variant, case.shape, attention=case.attention, dtype=dtype, device="meta")
    reason = impl.supports(meta, phase=case.phase, device=torch.device(case.device), dtype=dtype)
    if reason is not None:
        return Stop("skipped", reason)
    cost = impl.cost(meta, batch=case.batch, q_len=case.q_len, cached=case.cached, new_kv=case.new_kv)
    cache_bytes = meta.cache_layout(impl.path).nbytes(batch=case.batch, context=case.capacities, dtype=dtype,
                                                      page_size=case.page_size)
    too_large = row.support(case, cost, cache_bytes=cache_bytes, path=impl.path)
    if too_large is not None:
        return Stop("skipped", too_large)
    return Supported(impl=impl, meta=meta, cost=cost)


def _predict(case: Case, supported: Supported, ctx: RunContext, row: CaseRow) -> Stop | None:
    """Memory and time, predicted before anything is allocated: a case that would not fit, or whose
    step would outlast ``max_step_s``, is a skip."""
    device = torch.device(case.device)
    free = _free_bytes(device)
    predicted = predict_memory(case, supported.meta, supported.impl, supported.cost,
                               timer_bytes=_timer_bytes(case, device), seed=ctx.seed, max_s=ctx.max_step_s,
                               fits_bytes=ctx.memory_headroom * free)
    row.prediction(case, supported.cost, device, mem_bytes=predicted.total_bytes)
    if case.timing == "cuda_graph" and case.compile in CUDAGRAPH_COMPILE_MODES:
        return Stop("skipped", f"measure.cuda_graph=true with compile={case.compile} would capture inside inductor's "
                               "own CUDA graphs; valid: compile=default/none with cuda_graph=true, or cuda_graph=false")
    return _memory_guard(predicted.guard_bytes, free, device, ctx) or _step_guard(supported.cost, device, ctx, row)


def _free_bytes(device: torch.device) -> int:
    # The previous case's tensors are gone only once collected, and their blocks stay in PyTorch's
    # cache until emptied: read free memory after both, or a multirun skips cases that fit (item 4).
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return available_bytes(device)


def _memory_guard(guard_bytes: int, free: int, device: torch.device, ctx: RunContext) -> Stop | None:
    if guard_bytes > ctx.memory_headroom * free:
        return Stop("skipped", f"predicted {guard_bytes / 2**30:.1f} GiB > {ctx.memory_headroom:.0%} of "
                               f"{free / 2**30:.1f} GiB free on {device.type} (memory_headroom guard)")
    return None


def _step_guard(cost: Cost, device: torch.device, ctx: RunContext, row: CaseRow) -> Stop | None:
    if ctx.ceilings is not None and ctx.ceilings.quiet:
        peak_flops, peak_bytes_per_s = ctx.ceilings.matmul_tflops * 1e12, ctx.ceilings.bandwidth_gbps * 1e9
        rates = "calibrated ceilings"
    else:
        # A busy calibration's rates can be 100x low (oversubscribed threads): the guard would skip
        # cases that run fine, so it falls back to rates no device of this type beats.
        peak_flops, peak_bytes_per_s = built_in_rates(device)
        rates = f"built-in {device.type} rates, {'not calibrated' if ctx.ceilings is None else 'calibration busy'}"
    step_s = predict_seconds(cost, peak_flops=peak_flops, peak_bytes_per_s=peak_bytes_per_s)
    row.step_time(step_s)
    if step_s > ctx.max_step_s:
        return Stop("skipped", f"max_step_s guard: predicted {step_s:.3g} s per step at {rates} > "
                               f"max_step_s={ctx.max_step_s:g}")
    return None


def _gate(case: Case, ctx: RunContext, row: CaseRow) -> Stop | None:
    """The numerics gate: the case's output against a float64 reference on a reduced shape of it."""
    if not ctx.check_numerics:
        return None
    mark = time.perf_counter()
    ctx.stage("gate")
    err, max_abs, tol = numerics.compare(case, seed=ctx.seed)
    row.gate(rel_err=err, max_abs_err=max_abs, tol=tol, seconds=time.perf_counter() - mark)
    if not err <= tol:  # also catches NaN
        return Stop("incorrect", f"relative error {err:.3g} > {tol:g} against the float64 reference"
                                 + (" (fp8 cache tolerance)" if case.shape.kv_dtype != "auto" else ""))
    return None


def _build(case: Case, ctx: RunContext, row: CaseRow) -> Built:
    """Weights, cache, inputs and the prepared step on the case's device: set-up, never timed."""
    mark = time.perf_counter()
    ctx.stage("building")
    device, dtype = torch.device(case.device), case.torch_dtype
    if case.compile is not None:
        # A fresh compile cache per case: a sweep in one process would otherwise reach dynamo's
        # recompile limit and run later cases eagerly, silently, under a "compiled" label.
        torch._dynamo.reset()
    layer = variants.build(case.variant, case.shape, attention=case.attention, dtype=dtype, device=device,
                           seed=ctx.seed)
    cache = layer.new_cache(case.batch, case.capacities, impl=case.impl, page_size=case.page_size)
    if case.phase == "decode":
        # The prefix stands in for an earlier prefill; its values do not change the step's cost.
        cache.fill_random_(case.seq, seed=ctx.seed)
        if case.seq_lens is not None:
            cache.set_seq_lens(case.seq_lens)
    x_BLD, memory_BMD = case_inputs(case, layer.hidden, device, dtype, ctx.seed)
    # What the prepared closure holds (masks, folded weights) is part of the step's resident memory.
    step, prepared_bytes = held_after(lambda: layer.prepare(case.phase, x_BLD, cache, impl=case.impl,
                                                            compile=case.compile, memory_BMD=memory_BMD), device)
    row.build(kv_cache_bytes=cache.nbytes(), seconds=time.perf_counter() - mark)
    return Built(layer=layer, cache=cache, x_BLD=x_BLD, memory_BMD=memory_BMD, step=step,
                 prepared_bytes=prepared_bytes)


def _first_call(case: Case, supported: Supported, built: Built, ctx: RunContext, row: CaseRow) -> Stop | None:
    """The first call alone (compile, autotune, lazy initialisation); then a compiled step's output
    against the uncompiled one's, and which SDPA backends the uncompiled step runs."""
    built.timer = _timer(case, torch.device(case.device))
    ctx.stage("compiling" if case.compile is not None else "first call")
    # The roofline guard cannot see many small sequential steps (a recurrent prefill): stopped here.
    # Not a compiled first call: it holds the compile, which is no step's time (and is not interrupted).
    limit = ctx.max_step_s if case.compile is None else float("inf")
    with watch_compile(case.compile) as compiled, deadline(limit, "its first call"):
        first_call_ms = built.timer.time_ms(built.step)
    row.first_call(first_call_ms, compiled)
    if compiled.cudagraph_skipped:
        _log.warning("%s: inductor skipped CUDA graphs: %s", case.label(), compiled.cudagraph_skipped)
    built.plain = built.step
    if case.compile is not None:
        built.plain = built.layer.prepare(case.phase, built.x_BLD, built.cache, impl=case.impl,
                                          memory_BMD=built.memory_BMD)
        err = numerics.relative_error(built.step(), built.plain())
        row.compiled_error(err)
        if not err <= numerics.TOLERANCE[case.dtype]:
            return Stop("incorrect", f"compiled output differs from the uncompiled one by {err:.3g}")
    if getattr(supported.impl, "runs_on_fake_tensors", True):
        backends = sdpa_backends(built.plain)  # the eager step: a compiled graph hides its aten calls
    else:
        backends = ""  # flex: a compiled higher-order op, not SDPA, that no dispatch mode can watch
    row.sdpa_backend(backends)
    if case.device.startswith("cuda") and "math" in backends.split(","):
        _log.warning("%s: SDPA ran its math backend (no fused kernel took these shapes)", case.label())
    return None


def _full_shape_check(case: Case, built: Built, row: CaseRow) -> Stop | None:
    """One full-shape output of what is timed (graph replay, compiled code) against the eager step:
    the reduced-shape gate never reaches the backend or split that runs at this size (item 11)."""
    assert built.plain is not None, "the first call sets the eager step"
    if case.timing == "cuda_graph":
        built.step = capture_cuda_graph(built.step, device=torch.device(case.device))
    reference = _cloned(built.plain())
    err = full_output_error(built.step(), reference)
    del reference
    row.full_shape_error(err)
    if not err <= numerics.TOLERANCE[case.dtype]:
        return Stop("incorrect", f"full-shape output of the timed step differs from the eager one by {err:.3g}")
    return None


def _time(case: Case, built: Built, ctx: RunContext, row: CaseRow) -> None:
    """The timed region is ``measure`` calling the prepared step; telemetry is a window apart."""
    assert built.timer is not None, "the first call made the timer"
    ctx.stage("timing")
    measurement = measure(built.step, built.timer, ctx.settings, first_call_ms=row["first_call_ms"])
    row.timing(measurement, built.timer)
    if ctx.telemetry is not None:
        mark = time.perf_counter()
        readings = _telemetry_window(built.step, ctx, tokens_per_call=case.batch * case.q_len)
        row.telemetry(readings, seconds=time.perf_counter() - mark)


def _peak_memory(case: Case, built: Built, row: CaseRow) -> None:
    mark = time.perf_counter()
    resident = tensor_bytes(built.layer, *built.cache.buffers.values(), built.x_BLD,
                            *(t for t in (built.memory_BMD,) if t is not None))
    # The flush buffer is the timer's, not the step's (item 3); a graph replay allocates nothing,
    # so under cuda_graph the step's temporaries are its private pool, added by graph_pool_bytes.
    peak = (step_peak_bytes(built.step, torch.device(case.device), resident_bytes=resident + built.prepared_bytes)
            - getattr(built.timer, "flush_bytes", 0) + getattr(built.step, "graph_pool_bytes", 0))
    row.peak_memory(peak, seconds=time.perf_counter() - mark)


def _derive(case: Case, cost: Cost, ctx: RunContext, row: CaseRow) -> None:
    """The derived metrics (harness.measure.metrics); a row above its roof is looked at again."""
    row.derived(_metrics(case, cost, row["latency_ms"] / 1e3, ctx.ceilings), ctx.ceilings)
    if _above_ceiling(row.values):
        _remeasure(row, case, cost, ctx)


def _above_ceiling(row: dict[str, Any]) -> bool:
    return max(row.get("frac_peak_flops") or 0, row.get("frac_peak_bandwidth") or 0) > ABOVE_CEILING


def _remeasure(row: CaseRow, case: Case, cost: Cost, ctx: RunContext) -> None:
    """A row above its roof: either its working set fits in the last-level cache (then it may), or
    the ceilings are wrong: measure them again once per run, use the new ones from this row on."""
    llc = last_level_cache_bytes(case.device)
    if (row.values.get("frac_peak_flops") or 0) <= ABOVE_CEILING and 0 < cost.bytes_min <= llc:
        _log.info("%s: %.2fx the memory ceiling; its %d bytes fit in the %d-byte last-level cache",
                 case.label(), row["frac_peak_bandwidth"], cost.bytes_min, llc)
        return
    if ctx.recalibrated or ctx.recalibrate is None:
        _log.warning("%s is above its ceiling (flops %.2fx, bandwidth %.2fx) %s", case.label(),
                    row.values.get("frac_peak_flops") or 0, row.values.get("frac_peak_bandwidth") or 0,
                    "after the ceilings were measured again this run" if ctx.recalibrated
                    else "and this run cannot measure them again")
        return
    ctx.recalibrated = True
    _log.warning("%s is above its ceiling (flops %.2fx, bandwidth %.2fx): measuring the ceilings again",
                case.label(), row.values.get("frac_peak_flops") or 0, row.values.get("frac_peak_bandwidth") or 0)
    ctx.ceilings = ctx.recalibrate()
    row.derived(_metrics(case, cost, row["latency_ms"] / 1e3, ctx.ceilings), ctx.ceilings)


def _metrics(case: Case, cost: Cost, latency_s: float, ceilings: Ceilings | None) -> dict[str, float | None]:
    return derive(Measured(case, cost, latency_s, ceilings.bandwidth_gbps if ceilings else None,
                           ceilings.matmul_tflops if ceilings else None))


def _telemetry_window(step: Callable[[], Any], ctx: RunContext, *, tokens_per_call: int) -> dict[str, Any]:
    """NVML readings over a window of back-to-back steps, apart from the latency samples.

    Apart, because the sampler thread takes the GIL as it polls and would perturb launch-bound
    timings; at least ``telemetry_window_s`` long, because NVML's energy counter ticks about every
    100 ms and power is a 1 s average on recent GPUs.
    """
    assert ctx.telemetry is not None
    calls = 0
    with ctx.telemetry() as sampler:
        end = time.perf_counter() + ctx.telemetry_window_s
        while calls == 0 or time.perf_counter() < end:
            step()
            calls += 1
        torch.cuda.synchronize(torch.cuda.current_device())  # run_case made the case's device current
    return sampler.summary(tokens=calls * tokens_per_call)


def _cloned(value: Any) -> Any:
    # A graph's static output is overwritten by the next replay: keep the reference apart.
    return value.clone() if isinstance(value, torch.Tensor) else type(value)(_cloned(v) for v in value)


