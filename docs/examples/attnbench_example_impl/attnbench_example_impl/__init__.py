"""``example_online``: an attnbench implementation from outside the repository.

Legend: B batch, L queries, T keys, N query heads, K kv heads, G = N / K, E key dim, V value dim.

It shows both halves of interface v2 (``attnbench.variants.implementation``):

- ``plan(layer, compile=...)`` runs once per layer, outside every timed step: here it checks the
  layer and asks the family for its step runner with this package's kernel injected (a wrapper of
  a real library would build its metadata, workspaces or compiled kernels here);
- the plan's ``bind(step)`` runs once per step, also outside the timing (per-step metadata such
  as FlashInfer's ``plan(...)`` for the step's lengths would go here) and returns the closure that
  the harness times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from attnbench.variants.implementation import KernelImplementation, StepPlan
from attnbench.variants.mask import AttnMask


class OnlineSoftmaxKernel:
    """Keys in blocks of ``block`` with a running maximum and sum (exact, not an approximation)."""

    name = "online"
    dense_causal = True  # wants a causal mask as a tensor

    def __init__(self, block: int = 32) -> None:
        self.block = block

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        return False  # one [B, N, L, block] tile at a time

    def __call__(self, q_BLNE: Tensor, k_BTKE: Tensor, v_BTKV: Tensor, *, scale: float,
                 mask: AttnMask) -> Tensor:
        B, L, N, _ = q_BLNE.shape
        T, K = k_BTKE.shape[1], k_BTKE.shape[2]
        acc = torch.promote_types(q_BLNE.dtype, torch.float32)
        q_BNLE = q_BLNE.transpose(1, 2).to(acc) * scale
        out_BNLV = q_BNLE.new_zeros(B, N, L, v_BTKV.shape[-1])
        max_BNL1 = q_BNLE.new_full((B, N, L, 1), float("-inf"))
        sum_BNL1 = q_BNLE.new_zeros(B, N, L, 1)
        for t0 in range(0, T, self.block):
            t1 = min(t0 + self.block, T)
            # Each query head reads its kv head (n // G): repeat the block's K kv heads G times.
            k_BNtE = k_BTKE[:, t0:t1].transpose(1, 2).repeat_interleave(N // K, dim=1).to(acc)
            v_BNtV = v_BTKV[:, t0:t1].transpose(1, 2).repeat_interleave(N // K, dim=1).to(acc)
            s_BNLt = q_BNLE @ k_BNtE.transpose(-1, -2)
            if not mask.full:
                assert mask.keep_LT is not None, "this kernel needs a dense mask"
                keep = mask.keep_LT[..., t0:t1]  # [L, t] or [B, 1, L, t] (a ragged batch)
                s_BNLt = s_BNLt.masked_fill(~keep, float("-inf"))
            new_max = torch.maximum(max_BNL1, s_BNLt.amax(-1, keepdim=True))
            # A row whose keys so far are all masked keeps max -inf: its weights must be 0, not NaN.
            safe = new_max.clamp_min(torch.finfo(acc).min)
            p_BNLt = torch.exp(s_BNLt - safe)
            rescale = torch.exp(max_BNL1.clamp_min(torch.finfo(acc).min) - safe)
            sum_BNL1 = sum_BNL1 * rescale + p_BNLt.sum(-1, keepdim=True)
            out_BNLV = out_BNLV * rescale + p_BNLt @ v_BNtV
            max_BNL1 = new_max
        return (out_BNLV / sum_BNL1).to(v_BTKV.dtype).transpose(1, 2)


@dataclass(frozen=True)
class ExampleImplementation(KernelImplementation):
    """Plans once per layer; ``plans`` counts them (the example's own check that loops reuse a plan)."""

    plans: list[str] = field(default_factory=list, compare=False)

    def plan(self, layer, *, compile: str | None = None) -> StepPlan:  # noqa: ANN001 - an AttentionLayer
        self.plans.append(type(layer).__name__)
        run: Callable = layer.step_runner(self.path, self.kernel, **self.options)
        if compile is not None:
            run = torch.compile(run, mode=compile)
        return StepPlan(run)


IMPLEMENTATION = ExampleImplementation(
    name="example_online", path="standard", kernel=OnlineSoftmaxKernel(),
    description="example plug-in (docs/examples): blockwise online-softmax kernel on the standard path")
