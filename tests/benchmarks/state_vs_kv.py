"""State against KV (issue 21): whole-model memory per sequence and one decode step per layer kind.

    python -m tests.benchmarks.state_vs_kv --memory-only                  # the table, cost model, instant
    OMP_NUM_THREADS=1 python -m tests.benchmarks.state_vs_kv              # + decode latency at 4k and 128k

Legend: S cached tokens.

Memory: for the seven models of ``attnbench.harness.report.analysis.state_kv.models()``, one sequence's cache over the
whole model in bf16 (each layer's own layout: a full layer's KV grows with S, a linear layer's state does not,
a window layer's ring stops at its window), from the cost model at 4k, 32k, 128k and 1M.

Latency: one layer of each kind, float32 on the CPU, batch 1, one decode token after S cached ones,
the cache filled with ``fill_random_`` (no prefill; a linear layer's state has the same size at any S).
Each step is prepared outside the timing (``layer.prepare``); the contexts' steps alternate over ``--reps``
rounds (so that load from other processes falls on all alike), the median is printed, and the growth from
the first context to the last. A linear layer's step reads and writes its whole
state whatever S is, so it should not grow; a full layer's reads S keys.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnbench import variants
from attnbench.harness.report.analysis.state_kv import available, crossover_tokens, memory_table, models
from attnbench.variants.shape import LAYER_KINDS

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
    for model in models():
        reason = available(model)
        if reason:
            print(f"  ({reason})")
        elif "L" in model.kinds:
            print(f"  {model.label}: a linear layer's state equals one full layer's KV at "
                  f"{crossover_tokens(model):,.0f} tokens (bf16)")


def decode_ms(variant: str, impl: str, shape, contexts: tuple[int, ...], *, rounds: int) -> list[float]:
    """Median milliseconds of one decode step at each context. The contexts' steps alternate, one step of
    each per round (A B A B ...), so that load from other processes on a shared machine falls on all alike."""
    layer = variants.build(variant, shape, dtype=torch.float32)
    steps = []
    for context in contexts:
        cache = layer.new_cache(1, context + 1, impl=impl)
        cache.fill_random_(context)
        steps.append(layer.prepare("decode", torch.randn(1, 1, layer.hidden), cache, impl=impl))
    times: list[list[float]] = [[] for _ in contexts]
    with torch.no_grad():
        for step in steps:
            step()  # warm-up
        for _ in range(rounds):
            for i, step in enumerate(steps):
                start = time.perf_counter()
                step()
                times[i].append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def print_latency(contexts: tuple[int, ...], reps: int, only: str | None = None) -> None:
    print(f"\nOne decode step of one layer, float32, CPU, batch 1, median of {reps} alternating rounds (ms):")
    heads = ["model", "layer kind", "variant/impl"] + [f"{c // 1024}k" for c in contexts] + ["growth"]
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    for model in models():
        if only is not None and only.lower() not in model.label.lower():
            continue
        if available(model):
            print(f"| {model.label} | n/a | {available(model)} |")
            continue
        for kind, (variant, impl) in model.kinds.items():
            ms = decode_ms(variant, impl, model.shape(), contexts, rounds=reps)
            growth = f"{100 * (ms[-1] / ms[0] - 1):+.0f}%"
            print(f"| {model.label} | {LAYER_KINDS[kind]} | {variant}/{impl} | "
                  + " | ".join(f"{m:.2f}" for m in ms) + f" | {growth} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 131072])
    parser.add_argument("--reps", type=int, default=7, help="rounds: one step at each context per round")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--only", help="time only the models whose label contains this (e.g. qwen3)")
    args = parser.parse_args()
    print_memory()
    if not args.memory_only:
        print_latency(tuple(args.contexts), args.reps, args.only)


if __name__ == "__main__":
    main()
