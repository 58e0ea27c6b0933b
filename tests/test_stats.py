"""Latency statistics against numpy, and the median's CI against its promised coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnbench.harness.measure.stats import ci_rel, median_ci, summarize


def exact_coverage(n: int, low_rank: int) -> float:
    """P(X_(r) <= median <= X_(n-r+1)) = 1 - 2 P(B <= r-1), B ~ Binomial(n, 1/2), by exact integers."""
    return 1 - 2 * sum(math.comb(n, k) for k in range(low_rank)) / 2**n


def test_summary_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    for n in (1, 2, 7, 100, 1001):
        xs = rng.lognormal(mean=0.0, sigma=0.5, size=n)
        row = summarize(list(xs))
        assert row["n_reps"] == n
        assert row["latency_ms"] == pytest.approx(np.median(xs), rel=1e-12)
        assert row["latency_mean_ms"] == pytest.approx(np.mean(xs), rel=1e-12)
        assert row["latency_std_ms"] == pytest.approx(np.std(xs, ddof=1) if n > 1 else 0.0, rel=1e-9, abs=1e-15)
        assert row["latency_min_ms"] == np.min(xs)
        assert row["latency_p10_ms"] == pytest.approx(np.percentile(xs, 10), rel=1e-12)
        assert row["latency_p90_ms"] == pytest.approx(np.percentile(xs, 90), rel=1e-12)
        assert row["latency_ci_low_ms"] <= row["latency_ms"] <= row["latency_ci_high_ms"]


def test_ci_is_a_pair_of_order_statistics_with_the_promised_coverage():
    # Conservative (coverage >= confidence) and tightest (the next pair inward falls short).
    for n in range(6, 200):
        xs = list(range(n))  # sorted, distinct: a sample's value is its rank - 1
        low, high = median_ci(xs, 0.95)
        r = int(low) + 1
        assert high == n - r
        assert exact_coverage(n, r) >= 0.95
        assert r == n // 2 or exact_coverage(n, r + 1) < 0.95


def test_ci_covers_the_true_median_95_percent_of_the_time(seed):
    # n = 37: the exact coverage of the 95% interval is 0.953, so 2000 trials land in [0.93, 0.97]
    # except with probability ~1e-4; a too-narrow or off-by-one interval falls out of it.
    rng = np.random.default_rng(seed)
    trials, n = 2000, 37
    true_median = math.log(2)  # of Exponential(1)
    draws = rng.exponential(1.0, size=(trials, n))
    hits = 0
    for row in draws:
        low, high = median_ci(list(row), 0.95)
        hits += low <= true_median <= high
    assert 0.93 <= hits / trials <= 0.97


def test_tiny_n_returns_min_max_and_an_infinite_relative_width():
    for n in range(1, 6):  # even (min, max) covers only 1 - 2/2**n < 95%
        xs = [1.0 + i for i in range(n)]
        assert median_ci(xs, 0.95) == (xs[0], xs[-1])
        assert math.isinf(summarize(xs)["latency_ci_rel"])
        assert math.isinf(ci_rel(xs))
    six = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # (min, max) covers 1 - 2/64 = 96.9%
    row = summarize(six)
    assert (row["latency_ci_low_ms"], row["latency_ci_high_ms"]) == (1.0, 6.0)
    assert row["latency_ci_rel"] == pytest.approx(2.5 / 3.5)


def test_constant_samples_have_zero_relative_width():
    assert summarize([2.0] * 10)["latency_ci_rel"] == 0.0


def test_large_n_is_quick_and_tight(seed):
    xs = list(np.random.default_rng(seed).normal(10.0, 0.1, size=10_000))
    assert ci_rel(xs) < 0.001  # ~1.96 * 1.25 * 0.1 / sqrt(1e4) / 10


@pytest.mark.parametrize(("samples", "confidence", "needle"), [
    ([], 0.95, "no samples"),
    ([1.0, float("nan")], 0.95, "NaN or inf"),
    ([1.0, 2.0], 1.0, "confidence=1.0 is not allowed"),
    ([1.0, 2.0], 0.0, "confidence=0.0 is not allowed"),
])
def test_bad_input_is_refused(samples, confidence, needle):
    with pytest.raises(ValueError, match=needle):
        summarize(samples, confidence)
