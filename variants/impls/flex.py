"""``flex``: the standard path through a compiled ``flex_attention`` whose ``BlockMask`` is built from
the layer's mask function at set-up (GQA, MHA, MQA, swa with windows, sink tokens and learned sinks;
MLA's standard path, whose keys and values differ in width).

Learned sinks need flex's log-sum-exp, which torch 2.13 computes under compile on CUDA only
("torch.compile on CPU only supports inference and `return_lse` is not supported yet"): on CPU a
layer with learned sinks is declared unsupported with that reason.

The compiled function is made once per process (``FlexCompiler``) and compiles on the first call
of a shape, which the harness's warm-up absorbs; the step never builds a mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from variants.implementation import KernelImplementation
from variants.kernels.flex import FlexCompiler, FlexKernel
from variants.mask import block_mask
from variants.registry import register_implementation

if TYPE_CHECKING:
    from variants.layer import AttentionLayer, Phase, Step, StepFn


@dataclass(frozen=True)
class FlexImplementation(KernelImplementation):
    compiler: FlexCompiler = field(default_factory=FlexCompiler, compare=False)

    def supports(self, layer: AttentionLayer, *, phase: Phase, device: torch.device,
                 dtype: torch.dtype) -> str | None:
        reason = super().supports(layer, phase=phase, device=device, dtype=dtype)
        if reason is None and getattr(layer, "sinks", None) is not None and torch.device(device).type != "cuda":
            reason = ("flex applies learned sinks on cuda only: torch's CPU flex_attention returns no "
                      "log-sum-exp under compile")
        return reason

    def prepare(self, layer: AttentionLayer, step: Step) -> StepFn:
        kernel = FlexKernel(self.compiler(), block_mask(step.mask, device=step.x_BLD.device))
        return layer.step_fn(self.path, step, kernel, **self.options)


def _unprepared(*args: object, **kwargs: object) -> None:
    raise AssertionError("flex's kernel is bound to the step's BlockMask in FlexImplementation.prepare")


# The registered kernel declares what flex supports; prepare binds the compiled function and mask.
IMPLEMENTATION = register_implementation(FlexImplementation(
    name="flex", path="standard", kernel=FlexKernel(flex=_unprepared, block_mask=None),
    dtypes=(torch.float32, torch.bfloat16, torch.float16),
    description="torch.nn.attention.flex_attention, compiled, BlockMask from the layer's mask function"))
