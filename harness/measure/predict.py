"""Predict a case's memory and time before allocating anything, so a sweep skips what can't run.

On a CPU the alternative to a skip is the kernel's OOM killer ending the whole sweep; on any
device, a step predicted to take minutes would eat a sweep's time for one number.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.measure.case import Case
from variants.cost import Cost
from variants.implementation import Implementation
from variants.layer import AttentionLayer

# Eager attention holds the float32 scores, the masked scores and the probabilities at once.
_SCORE_COPIES = 3
_SCORE_BYTES = 4


@dataclass(frozen=True)
class Prediction:
    weight_bytes: int
    cache_bytes: int
    input_bytes: int
    transient_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.cache_bytes + self.input_bytes + self.transient_bytes


def predict_memory(case: Case, layer: AttentionLayer, impl: Implementation, cost: Cost) -> Prediction:
    """Bytes the step needs: weights, the preallocated cache, inputs and the step's intermediates."""
    b = case.torch_dtype.itemsize
    weights = sum(p.numel() for p in layer.parameters()) * b
    cache = case.batch * layer.cache_layout(impl.path).bytes_at(case.max_len, case.torch_dtype)
    memory_tokens = case.seq if case.attention == "cross" and case.phase == "prefill" else 0
    inputs = case.batch * (case.q_len + memory_tokens) * layer.hidden * b
    transient = cost.transient_bytes
    kernel = impl.kernel
    materializes = getattr(kernel, "materializes_scores", None)
    if materializes is None or materializes(device_type=case.device.split(":")[0], qk_dim=cost.qk_dim,
                                            v_dim=cost.v_dim):
        transient += cost.score_elements * _SCORE_BYTES * _SCORE_COPIES
    return Prediction(weights, cache, inputs, transient)


def predict_seconds(cost: Cost, *, peak_flops: float, peak_bytes_per_s: float) -> float:
    """Roofline lower bound of one step: the slower of compute and memory traffic at the ceilings."""
    return max(cost.flops / peak_flops, cost.bytes_min / peak_bytes_per_s)
