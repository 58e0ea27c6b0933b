"""A linear layer's decode step does not grow with the context; MLA's does. One process, rounds interleaved.

    python -m tests.benchmarks.linear_decode                       # 4k and 128k, 7 rounds
    python -m tests.benchmarks.linear_decode --contexts 4096 131072 --rounds 11 --reps 5

One layer each, float32, batch 1, one decode token, one thread: Gated DeltaNet at Qwen3-Next-80B-A3B's
linear shape (16 key / 32 value heads, K = V = 128, hidden 2048), Kimi Delta Attention at Kimi Linear's
(32 heads, K = V = 128, hidden 2304), both ``chunked`` (its decode is the recurrent update), and MLA
at DeepSeek-V2-Lite's shape (``absorbed``). The linear caches are ``fill_random_``-ed to the context
(the state has one size whatever it is), MLA's latent cache to the same length. Rounds alternate the
layers and contexts so that load from other processes falls on all alike; each figure is the median
over rounds of ``reps`` steps in CPU time of this process (``time.process_time``). Growth is
t(largest context) / t(smallest) - 1 (issue 21: < 10% for a linear layer).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from attnbench import variants
from attnbench.variants.shape import ModelShape

QWEN3_NEXT_LINEAR = ModelShape.from_dict(dict(
    hidden=2048, heads=16, head_dim=256, linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
    linear_value_head_dim=128, name="qwen3_next_80b_a3b"))
KIMI_LINEAR = ModelShape.from_dict(dict(hidden=2304, heads=32, head_dim=128, linear_num_key_heads=32,
                                        linear_key_head_dim=128, name="kimi_linear_48b_a3b"))


def _step(variant: str, shape: ModelShape | None, impl: str, context: int) -> tuple[Callable[[], Tensor], int]:
    layer = variants.build(variant, shape, model=None if shape else "deepseek_v2_lite", seed=0)
    cache = layer.new_cache(1, context + 1, impl=impl)
    cache.fill_random_(context, seed=0)
    x_B1D = torch.randn(1, 1, layer.hidden, generator=torch.Generator().manual_seed(0))
    return layer.prepare("decode", x_B1D, cache, impl=impl), cache.nbytes()


def _cpu_ms(step: Callable[[], Tensor], reps: int) -> float:
    start = time.process_time()
    for _ in range(reps):
        step()
    return (time.process_time() - start) * 1e3 / reps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 131072])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    layers = [("gdn", QWEN3_NEXT_LINEAR, "chunked"), ("kda", KIMI_LINEAR, "chunked"), ("mla", None, "absorbed")]
    cases = {(v, n): _step(v, s, impl, n) for v, s, impl in layers for n in args.contexts}
    for step, _ in cases.values():
        step()  # first call: lazy initialisation
    times: dict[tuple[str, int], list[float]] = {key: [] for key in cases}
    with torch.no_grad():
        for _ in range(args.rounds):
            for key, (step, _) in cases.items():
                times[key].append(_cpu_ms(step, args.reps))
    lo, hi = min(args.contexts), max(args.contexts)
    print(f"decode step, one layer, float32, batch 1, one thread; median of {args.rounds} rounds x {args.reps} steps "
          "(CPU ms)")
    header = "".join(f"{f'{n // 1024}k ms':>12}{'cache':>10}" for n in args.contexts)
    print(f"{'layer':<28}{header}{'growth':>9}")
    for variant, shape, impl in layers:
        label = f"{variant} ({shape.name if shape else 'deepseek_v2_lite'})"
        med = {n: statistics.median(times[(variant, n)]) for n in args.contexts}
        cells = "".join(f"{med[n]:>12.2f}{cases[(variant, n)][1] / 2**20:>8.1f}Mi" for n in args.contexts)
        print(f"{label:<28}{cells}{med[hi] / med[lo] - 1:>+9.1%}")


if __name__ == "__main__":
    main()
