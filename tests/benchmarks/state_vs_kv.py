"""State against KV (issue 21): whole-model memory per sequence and one decode step per layer kind.

    python -m tests.benchmarks.state_vs_kv --memory-only                  # the table, cost model, instant
    OMP_NUM_THREADS=1 python -m tests.benchmarks.state_vs_kv              # + decode latency at 4k and 128k

Legend: S cached tokens.

Memory: for the seven models of ``harness.report.state_kv.MODELS``, one sequence's cache over the whole
model in bf16 (each layer's own layout: a full layer's KV grows with S, a linear layer's state does not,
a window layer's ring stops at its window), from the cost model at 4k, 32k, 128k and 1M.

Latency: one layer of each kind, float32 on the CPU, batch 1, one decode token after S cached ones,
the cache filled with ``fill_random_`` (no prefill; a linear layer's state has the same size at any S).
Each step is prepared outside the timing (``layer.prepare``); ``--reps`` steps, the median is printed,
and the growth from the first context to the last. A linear layer's step reads and writes its whole
state whatever S is, so it should not grow; a full layer's reads S keys.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import variants
from harness.report.state_kv import MODELS, available, crossover_tokens, memory_table
from variants.shape import LAYER_KINDS

MEMORY_CONTEXTS = (4096, 32768, 131072, 1048576)


def _size(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def print_memory() -> None:
    heads = ["model"] + [f"{c // 1024}k" if c < 2**20 else "1M" for c in MEMORY_CONTEXTS]
    print("Whole-model cache per sequence, bf16 (cost model; 1M beyond what a CPU measures):")
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    for label, row in memory_table(MEMORY_CONTEXTS):
        print(f"| {label} | " + " | ".join(_size(b) for b in row) + " |")
    for model in MODELS:
        reason = available(model)
        if reason:
            print(f"  ({reason})")
        elif "L" in model.kinds:
            print(f"  {model.label}: a linear layer's state equals one full layer's KV at "
                  f"{crossover_tokens(model):,.0f} tokens (bf16)")


def decode_ms(variant: str, impl: str, shape, context: int, *, reps: int) -> float:
    layer = variants.build(variant, shape, dtype=torch.float32)
    cache = layer.new_cache(1, context + 1, impl=impl)
    cache.fill_random_(context)
    step = layer.prepare("decode", torch.randn(1, 1, layer.hidden), cache, impl=impl)
    with torch.no_grad():
        step()  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def print_latency(contexts: tuple[int, ...], reps: int) -> None:
    print(f"\nOne decode step of one layer, float32, CPU, batch 1, median of {reps} (ms):")
    heads = ["model", "layer kind", "variant/impl"] + [f"{c // 1024}k" for c in contexts] + ["growth"]
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    for model in MODELS:
        if available(model):
            print(f"| {model.label} | n/a | {available(model)} |")
            continue
        for kind, (variant, impl) in model.kinds.items():
            ms = [decode_ms(variant, impl, model.shape(), c, reps=reps) for c in contexts]
            growth = f"{100 * (ms[-1] / ms[0] - 1):+.0f}%"
            print(f"| {model.label} | {LAYER_KINDS[kind]} | {variant}/{impl} | "
                  + " | ".join(f"{m:.2f}" for m in ms) + f" | {growth} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 131072])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--memory-only", action="store_true")
    args = parser.parse_args()
    print_memory()
    if not args.memory_only:
        print_latency(tuple(args.contexts), args.reps)


if __name__ == "__main__":
    main()
