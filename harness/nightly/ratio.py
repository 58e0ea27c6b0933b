"""The ratio of two runs' median latencies and its confidence interval, from their raw samples.

Moving-block bootstrap (Künsch, "The jackknife and the bootstrap for general stationary
observations", *Ann. Statist.* 17(3), 1989), percentile interval: each run's samples, in the order
they were taken, are resampled as overlapping blocks of ``ceil(sqrt(n))`` consecutive samples,
independently per run, ``resamples`` times; the interval holds the middle ``confidence`` of the
resampled ratios of medians. Blocks, because latency samples are not independent: a clock state,
a co-tenant's burst or a cache state lasts for many consecutive repetitions, and resampling single
samples would then promise an interval narrower than the data support. The block is longer than
the n^(1/3) that is optimal for smooth statistics of weakly dependent data (Hall, Horowitz & Jing,
*Biometrika* 82(3), 1995), on purpose: machine states persist for hundreds of repetitions. Like
the median's order-statistic CI in ``attnbench.harness.measure.stats`` it assumes nothing about the shape of the
distribution. The generator is seeded, so the same samples always give the same interval.

The bootstrap sees only the noise within each run. Run-to-run noise (clocks, thermal state, the
placement of a process) is added from the history by ``widen``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

RESAMPLES = 2000
SEED = 0
# Resampled medians are computed in chunks so memory stays ~ _CHUNK_ELEMENTS floats at 10 000 samples.
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class RatioCI:
    """``new / base`` of the medians, and the interval ``[low, high]`` at ``confidence``."""

    ratio: float
    low: float
    high: float
    confidence: float

    @property
    def half_width_log(self) -> float:
        """Half the interval's width in log space: ``log(high / low) / 2``."""
        return math.log(self.high / self.low) / 2.0


def ratio_ci(base_ms: Sequence[float], new_ms: Sequence[float], *, confidence: float = 0.95,
             resamples: int = RESAMPLES, seed: int = SEED) -> RatioCI:
    """``median(new) / median(base)`` with its percentile-bootstrap interval."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} is not allowed: it must lie strictly between 0 and 1")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples={resamples!r} is not allowed: it must be an integer >= 100")
    base, new = _checked("base", base_ms), _checked("new", new_ms)
    rng = np.random.default_rng(seed)
    ratios = _resampled_medians(new, resamples, rng) / _resampled_medians(base, resamples, rng)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    ratio = float(np.median(new) / np.median(base))
    # The point estimate lies inside its own interval except for degenerate resamplings (n = 1).
    return RatioCI(ratio=ratio, low=min(float(low), ratio), high=max(float(high), ratio), confidence=confidence)


def widen(ci: RatioCI, run_to_run_sd_log: float, *, z: float | None = None) -> RatioCI:
    """``ci`` widened by run-to-run noise of standard deviation ``run_to_run_sd_log`` (natural log).

    Each run's median is off by an independent run effect of that spread, so the log ratio gets a
    variance of ``2 sd**2`` on top of the bootstrap's; the half-widths add in quadrature, on each
    side of the point estimate.
    """
    if not run_to_run_sd_log >= 0.0:
        raise ValueError(f"run_to_run_sd_log={run_to_run_sd_log!r} is not allowed: it must be >= 0")
    if run_to_run_sd_log == 0.0:
        return ci
    z = _z(ci.confidence) if z is None else z
    extra = z * math.sqrt(2.0) * run_to_run_sd_log
    down = math.hypot(math.log(ci.ratio / ci.low), extra)
    up = math.hypot(math.log(ci.high / ci.ratio), extra)
    return RatioCI(ratio=ci.ratio, low=ci.ratio * math.exp(-down), high=ci.ratio * math.exp(up),
                   confidence=ci.confidence)


def run_to_run_sd_log(medians_ms: Sequence[float], *, min_runs: int = 5) -> float:
    """Robust run-to-run standard deviation of log medians, oldest first; 0 with fewer than ``min_runs``.

    From successive differences, not deviations from the mean: a step change in the history (an
    accepted slowdown) is one large difference among many and barely moves their median, where it
    would inflate a plain spread for good. For ``d = x[i+1] - x[i] ~ N(0, 2 sd**2)``,
    ``median(|d|) = 0.6745 * sqrt(2) * sd``.
    """
    logs = np.log(np.asarray([m for m in medians_ms if m > 0], dtype=float))
    if len(logs) < min_runs:
        return 0.0
    return float(np.median(np.abs(np.diff(logs))) / (0.6745 * math.sqrt(2.0)))


def _resampled_medians(xs: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of ``resamples`` moving-block resamples of ``xs`` (each ``len(xs)`` long)."""
    n = len(xs)
    block = math.ceil(math.sqrt(n))
    num_blocks = math.ceil(n / block)
    offsets = np.arange(block)
    chunk = max(1, _CHUNK_ELEMENTS // (num_blocks * block))
    out = np.empty(resamples)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        starts = rng.integers(0, n - block + 1, size=(stop - start, num_blocks, 1))
        idx = (starts + offsets).reshape(stop - start, num_blocks * block)[:, :n]
        out[start:stop] = np.median(xs[idx], axis=1)
    return out


def _checked(name: str, samples: Sequence[float]) -> np.ndarray:
    xs = np.asarray(samples, dtype=float)
    if xs.ndim != 1 or len(xs) == 0:
        raise ValueError(f"{name} has no samples: a ratio needs at least one on each side")
    if not np.all(np.isfinite(xs)) or np.any(xs <= 0):
        raise ValueError(f"{name} samples must be finite and > 0 (latencies in ms)")
    return xs


def _z(confidence: float) -> float:
    """Two-sided standard normal quantile for ``confidence`` (1.96 at 95%)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)
