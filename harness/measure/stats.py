"""Summary statistics of latency samples, centred on the median and its distribution-free CI.

Why the median: on shared machines a few repetitions are preempted or land behind another job's
kernels; those outliers are one-sided and heavy-tailed, so they move the mean but barely the
median. Its confidence interval comes from order statistics and needs no assumption about the
shape of the distribution (Conover, *Practical Nonparametric Statistics*, 3rd ed., 1999, §3.2:
confidence interval for a quantile): for ``B ~ Binomial(n, 1/2)`` the interval between the ``r``-th
smallest and the ``r``-th largest sample covers the true median with probability
``1 - 2 P(B <= r - 1)``. We take the largest ``r`` whose coverage is at least ``confidence``, so the
interval is exact-or-conservative for any continuous distribution.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Coverage is compared with a little slack: at n = 6, P(B <= 0) = 1/64 sits below 0.025 exactly,
# but a sum of floating-point terms may land a hair above a boundary it equals.
_CDF_SLACK = 1e-12


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free ``confidence`` interval ``(low, high)`` of the median of ``samples``.

    When ``n`` is too small for any pair of order statistics to reach ``confidence`` (at 95%:
    n <= 5, since even (min, max) covers only ``1 - 2 / 2**n``), this returns ``(min, max)``;
    ``summarize`` then reports ``latency_ci_rel = inf`` so no stopping rule can accept it.
    """
    xs = _checked_sorted(samples, confidence)
    rank = _order_stat_rank(len(xs), confidence)
    if rank is None:
        return xs[0], xs[-1]
    return xs[rank - 1], xs[len(xs) - rank]


def ci_rel(samples: Sequence[float], confidence: float = 0.95) -> float:
    """Half-width of the median's CI over the median; ``inf`` where no such CI exists (tiny n)."""
    xs = _checked_sorted(samples, confidence)
    if _order_stat_rank(len(xs), confidence) is None:
        return math.inf
    low, high = median_ci(xs, confidence)
    return _relative_half_width(low, high, statistics.median(xs))


def summarize(samples_ms: Sequence[float], confidence: float = 0.95) -> dict[str, float | int]:
    """The latency columns of a result row, all in milliseconds except ``latency_ci_rel`` and ``n_reps``.

    ``latency_std_ms`` is the sample standard deviation (n - 1 in the denominator; 0 for one
    sample). Percentiles interpolate linearly between order statistics, as ``numpy.percentile``
    does by default. ``latency_ci_rel`` is ``inf`` when n is too small for a CI (see ``median_ci``).
    """
    xs = _checked_sorted(samples_ms, confidence)
    n = len(xs)
    median = statistics.median(xs)
    low, high = median_ci(xs, confidence)
    rel = math.inf if _order_stat_rank(n, confidence) is None else _relative_half_width(low, high, median)
    return {
        "latency_ms": median,
        "latency_mean_ms": statistics.fmean(xs),
        "latency_std_ms": statistics.stdev(xs) if n > 1 else 0.0,
        "latency_min_ms": xs[0],
        "latency_p10_ms": _percentile(xs, 0.10),
        "latency_p90_ms": _percentile(xs, 0.90),
        "latency_ci_low_ms": low,
        "latency_ci_high_ms": high,
        "latency_ci_rel": rel,
        "n_reps": n,
    }


def _order_stat_rank(n: int, confidence: float) -> int | None:
    """Largest r >= 1 with ``P(B <= r - 1) <= (1 - confidence) / 2``, B ~ Binomial(n, 1/2); None if none.

    The pmf is stepped in log space (``p(k+1) = p(k) (n-k) / (k+1)``) because ``0.5**n``
    underflows past n ~ 1074 and ``max_reps`` allows 10 000 samples.
    """
    tail = (1.0 - confidence) / 2.0
    log_pmf = n * math.log(0.5)  # P(B = 0)
    cdf = 0.0
    rank = 0
    for k in range(n // 2 + 1):  # P(B <= n // 2) >= 1/2 > tail, so the loop always breaks
        cdf += math.exp(log_pmf)
        if cdf > tail + _CDF_SLACK:
            break
        rank = k + 1
        log_pmf += math.log(n - k) - math.log(k + 1)
    return rank or None


def _relative_half_width(low: float, high: float, median: float) -> float:
    half = (high - low) / 2.0
    if half == 0.0:
        return 0.0
    return half / median if median > 0.0 else math.inf


def _percentile(xs_sorted: Sequence[float], q: float) -> float:
    """numpy's default ("linear") percentile of already sorted data, ``0 <= q <= 1``."""
    pos = q * (len(xs_sorted) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs_sorted) - 1)
    return xs_sorted[lo] + (xs_sorted[hi] - xs_sorted[lo]) * (pos - lo)


def _checked_sorted(samples: Sequence[float], confidence: float) -> list[float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} is not allowed: it must lie strictly between 0 and 1")
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("no samples to summarize: at least one is needed")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError("samples contain NaN or inf: every latency sample must be a finite number")
    return xs
