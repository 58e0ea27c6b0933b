"""pytest-benchmark over every variant x every implementation that supports it x phase, at fixed shapes.

Legend: B batch, L new query tokens, D hidden.

    python -m pytest tests/benchmarks --benchmark-autosave
    python -m pytest tests/benchmarks --benchmark-compare --benchmark-compare-fail=median:5%

Each benchmark times one prepared step (``layer.prepare``): weights, cache, inputs and masks are
built outside the timed callable. On CUDA the callable synchronizes after the step, so each round's
wall time covers the GPU work and not just the launch. Shapes: a tiny and a small one everywhere
(CPU-friendly), DeepSeek-V2-Lite's attention at 1k and 8k only where CUDA is present; float32 on
CPU, bfloat16 on CUDA, as ``dtype=auto`` in ``run.py``. On a shared CPU machine set
``OMP_NUM_THREADS=1``: with more threads than free cores, OpenMP barriers wait on preempted threads.

Demo knob, not for real runs: ``ATTNBENCH_BENCH_FORCE_IMPL=eager`` runs every case with that
implementation (where it supports the case) under the case's own name, which makes a real,
hand-made slowdown for ``--benchmark-compare-fail`` to catch (MLA's absorbed paths fall back to
re-expanding the latent cache every step). The forced name is kept in ``extra_info``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from attnbench import variants
from attnbench.variants.registry import IMPLEMENTATIONS, VARIANTS

FORCE_ENV = "ATTNBENCH_BENCH_FORCE_IMPL"
PHASES = ("prefill", "decode")
# (model preset, seq): decode reads seq cached tokens, prefill runs seq tokens from position 0.
SHAPES_ANY = (("tiny", 256), ("smollm2_135m", 1024))
SHAPES_CUDA = (("deepseek_v2_lite", 1024), ("deepseek_v2_lite", 8192))


@dataclass(frozen=True)
class BenchCase:
    variant: str
    impl: str
    phase: str
    model: str
    seq: int

    @property
    def id(self) -> str:
        return f"{self.variant}-{self.impl}-{self.phase}-{self.model}-s{self.seq}"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def bench_cases(device: torch.device) -> list[BenchCase]:
    """Every registered variant x implementation that supports it x phase x shape, on ``device``."""
    shapes = SHAPES_ANY + (SHAPES_CUDA if device.type == "cuda" else ())
    cases = []
    for model, seq in shapes:
        for variant in VARIANTS.names():
            try:
                meta = variants.build(variant, model=model, dtype=_dtype(device), device="meta")
            except ValueError:  # as variant=all plans: only the variants the shape makes (swa needs a window)
                continue
            for impl in IMPLEMENTATIONS.names():
                for phase in PHASES:
                    if IMPLEMENTATIONS.get(impl).supports(meta, phase=phase, device=device,
                                                          dtype=_dtype(device)) is None:
                        cases.append(BenchCase(variant, impl, phase, model, seq))
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_case" in metafunc.fixturenames:
        cases = bench_cases(_device())
        metafunc.parametrize("bench_case", cases, ids=[c.id for c in cases])


def _forced(case: BenchCase, device: torch.device, layer: variants.AttentionLayer) -> str:
    """The implementation to run: the case's own, or ``$ATTNBENCH_BENCH_FORCE_IMPL`` where that one
    supports the case (demo knob, see the module docstring)."""
    forced = os.environ.get(FORCE_ENV)
    if not forced:
        return case.impl
    impl = IMPLEMENTATIONS.get(forced)  # ValueError naming the valid ones for a typo
    if impl.supports(layer, phase=case.phase, device=device, dtype=layer.dtype) is not None:
        return case.impl
    return forced


def _prepared_step(case: BenchCase, device: torch.device) -> tuple[Callable[[], object], dict[str, object]]:
    dtype = _dtype(device)
    layer = variants.build(case.variant, model=case.model, dtype=dtype, device=device, seed=0)
    impl = _forced(case, device, layer)
    generator = torch.Generator(device=device).manual_seed(0)
    if case.phase == "prefill":
        cache = layer.new_cache(1, case.seq, impl=impl)
        x_BLD = torch.randn(1, case.seq, layer.hidden, generator=generator, device=device, dtype=dtype)
    else:
        cache = layer.new_cache(1, case.seq + 1, impl=impl)
        cache.fill_random_(case.seq, seed=0)
        x_BLD = torch.randn(1, 1, layer.hidden, generator=generator, device=device, dtype=dtype)
    step = layer.prepare(case.phase, x_BLD, cache, impl=impl)
    cost = IMPLEMENTATIONS.get(impl).cost(layer, batch=1, q_len=x_BLD.shape[1],
                                          cached=0 if case.phase == "prefill" else case.seq,
                                          new_kv=x_BLD.shape[1])
    info = {"impl_run": impl, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(), "flops": cost.flops, "bytes_min": cost.bytes_min,
            "kv_bytes_per_token": cost.kv_bytes_per_token, "torch": torch.__version__}
    if device.type != "cuda":
        return step, info

    def synchronized() -> object:
        out = step()
        torch.cuda.synchronize(device)  # the round's wall time must include the kernels, not just launches
        return out

    return synchronized, info


def test_step(benchmark, bench_case: BenchCase) -> None:
    device = _device()
    step, info = _prepared_step(bench_case, device)
    step()  # lazy initialisation (cuBLAS handles, RoPE tables) outside the measurement
    benchmark.group = f"{bench_case.phase} {bench_case.model} seq={bench_case.seq}"
    benchmark.extra_info.update(info)
    benchmark(step)
