"""Predict a case's memory and time before allocating anything, so a sweep skips what can't run.

On a CPU the alternative to a skip is the kernel's OOM killer ending the whole sweep; on any
device, a step predicted to take minutes would eat a sweep's time for one number.

Memory comes from a dry run of the case's own set-up and step on fake tensors
(``attnbench.harness.measure.dryrun``): weights, cache, inputs, the cache fill, what the prepared step holds,
the step's intermediates and output, plus the timer's own buffers. ``Prediction.step_bytes`` has the
scope of the measured ``peak_mem_bytes`` (everything held while one step runs); ``guard_bytes``
also covers the set-up, whichever is larger.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException

from attnbench.harness.measure.case import Case
from attnbench.harness.measure.deadline import Overran, deadline
from attnbench.harness.measure.dryrun import dry_run
from attnbench.harness.measure.refusal import is_refusal
from attnbench.variants.cost import Cost
from attnbench.variants.implementation import Implementation
from attnbench.variants.layer import AttentionLayer

log = logging.getLogger(__name__)

# Eager attention holds the float32 scores, the masked scores and the probabilities at once.
_SCORE_COPIES = 3
_SCORE_BYTES = 4
# Fused kernels allocate scratch the dry run cannot see (PyTorch's CPU flash attention: per-thread
# query/key blocks and accumulators, a few hundred KiB at most at these head sizes); measured on a
# 2-core CPU the gap was <= 4 KiB in decode. A share plus a constant covers it without
# inflating small cases past the 1.5x the prediction is held to.
_UNSEEN_SHARE = 0.02
_UNSEEN_BYTES = 64 << 10

# Conservative (fast) rates for the step-time guard when the device is not calibrated: a guard
# computed from them is a lower bound of the step time on any device of the type we know, so it only
# skips a case that could not finish in time even on hardware faster than this one.
_BUILT_IN_RATES = {  # device type -> (FLOP/s per CPU core or per GPU, bytes/s)
    "cpu": (2e11, 2e11),  # 200 GFLOP/s per core: AVX-512 FMA at ~3 GHz; 200 GB/s: 8-channel DDR5
    "cuda": (2.5e15, 1e13),  # above a B200's dense bf16 rate and HBM3e bandwidth
}


@dataclass(frozen=True)
class Prediction:
    weight_bytes: int
    cache_bytes: int
    input_bytes: int
    transient_bytes: int  # the step's own allocations (intermediates, output, unseen kernel scratch)
    prepared_bytes: int = 0  # held by the prepared step (masks, folded weights)
    timer_bytes: int = 0  # the timer's own buffers (CUDA L2 flush)
    setup_bytes: int = 0  # most held beyond weights and cache while filling, making inputs, preparing
    method: Literal["dry_run", "cost_model"] = "dry_run"

    @property
    def total_bytes(self) -> int:
        """Everything held while one step runs: the scope of the measured ``peak_mem_bytes``."""
        return (self.weight_bytes + self.cache_bytes + self.input_bytes + self.prepared_bytes
                + self.transient_bytes + self.timer_bytes)

    @property
    def guard_bytes(self) -> int:
        """The most the case holds at any moment, set-up included: what must fit."""
        return max(self.total_bytes, self.weight_bytes + self.cache_bytes + self.setup_bytes + self.timer_bytes)


def predict_memory(case: Case, layer: AttentionLayer, impl: Implementation, cost: Cost, *,
                   timer_bytes: int = 0, seed: int = 0, max_s: float = math.inf,
                   fits_bytes: float = math.inf) -> Prediction:
    """Bytes the case needs; from a dry run, or from the cost model if the dry run cannot run the step
    or need not: when weights and cache alone exceed ``fits_bytes`` (what the guard lets a case hold)."""
    if not getattr(impl, "runs_on_fake_tensors", True):
        # flex's compiled kernel cannot run under the allocation tracker, and a failed attempt leaves
        # dynamo marking the function skipped for the rest of the process: the cost model it is.
        return _from_cost(case, layer, impl, cost, timer_bytes=timer_bytes)
    if sum(_resident_bytes(case, layer, impl)) > fits_bytes:
        # Both are exact (parameters, the cache's layout): a dry run could only agree, and at absurd
        # sizes (batch 100000 at 1M tokens) fake tensors took over a minute to say so.
        return _from_cost(case, layer, impl, cost, timer_bytes=timer_bytes)
    try:
        # Fake tensors run a recurrent step token by token too. Torch logs its own traceback when the
        # deadline stops an op inside fake-tensor dispatch: the line below says what happened instead.
        with deadline(max_s, "the memory dry run"), _quiet(logging.getLogger("torch._subclasses.fake_tensor")):
            run = dry_run(case, seed=seed)
    except Exception as error:  # noqa: BLE001 - any op fake tensors cannot run; the estimate below still guards
        if is_refusal(error):
            raise  # the case's setting is refused (hf on a paged cache): a skip, not an estimate
        # A step that reads host data (a paged step's block table) cannot run on fake tensors: expected,
        # not worth a warning per case; anything else is.
        expected = isinstance(error, (DataDependentOutputException, Overran))
        (log.info if expected else log.warning)(
            "memory dry run of %s failed (%s: %s); predicting from the cost model instead",
            case.label(), type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        return _from_cost(case, layer, impl, cost, timer_bytes=timer_bytes)
    step = run.step_peak_bytes
    resident = run.weight_bytes + run.cache_bytes + run.input_bytes + run.prepared_bytes
    unseen = int(_UNSEEN_SHARE * (resident + step)) + _UNSEEN_BYTES
    return Prediction(run.weight_bytes, run.cache_bytes, run.input_bytes, step + unseen,
                      prepared_bytes=run.prepared_bytes, timer_bytes=timer_bytes,
                      setup_bytes=run.setup_peak_bytes + unseen)


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _resident_bytes(case: Case, layer: AttentionLayer, impl: Implementation) -> tuple[int, int]:
    """The weights' and the cache's bytes, from the parameters and the cache's layout."""
    weights = sum(p.numel() for p in layer.parameters()) * case.torch_dtype.itemsize
    cache = layer.cache_layout(impl.path).nbytes(batch=case.batch, context=case.capacities,
                                                 dtype=case.torch_dtype, page_size=case.page_size)
    return weights, cache


