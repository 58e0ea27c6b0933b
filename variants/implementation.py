"""An implementation: which dataflow (path) a layer runs and which kernel attends, and where it applies.

Most implementations are a ``KernelImplementation``: a path every family that has it runs the
same way, plus an injected kernel. An external package may implement the ``Implementation``
protocol directly (a FlashMLA wrapper would declare ``path="absorbed"``, ``devices=("cuda",)``)
and register it through the ``attnbench.implementations`` entry point; ``docs/variants.md`` and
``docs/examples/attnbench_example_impl`` show one.

Interface v2, plan then run: ``plan(layer, compile=...)`` does the set-up once per layer (weights
derived from the layer's, compiled kernels) and returns a ``Plan``; ``Plan.bind(step)`` does the
per-step set-up (metadata for the step's cache lengths, block tables) and returns the zero-argument
closure that is timed. A layer's generation loop keeps one plan and binds each token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from attnbench.variants.core.plan import Implementation, LayerLike, Plan, StepPlan
from attnbench.variants.cost import Cost
from attnbench.variants.kernel import Kernel
from attnbench.variants.registry import path_unsupported

if TYPE_CHECKING:
    from attnbench.variants.core.step import Phase

__all__ = ["Implementation", "KernelImplementation", "Plan", "StepPlan"]


@dataclass(frozen=True)
class KernelImplementation:
    name: str
    path: str
    kernel: Kernel
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)  # passed to the family's step_runner and cost
    devices: tuple[str, ...] | None = None  # None: any device type
    dtypes: tuple[torch.dtype, ...] | None = None  # None: any dtype

    def supports(self, layer: LayerLike, *, phase: Phase, device: torch.device,
                 dtype: torch.dtype) -> str | None:
        reason = path_unsupported(self.name, self.path, variant=layer.variant, paths=layer.paths)
        if reason is not None:
            return reason
        reason = layer.kernel_unsupported(self.kernel)
        if reason is not None:
            return reason
        try:  # a kv_dtype the family's cache cannot be stored as (fp8_model1 outside DeepSeek-V4)
            layer.cache_layout(self.path)
        except ValueError as error:
            return str(error)
        if self.devices is not None and torch.device(device).type not in self.devices:
            return f"{self.name} runs on {', '.join(self.devices)} only, not {torch.device(device).type}"
        if self.dtypes is not None and dtype not in self.dtypes:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"{self.name} supports dtypes {allowed} only, not {str(dtype).removeprefix('torch.')}"
        return None

    def plan(self, layer: LayerLike, *, compile: str | None = None) -> Plan:
        run = layer.step_runner(self.path, self.kernel, **self.options)
        if compile is not None:
            # Wraps this plan's runner only; nothing is rebound globally.
            run = torch.compile(run, mode=compile)
        return StepPlan(run)

    def cost(self, layer: LayerLike, *, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None) -> Cost:
        return layer.cost(path=self.path, batch=batch, q_len=q_len, cached=cached, new_kv=new_kv,
                          dtype=dtype, **self.options)
