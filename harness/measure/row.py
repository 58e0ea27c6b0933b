"""A case's row, assembled here and nowhere else: each stage of ``attnbench.harness.measure.runner`` hands its
values to one method named after it, and this module names the columns they go to.

Every row holds every column of the schema, in its order; what a case never reaches stays None, and
a case that did not pass loses its measured columns (``schema.MEASURED``) whatever it reached.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from attnbench.harness.measure.calibrate import Ceilings
from attnbench.harness.measure.case import DTYPES, Case
from attnbench.harness.measure.probes import CompileWatch
from attnbench.harness.measure.timer import Measurement, Timer
from attnbench.harness.results import schema
from attnbench.variants.cost import Cost
from attnbench.variants.schedule import model_kv_bytes_per_token

INT64_MAX = 2**63 - 1


@dataclass
class CaseRow:
    """The row of one case while its stages run; ``finish`` hands it out as a plain dict."""

    values: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)
    timed_s: float = 0.0  # inside the timer's samples: the rest of the case's wall time is the harness's

    @classmethod
    def start(cls, case: Case, *, uses: tuple[str, ...], job_columns: Mapping[str, Any],
              ceilings: Ceilings | None) -> CaseRow:
        values: dict[str, Any] = dict.fromkeys(schema.NAMES)
        values.update(job_columns, case_id=case.case_id(uses), **case.columns(), status="ok", reason="")
        if ceilings is not None:
            values.update(ceilings.columns())  # on every row; an ok row's are those its fractions used
        return cls(values)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def support(self, case: Case, cost: Cost, *, cache_bytes: int, path: str) -> str | None:
        """The cost model's counts for the case, known before anything is allocated; why the case is too
        large to record (a count beyond the row's int64 columns, left empty), or None."""
        counts = dict(
            flops=cost.flops, indexer_flops=cost.indexer_flops, indexer_bytes=cost.indexer_bytes,
            bytes_min=cost.bytes_min, weight_bytes=cost.weight_bytes, cache_read_bytes=cost.cache_read_bytes,
            cache_write_bytes=cost.cache_write_bytes, activation_bytes=cost.activation_bytes, params=cost.params,
            kv_bytes_per_token=cost.kv_bytes_per_token,
            # By the model's layer schedule (window layers: their ring's rows; compressed: entries' growth).
            kv_bytes_per_token_model=model_kv_bytes_per_token(case.variant, case.shape, DTYPES[case.dtype],
                                                              path=path),
            # The layout's function of the context (pages, rings), not tokens x bytes per token.
            kv_cache_bytes_analytic=cache_bytes, intensity_flops_per_byte=cost.intensity)
        # An absurd size (batch 1e8 at 32k: 1e19 FLOPs) is a skipped row that says so, not an Arrow
        # OverflowError when the row is written (which ended the whole sweep).
        over = {k: v for k, v in counts.items() if isinstance(v, int) and not -INT64_MAX - 1 <= v <= INT64_MAX}
        self.values.update({k: v for k, v in counts.items() if k not in over})
        if not over:
            return None
        name, value = next(iter(over.items()))
        return (f"the case is too large to record: {name}={value:.3g} is beyond a row's int64 "
                f"(at most {INT64_MAX:.3g}); use a smaller batch or seq")

    def prediction(self, case: Case, cost: Cost, device: torch.device, *, mem_bytes: int) -> None:
        """Predicted memory, and the bytes one step touches against the L2 size: a hot-cache figure
        is marked, not hidden (issue 9, item 5)."""
        l2 = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else None
        fits = l2 is not None and 0 < cost.bytes_min <= l2 and not case.l2_flush
        self.values.update(predicted_mem_bytes=mem_bytes, working_set_bytes=cost.bytes_min, l2_bytes=l2,
                           l2_resident=fits if l2 is not None else None)

    def step_time(self, step_s: float) -> None:
        self.values["predicted_step_s"] = step_s

    def gate(self, *, rel_err: float, max_abs_err: float, tol: float, seconds: float) -> None:
        self.values.update(numerics_rel_err=rel_err, numerics_max_abs_err=max_abs_err, numerics_tol=tol,
                           numerics_s=seconds)

    def build(self, *, kv_cache_bytes: int, seconds: float) -> None:
        self.values.update(kv_cache_bytes=kv_cache_bytes, setup_s=seconds)
        assert kv_cache_bytes == self.values["kv_cache_bytes_analytic"], "cache bytes differ from the cost model"

    def first_call(self, ms: float, compiled: CompileWatch) -> None:
        self.values.update(first_call_ms=ms, compile_cache_hit=compiled.cache_hit,
                           compile_cudagraph_skipped=compiled.cudagraph_skipped)

    def compiled_error(self, rel_err: float) -> None:
        self.values["numerics_compile_rel_err"] = rel_err

    def sdpa_backend(self, backends: str) -> None:
        self.values["sdpa_backend"] = backends

    def full_shape_error(self, rel_err: float) -> None:
        self.values["numerics_full_rel_err"] = rel_err

    def timing(self, measurement: Measurement, timer: Timer) -> None:
        self.timed_s = measurement.timed_s
        self.values.update(measurement.stats)
        self.values.update(samples_ms=list(measurement.samples_ms), warmup_reps=measurement.warmup_reps,
                           stop_reason=measurement.stop_reason, warmup_wall_s=measurement.warmup_wall_s,
                           measure_overhead_s=measurement.overhead_s, timing_batch=getattr(timer, "batch", 1),
                           timing_hold_expired=getattr(timer, "hold_expired", 0))

    def telemetry(self, readings: Mapping[str, Any], *, seconds: float) -> None:
        self.values.update(readings, telemetry_s=seconds)

    def peak_memory(self, peak_bytes: int, *, seconds: float) -> None:
        self.values.update(peak_mem_bytes=peak_bytes, peak_mem_s=seconds,
                           peak_mem_over_predicted=peak_bytes / self.values["predicted_mem_bytes"])

    def derived(self, metrics: Mapping[str, float | None], ceilings: Ceilings | None) -> None:
        """The registered metrics (harness.measure.metrics), with the ceilings they were divided by."""
        if ceilings is not None:
            self.values.update(ceilings.columns())
        self.values.update(metrics)

    def finish(self, status: str, reason: str) -> dict[str, Any]:
        row = self.values
        row["status"], row["reason"] = status, reason
        if status != "ok":
            # A number from a case that did not pass must never reach a table: the schema says which.
            row.update(dict.fromkeys(schema.MEASURED))
        wall = time.perf_counter() - self.started
        row.update(case_wall_s=wall, harness_overhead_s=wall - self.timed_s, finished_at=datetime.now(timezone.utc))
        return row


def add_trust(row: dict[str, Any], *, warnings: str, fallback_reason: str, load_start: float | None,
              load_end: float | None, others_cpu_share: float | None, flags: str) -> None:
    """What ``attnbench.harness.measure.trust`` says of a finished row."""
    row.update(warnings=warnings, fallback_reason=fallback_reason, load_start=load_start, load_end=load_end,
               others_cpu_share=others_cpu_share, remeasured=False, flags=flags)