def _from_cost(case: Case, layer: AttentionLayer, impl: Implementation, cost: Cost, *,
               timer_bytes: int) -> Prediction:
    b = case.torch_dtype.itemsize
    weights, cache = _resident_bytes(case, layer, impl)
    memory_tokens = case.seq if case.attention == "cross" and case.phase == "prefill" else 0
    inputs = case.batch * (case.q_len + memory_tokens) * layer.hidden * b
    transient = cost.transient_bytes
    kernel = impl.kernel
    materializes = getattr(kernel, "materializes_scores", None)
    if materializes is None or materializes(device_type=case.device.split(":")[0], qk_dim=cost.qk_dim,
                                            v_dim=cost.v_dim):
        transient += cost.score_elements * _SCORE_BYTES * _SCORE_COPIES
    return Prediction(weights, cache, inputs, transient, timer_bytes=timer_bytes, method="cost_model")


def predict_seconds(cost: Cost, *, peak_flops: float, peak_bytes_per_s: float) -> float:
    """Roofline lower bound of one step: the slower of compute and memory traffic at the ceilings."""
    return max(cost.flops / peak_flops, cost.bytes_min / peak_bytes_per_s)


def built_in_rates(device: torch.device) -> tuple[float, float]:
    """(FLOP/s, bytes/s) no device of ``device``'s type is expected to beat: the guard without calibration."""
    flops, bytes_per_s = _BUILT_IN_RATES[device.type]
    if device.type == "cpu":
        flops *= max(torch.get_num_threads(), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count() or 1)
    return flops, bytes_per_s
