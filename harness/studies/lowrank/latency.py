"""Decode-step latency of one converted (or source) attention layer at a given context length,
measured by the harness's own timer and repetition rules, like any case of ``run.py``.

The step is a ``prepare`` closure (weights, cache, RoPE table set up outside the timed call); the
cached prefix is random, as in the harness's decode cases.
"""

from __future__ import annotations

import torch

from attnbench.harness.measure.timer import CpuTimer, CudaTimer, MeasureSettings, measure
from attnbench.variants.layer import AttentionLayer

# Short: the study times a handful of layers per combination, beside hours of conversion.
SETTINGS = MeasureSettings(warmup_reps=3, warmup_s=0.1, min_reps=10, budget_s=1.0)


def decode_latency(layer: AttentionLayer, *, impl: str, context: int, batch: int = 1, seed: int = 0,
                   settings: MeasureSettings = SETTINGS) -> dict[str, float]:
    """``latency_ms`` (median) and ``latency_ci_rel`` of one decode step after ``context`` cached tokens."""
    cache = layer.new_cache(batch, context + 1, impl=impl)
    cache.fill_random_(context, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    x_BLD = torch.randn(batch, 1, layer.hidden, generator=generator).to(device=layer.device, dtype=layer.dtype)
    step = layer.prepare("decode", x_BLD, cache, impl=impl)
    timer = CudaTimer(layer.device) if layer.device.type == "cuda" else CpuTimer()
    stats = measure(step, timer, settings).stats
    return {"latency_ms": stats["latency_ms"], "latency_ci_rel": stats["latency_ci_rel"]}
