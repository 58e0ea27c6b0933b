"""Measure one case: support, prediction, numerics, then timing; every outcome is a row.

Order matters: nothing is allocated before the case is known to be supported and to fit, and
nothing is timed before its output is known to be right. Set-up (weights, cache, inputs, masks,
folded weights, the compiled wrapper) happens before the timer starts; the timer only calls the
prepared zero-argument step.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

import variants
from harness.measure import numerics, trust
from harness.measure.calibrate import Ceilings, last_level_cache_bytes
from harness.measure.case import DTYPES, Case
from harness.measure.dryrun import case_inputs
from harness.measure.memory import available_bytes, held_after, step_peak_bytes, tensor_bytes
from harness.measure.metrics import Measured, derive
from harness.measure.predict import built_in_rates, predict_memory, predict_seconds
from harness.measure.probes import CUDAGRAPH_COMPILE_MODES, full_output_error, sdpa_backends, watch_compile
from harness.measure.timer import CpuTimer, CudaTimer, MeasureSettings, Timer, capture_cuda_graph, measure
from harness.results import schema
from variants.registry import IMPLEMENTATIONS, VARIANTS
from variants.schedule import model_kv_bytes_per_token

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
    stage: Callable[[str], None] = lambda name: None  # told each stage of a case (harness.sweep.progress)


ABOVE_CEILING = 1.05  # a fraction of a roof above this is not timing noise


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def _timer(case: Case, device: torch.device) -> Timer:
    # The case's timing mode is part of its identity: the timer follows it (Case checks it fits the device).
    if device.type != "cuda":
        return CpuTimer()
    return CudaTimer(device, l2_flush=case.l2_flush, mode="per_call" if case.timing == "cuda_events_per_call" else "held")


def _timer_bytes(case: Case, device: torch.device) -> int:
    """Bytes the timer allocates for itself: the L2 flush buffer (``harness.measure.timer._l2_flusher``)."""
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
    with trust.catching() as caught:
        if device.type != "cuda":
            row = _run_case(case, ctx)
        else:
            # Device N is the current device for the whole case: every bare synchronize, event, stream and
            # allocation inside (the layer's, torch's, inductor's) then means N, not device 0 (issue 15, item 9).
            with torch.cuda.device(device):
                row = _run_case(case, ctx)
    _trust(row, case, ctx, caught, load_start=load_start, load_end=load())
    return row


def _trust(row: dict[str, Any], case: Case, ctx: RunContext, caught: trust.Caught, *, load_start: float | None,
           load_end: float | None) -> None:
    """The row's warnings, load and flags (harness.measure.trust)."""
    for text, count in caught.counts.items():
        _log.warning("%s: %s%s", case.label(), text, f" (x{count})" if count > 1 else "")
    reason = caught.fallback()
    if not reason and case.device.startswith("cuda") and "math" in (row.get("sdpa_backend") or "").split(","):
        reason = "SDPA ran its math backend on CUDA (no fused kernel took these shapes)"
    threads = torch.get_num_threads()
    busy = any(trust.is_busy(load, own_threads=threads) for load in (load_start, load_end))
    above = row["status"] == "ok" and _above_ceiling(row)
    row.update(warnings=caught.text(), fallback_reason=reason, load_start=load_start, load_end=load_end,
               remeasured=False)
    row["flags"] = trust.flags(row, target_ci_rel=ctx.settings.target_ci_rel, fallback=bool(reason), busy=busy,
                               above_ceiling=above)
    if row["flags"]:
        _log.info("%s: flagged %s%s", case.label(), row["flags"], f" ({reason})" if reason else "")


