"""Decode-step latency of one attention layer at a given context length: a stand-in until the
harness's timer measures converted layers like any MLA layer.

The step is a ``prepare`` closure (set-up, cache and RoPE table outside the timed call), run after
warm-up; the result is the median of ``repeats`` wall-clock timings, synchronized on CUDA.
"""

from __future__ import annotations

import statistics
import time

import torch

from variants.layer import AttentionLayer


def decode_latency_ms(layer: AttentionLayer, *, impl: str, context: int, batch: int = 1, repeats: int = 20,
                      warmup: int = 3, seed: int = 0) -> float:
    generator = torch.Generator().manual_seed(seed)
    cache = layer.new_cache(batch, context + 1, impl=impl)
    cache.fill_random_(context, generator=generator)
    x_BLD = torch.randn(batch, 1, layer.hidden, generator=generator).to(layer.dtype).to(layer.device)
    step = layer.prepare("decode", x_BLD, cache, impl=impl)
    cuda = layer.device.type == "cuda"
    for _ in range(warmup):
        step()
    timings = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1e3
