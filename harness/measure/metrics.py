"""Derived metrics, each a registered function of what a case measured; the run loop calls them all.

Adding a metric is one function here (or in another module) decorated with ``@metric``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from attnbench.harness.measure.case import Case
from attnbench.variants.cost import Cost


@dataclass(frozen=True)
class Measured:
    case: Case
    cost: Cost
    latency_s: float  # median of the timed repetitions
    bandwidth_gbps: float | None  # the device's measured memory roof (Ceilings.bandwidth_gbps; None: not calibrated)
    matmul_tflops: float | None


MetricFn = Callable[[Measured], dict[str, float | None]]
_METRICS: list[MetricFn] = []


def metric(fn: MetricFn) -> MetricFn:
    _METRICS.append(fn)
    return fn


def derive(measured: Measured) -> dict[str, float | None]:
    row: dict[str, float | None] = {}
    for fn in _METRICS:
        row.update(fn(measured))
    return row


def _ratio(value: float, ceiling: float | None) -> float | None:
    return None if not ceiling else value / ceiling


@metric
def throughput(m: Measured) -> dict[str, float | None]:
    """New tokens per second across the batch."""
    return {"tokens_per_s": m.case.batch * m.case.q_len / m.latency_s}


@metric
def compute_rate(m: Measured) -> dict[str, float | None]:
    tflops = m.cost.flops / m.latency_s / 1e12
    return {"tflops": tflops, "frac_peak_flops": _ratio(tflops, m.matmul_tflops)}


@metric
def bandwidth(m: Measured) -> dict[str, float | None]:
    """Achieved bandwidth counts only the minimum bytes, so it is a lower bound of the real traffic."""
    gbps = m.cost.bytes_min / m.latency_s / 1e9
    return {"gbps": gbps, "frac_peak_bandwidth": _ratio(gbps, m.bandwidth_gbps)}