def _run_case(case: Case, ctx: RunContext) -> dict[str, Any]:
    started = time.perf_counter()
    spec = VARIANTS.get(case.variant)
    # Every column of the schema, in its order; what a case never reaches stays None.
    row: dict[str, Any] = dict.fromkeys(schema.NAMES)
    row.update(ctx.job_columns, case_id=case.case_id(spec.uses), **case.columns(), status="ok", reason="")
    if ctx.ceilings is not None:
        row.update(ctx.ceilings.columns())  # on every row; an ok row's are those its fractions used
    device, dtype = torch.device(case.device), case.torch_dtype
    timed_s = 0.0
    objects: list[Any] = []
    try:
        impl = IMPLEMENTATIONS.get(case.impl)
        meta = variants.build(case.variant, case.shape, attention=case.attention, dtype=dtype, device="meta")
        reason = impl.supports(meta, phase=case.phase, device=device, dtype=dtype)
        if reason is not None:
            return _finish(row, started, timed_s, "skipped", reason)
        cost = impl.cost(meta, batch=case.batch, q_len=case.q_len, cached=case.cached, new_kv=case.new_kv)
        layout = meta.cache_layout(impl.path)
        row.update(_analytic(case, cost, layout.nbytes(batch=case.batch, context=case.capacities, dtype=dtype,
                                                       page_size=case.page_size), path=impl.path))

        predicted = predict_memory(case, meta, impl, cost, timer_bytes=_timer_bytes(case, device), seed=ctx.seed)
        row["predicted_mem_bytes"] = predicted.total_bytes
        row.update(_working_set(case, cost, device))
        if case.timing == "cuda_graph" and case.compile in CUDAGRAPH_COMPILE_MODES:
            return _finish(row, started, timed_s, "skipped",
                           f"measure.cuda_graph=true with compile={case.compile} would capture inside inductor's own "
                           "CUDA graphs; valid: compile=default/none with cuda_graph=true, or cuda_graph=false")
        # The previous case's tensors are gone only once collected, and their blocks stay in PyTorch's
        # cache until emptied: read free memory after both, or a multirun skips cases that fit (item 4).
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        free = available_bytes(device)
        if predicted.guard_bytes > ctx.memory_headroom * free:
            return _finish(row, started, timed_s, "skipped",
                           f"predicted {predicted.guard_bytes / 2**30:.1f} GiB > {ctx.memory_headroom:.0%} of "
                           f"{free / 2**30:.1f} GiB free on {device.type} (memory_headroom guard)")
        if ctx.ceilings is not None and ctx.ceilings.quiet:
            peak_flops, peak_bytes_per_s = ctx.ceilings.matmul_tflops * 1e12, ctx.ceilings.bandwidth_gbps * 1e9
            rates = "calibrated ceilings"
        else:
            # A busy calibration's rates can be 100x low (oversubscribed threads): the guard would skip
            # cases that run fine, so it falls back to rates no device of this type beats.
            peak_flops, peak_bytes_per_s = built_in_rates(device)
            rates = f"built-in {device.type} rates, {'not calibrated' if ctx.ceilings is None else 'calibration busy'}"
        step_s = predict_seconds(cost, peak_flops=peak_flops, peak_bytes_per_s=peak_bytes_per_s)
        row["predicted_step_s"] = step_s
        if step_s > ctx.max_step_s:
            return _finish(row, started, timed_s, "skipped",
                           f"max_step_s guard: predicted {step_s:.3g} s per step at {rates} > "
                           f"max_step_s={ctx.max_step_s:g}")

        mark = time.perf_counter()
        if ctx.check_numerics:
            ctx.stage("gate")
            err, tol = numerics.check(case, seed=ctx.seed)
            row["numerics_s"] = time.perf_counter() - mark
            row.update(numerics_rel_err=err, numerics_tol=tol)
            if not err <= tol:  # also catches NaN
                return _finish(row, started, timed_s, "incorrect",
                               f"relative error {err:.3g} > {tol:g} against the float64 reference"
                               + (" (fp8 cache tolerance)" if case.shape.kv_dtype != "auto" else ""))

        mark = time.perf_counter()
        ctx.stage("building")
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
        objects += [layer, cache, x_BLD, memory_BMD]
        # What the prepared closure holds (masks, folded weights) is part of the step's resident memory.
        step, prepared_bytes = held_after(lambda: layer.prepare(case.phase, x_BLD, cache, impl=case.impl,
                                                                compile=case.compile, memory_BMD=memory_BMD), device)
        row["kv_cache_bytes"] = cache.nbytes()
        assert row["kv_cache_bytes"] == row["kv_cache_bytes_analytic"], "cache bytes differ from the cost model"
        row["setup_s"] = time.perf_counter() - mark

        timer = _timer(case, device)
        ctx.stage("compiling" if case.compile is not None else "first call")
        with watch_compile(case.compile) as compiled:
            row["first_call_ms"] = timer.time_ms(step)  # compile, autotune, lazy initialisation
        row.update(compile_cache_hit=compiled.cache_hit, compile_cudagraph_skipped=compiled.cudagraph_skipped)
        if compiled.cudagraph_skipped:
            _log.warning("%s: inductor skipped CUDA graphs: %s", case.label(), compiled.cudagraph_skipped)
        plain = step
        if case.compile is not None:
            plain = layer.prepare(case.phase, x_BLD, cache, impl=case.impl, memory_BMD=memory_BMD)
            err = numerics.relative_error(step(), plain())
            row["numerics_compile_rel_err"] = err
            if not err <= numerics.TOLERANCE[case.dtype]:
                return _finish(row, started, timed_s, "incorrect",
                               f"compiled output differs from the uncompiled one by {err:.3g}")
        if getattr(impl, "runs_on_fake_tensors", True):
            row["sdpa_backend"] = sdpa_backends(plain)  # the eager step: a compiled graph hides its aten calls
        else:
            row["sdpa_backend"] = ""  # flex: a compiled higher-order op, not SDPA, that no dispatch mode can watch
        if device.type == "cuda" and "math" in row["sdpa_backend"].split(","):
            _log.warning("%s: SDPA ran its math backend (no fused kernel took these shapes)", case.label())
        if case.timing == "cuda_graph":
            step = capture_cuda_graph(step, device=device)
        # One full-shape output of what is timed (graph replay, compiled code) against the eager step:
        # the reduced-shape gate never reaches the backend or split that runs at this size (item 11).
        reference = _cloned(plain())
        err = full_output_error(step(), reference)
        del reference
        row["numerics_full_rel_err"] = err
        if not err <= numerics.TOLERANCE[case.dtype]:
            return _finish(row, started, timed_s, "incorrect",
                           f"full-shape output of the timed step differs from the eager one by {err:.3g}")

        ctx.stage("timing")
        measurement = measure(step, timer, ctx.settings, first_call_ms=row["first_call_ms"])
        timed_s = measurement.timed_s
        row.update(measurement.stats)
        row.update(samples_ms=list(measurement.samples_ms), warmup_reps=measurement.warmup_reps,
                   stop_reason=measurement.stop_reason,
                   warmup_wall_s=measurement.warmup_wall_s, measure_overhead_s=measurement.overhead_s,
                   timing_batch=getattr(timer, "batch", 1), timing_hold_expired=getattr(timer, "hold_expired", 0))
        if ctx.telemetry is not None:
            mark = time.perf_counter()
            row.update(_telemetry_window(step, ctx, tokens_per_call=case.batch * case.q_len))
            row["telemetry_s"] = time.perf_counter() - mark

        mark = time.perf_counter()
        resident = tensor_bytes(layer, *cache.buffers.values(), x_BLD, *(t for t in (memory_BMD,) if t is not None))
        # The flush buffer is the timer's, not the step's (item 3); a graph replay allocates nothing,
        # so under cuda_graph the step's temporaries are its private pool, added by graph_pool_bytes.
        row["peak_mem_bytes"] = (step_peak_bytes(step, device, resident_bytes=resident + prepared_bytes)
                                 - getattr(timer, "flush_bytes", 0) + getattr(step, "graph_pool_bytes", 0))
        row["peak_mem_over_predicted"] = row["peak_mem_bytes"] / row["predicted_mem_bytes"]
        row["peak_mem_s"] = time.perf_counter() - mark
        row.update(_derived(case, cost, row["latency_ms"] / 1e3, ctx.ceilings))
        if _above_ceiling(row):
            _remeasure(row, case, cost, ctx)
        return _finish(row, started, timed_s, "ok", "")
    except torch.OutOfMemoryError as error:
        return _finish(row, started, timed_s, "oom", _one_line(error))
    except Exception as error:  # noqa: BLE001 - a failing case is a row, the sweep goes on
        # The row keeps one line; the traceback is for whoever runs with log level DEBUG.
        _log.debug("%s failed", case.label(), exc_info=True)
        return _finish(row, started, timed_s, "error", _one_line(error))
    finally:
        objects.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _derived(case: Case, cost, latency_s: float, ceilings: Ceilings | None) -> dict[str, Any]:
    row: dict[str, Any] = dict(ceilings.columns()) if ceilings is not None else {}
    row.update(derive(Measured(case, cost, latency_s, ceilings.bandwidth_gbps if ceilings else None,
                               ceilings.matmul_tflops if ceilings else None)))
    return row


