"""Correct before fast: a case's implementation is checked on a reduced shape before it is timed.

The reference is the same layer's weights in float64 on the CPU, run by the implementation its family
names (``Family.reference_impl``: ``eager``, itself checked against an independent float64
implementation of the papers' equations in ``tests/``). The reduced shape keeps every dimension that
defines the math (head dims, d_c, d_r, q_rank, grouping) and shrinks only what multiplies the work
(hidden, number of heads, tokens, batch); a family shrinks its own keys (``Family.reduce``: a window,
an indexer's top-k).

A family that selects tokens (``Family.selection``) is checked in two halves (e.g.
``attnbench.variants.families.dsa.selection``): the reference attends on the implementation's
selection, and that selection must be a top-k of the reference's scores within the tolerance; the
error reported is the larger of the two.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch

from attnbench import variants
from attnbench.harness.measure.case import Case
from attnbench.variants.registry import FAMILIES, family_of
from attnbench.variants.shape import ModelShape

# Relative error allowed per dtype: a few units of round-off of an attention layer's output.
TOLERANCE: dict[str, float] = {"float64": 1e-10, "float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}
# An fp8 (e4m3) cache against the full-precision reference: e4m3 rounds each cached value by up to
# 2^-4 of itself (3 mantissa bits); measured on the tiny and reduced shapes, a layer's output is off by
# 2.2-2.9% (gqa, mha, mla, every implementation). 0.08 leaves ~3x margin and still fails a wrong
# implementation, whose error is of order 1. Added to the compute dtype's own tolerance.
FP8_KV_TOLERANCE = 0.08
# DeepSeek-V4's FlashMLA layout (kv_dtype=fp8_model1): e4m3 with power-of-two scales rounds as finely
# (a tile's largest value lands in [224, 448] rather than at 448; the relative step is the same) and its
# rotary dims are kept in bf16 (2^-8). Measured at DeepSeek-V4-Flash's reduced shape (float32, eager,
# prefill and 1- and 4-token decode, 3 seeds): csa 1.5-3.6%, hca 0.9-4.3%; fp8_e4m3 on the same cases
# 1.0-3.9%. The same 0.08 holds both (an error of order 1 still fails).
FP8_KV_TOLERANCES: dict[str, float] = {"fp8_e4m3": FP8_KV_TOLERANCE, "fp8_model1": FP8_KV_TOLERANCE}


def tolerance(case: Case) -> float:
    """The relative error a case is held to: its compute dtype's, plus the fp8 cache's if it has one."""
    return TOLERANCE[case.dtype] + FP8_KV_TOLERANCES.get(case.shape.kv_dtype, 0.0)


_MAX_HIDDEN, _MAX_TOKENS, _MAX_NEW, _MAX_BATCH = 128, 24, 4, 2


def reduce_shape(shape: ModelShape, variant: str | None = None) -> ModelShape:
    """At most 2 kv heads of at most 2 query heads each and a narrow residual; then ``variant``'s family
    shrinks its own keys (a short window, a small top-k; None: every family its own)."""
    kv = shape.kv_heads or shape.heads
    group = shape.heads // kv
    kv_small, group_small = min(kv, 2), min(group, 2)
    small = shape.replace(hidden=min(shape.hidden, _MAX_HIDDEN), heads=kv_small * group_small, kv_heads=kv_small)
    owners = list(FAMILIES) if variant is None else [family_of(variant)]
    changes: dict[str, object] = {}
    for family in owners:
        changes.update(family.reduce(small))
    return small.replace(**changes)


class Agreement(NamedTuple):
    """One numerics check: the gate holds ``rel_err`` to ``tol``; ``max_abs_err`` is recorded beside it."""

    rel_err: float  # norm(actual - reference) / norm(reference)
    max_abs_err: float  # largest elementwise difference, in the output's units
    tol: float


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.double().cpu() - expected.double().cpu()).abs().max().item()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double().cpu()
    return ((actual.double().cpu() - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def _run(layer: variants.AttentionLayer, case: Case, impl: str, x_BTD: torch.Tensor, memory: torch.Tensor | None,
         prefix: int) -> torch.Tensor:
    cache = layer.new_cache(x_BTD.shape[0], x_BTD.shape[1] + (memory.shape[1] if memory is not None else 0),
                            impl=impl)
    if case.phase == "prefill":
        return layer.prefill(x_BTD, cache, impl=impl, memory_BMD=memory)
    layer.prefill(x_BTD[:, :prefix], cache, impl=impl, memory_BMD=memory)
    return layer.decode(x_BTD[:, prefix:], cache, impl=impl)


def check(case: Case, *, seed: int = 0) -> tuple[float, float]:
    """(relative error, tolerance) of ``case.impl`` against the float64 reference, reduced shape."""
    agreement = compare(case, seed=seed)
    return agreement.rel_err, agreement.tol


def compare(case: Case, *, seed: int = 0) -> Agreement:
    """``case.impl``'s output against the float64 reference on a reduced shape of the case."""
    family = family_of(case.variant)
    small = reduce_shape(case.shape, case.variant)
    layer = variants.build(case.variant, small, attention=case.attention, dtype=case.torch_dtype,
                           device=case.device, seed=seed)
    reference = copy.deepcopy(layer).to(device="cpu", dtype=torch.float64)
    # The reference keeps its cache in full precision: an fp8 cache's error is part of what is checked.
    reference.kv_dtype = "auto"
    generator = torch.Generator().manual_seed(seed)
    prefix = min(case.seq, _MAX_TOKENS)
    new = min(case.decode_len, _MAX_NEW) if case.phase == "decode" else 0
    batch = min(case.batch, _MAX_BATCH)
    x_BTD = torch.randn(batch, prefix + new if case.phase == "decode" else prefix, small.hidden,
                        generator=generator, dtype=torch.float64)
    memory = None
    if case.attention == "cross":
        memory = torch.randn(batch, prefix, small.hidden, generator=generator, dtype=torch.float64)
    to_case = dict(device=case.device, dtype=case.torch_dtype)
    x_case, memory_case = x_BTD.to(**to_case), None if memory is None else memory.to(**to_case)
    selection = family.selection
    if selection is None or not selection.applies(layer):
        expected = _run(reference, case, family.reference_impl, x_BTD, memory, prefix)
        actual = _run(layer, case, case.impl, x_case, memory_case, prefix)
        return Agreement(relative_error(actual, expected), max_abs_error(actual, expected), tolerance(case))
    with selection.recorded(layer) as chosen:
        actual = _run(layer, case, case.impl, x_case, memory_case, prefix)
    with selection.replayed(reference, chosen) as shortfalls:
        expected = _run(reference, case, family.reference_impl, x_BTD, memory, prefix)
    return Agreement(max(relative_error(actual, expected), *shortfalls), max_abs_error(actual, expected),
                     tolerance(case))
