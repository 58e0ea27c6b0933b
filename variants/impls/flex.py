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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from attnbench.variants.implementation import KernelImplementation, StepPlan
from attnbench.variants.kernels.flex import FlexCompiler, FlexKernel
from attnbench.variants.mask import block_mask
from attnbench.variants.registry import register_implementation

if TYPE_CHECKING:
    from torch import Tensor

    from attnbench.variants.layer import AttentionLayer, Phase, Step


@dataclass(frozen=True)
class FlexImplementation(KernelImplementation):
    compiler: FlexCompiler = field(default_factory=FlexCompiler, compare=False)
    # A compiled higher-order op: the harness's fake-tensor memory dry run cannot trace it.
    runs_on_fake_tensors: ClassVar[bool] = False

    def supports(self, layer: AttentionLayer, *, phase: Phase, device: torch.device,
                 dtype: torch.dtype) -> str | None:
        reason = super().supports(layer, phase=phase, device=device, dtype=dtype)
        if reason is None and getattr(layer, "sinks", None) is not None and torch.device(device).type != "cuda":
            reason = ("flex applies learned sinks on cuda only: torch's CPU flex_attention returns no "
                      "log-sum-exp under compile")
        return reason

    def plan(self, layer: AttentionLayer, *, compile: str | None = None) -> FlexPlan:
        if compile is not None:
            raise ValueError(f"compile={compile!r} is not allowed with flex, which compiles flex_attention "
                             "itself: use compile=none")
        return FlexPlan(layer, self)


@dataclass(frozen=True)
class FlexPlan:
    """Flex's per-step set-up is the step's ``BlockMask`` (built in ``bind``, never in the timed step)."""

    layer: AttentionLayer
    impl: FlexImplementation

    def bind(self, step: Step) -> Callable[[], Tensor]:
        kernel = FlexKernel(self.impl.compiler(), block_mask(step.mask, device=step.x_BLD.device))
        return StepPlan(self.layer.step_runner(self.impl.path, kernel, **self.impl.options)).bind(step)


def _unprepared(*args: object, **kwargs: object) -> None:
    raise AssertionError("flex's kernel is bound to the step's BlockMask in FlexPlan.bind")


# The registered kernel declares what flex supports; FlexPlan.bind binds the compiled function and mask.
IMPLEMENTATION = register_implementation(FlexImplementation(
    name="flex", path="standard", kernel=FlexKernel(flex=_unprepared, block_mask=None),
    dtypes=(torch.float32, torch.bfloat16, torch.float16),
    description="torch.nn.attention.flex_attention, compiled, BlockMask from the layer's mask function"))