def _above_ceiling(row: dict[str, Any]) -> bool:
    return max(row.get("frac_peak_flops") or 0, row.get("frac_peak_bandwidth") or 0) > ABOVE_CEILING


def _remeasure(row: dict[str, Any], case: Case, cost, ctx: RunContext) -> None:
    """A row above its roof: either its working set fits in the last-level cache (then it may), or
    the ceilings are wrong: measure them again once per run, use the new ones from this row on."""
    llc = last_level_cache_bytes(case.device)
    if (row.get("frac_peak_flops") or 0) <= ABOVE_CEILING and 0 < cost.bytes_min <= llc:
        _log.info("%s: %.2fx the memory ceiling; its %d bytes fit in the %d-byte last-level cache",
                 case.label(), row["frac_peak_bandwidth"], cost.bytes_min, llc)
        return
    if ctx.recalibrated or ctx.recalibrate is None:
        _log.warning("%s is above its ceiling (flops %.2fx, bandwidth %.2fx) %s", case.label(),
                    row.get("frac_peak_flops") or 0, row.get("frac_peak_bandwidth") or 0,
                    "after the ceilings were measured again this run" if ctx.recalibrated
                    else "and this run cannot measure them again")
        return
    ctx.recalibrated = True
    _log.warning("%s is above its ceiling (flops %.2fx, bandwidth %.2fx): measuring the ceilings again",
                case.label(), row.get("frac_peak_flops") or 0, row.get("frac_peak_bandwidth") or 0)
    ctx.ceilings = ctx.recalibrate()
    row.update(_derived(case, cost, row["latency_ms"] / 1e3, ctx.ceilings))


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


def _working_set(case: Case, cost, device: torch.device) -> dict[str, Any]:  # noqa: ANN001 - variants.Cost
    """Bytes one step touches against the L2 size: a hot-cache figure is marked, not hidden (item 5)."""
    l2 = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else None
    fits = l2 is not None and 0 < cost.bytes_min <= l2 and not case.l2_flush
    return {"working_set_bytes": cost.bytes_min, "l2_bytes": l2, "l2_resident": fits if l2 is not None else None}


def _analytic(case: Case, cost, cache_bytes: int, *, path: str) -> dict[str, Any]:  # noqa: ANN001 - variants.Cost
    return {"flops": cost.flops, "indexer_flops": cost.indexer_flops, "indexer_bytes": cost.indexer_bytes,
            "bytes_min": cost.bytes_min, "weight_bytes": cost.weight_bytes,
            "cache_read_bytes": cost.cache_read_bytes, "cache_write_bytes": cost.cache_write_bytes,
            "activation_bytes": cost.activation_bytes, "params": cost.params,
            "kv_bytes_per_token": cost.kv_bytes_per_token,
            # By the model's layer schedule (window layers: their ring's rows; compressed: entries' growth).
            "kv_bytes_per_token_model": model_kv_bytes_per_token(case.variant, case.shape, DTYPES[case.dtype],
                                                                 path=path),
            # The layout's function of the context (pages, rings), not tokens x bytes per token.
            "kv_cache_bytes_analytic": cache_bytes,
            "intensity_flops_per_byte": cost.intensity}


def _finish(row: dict[str, Any], started: float, timed_s: float, status: str, reason: str) -> dict[str, Any]:
    row["status"], row["reason"] = status, reason
    if status != "ok":
        # A number from a case that did not pass must never reach a table: the schema says which.
        row.update(dict.fromkeys(schema.MEASURED))
    wall = time.perf_counter() - started
    row["case_wall_s"] = wall
    row["harness_overhead_s"] = wall - timed_s
    row["finished_at"] = datetime.now(timezone.utc)
    return row
