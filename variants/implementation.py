"""An implementation: which dataflow (path) a layer runs and which kernel attends, and where it applies.

Most implementations are a ``KernelImplementation``: a path every family that has it runs the
same way, plus an injected kernel. An external package may implement the ``Implementation``
protocol directly (a FlashMLA wrapper would declare ``path="absorbed"``, ``devices=("cuda",)``)
and register it through the ``attnbench.implementations`` entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from variants.cost import Cost
from variants.kernel import Kernel
from variants.registry import path_unsupported

if TYPE_CHECKING:
    from variants.layer import AttentionLayer, Phase, Step, StepFn


class Implementation(Protocol):
    name: str
    path: str
    kernel: Kernel
    description: str

    def supports(self, layer: AttentionLayer, *, phase: Phase, device: torch.device,
                 dtype: torch.dtype) -> str | None:
        """None when this implementation runs the case, else the reason it doesn't."""
        ...

    def prepare(self, layer: AttentionLayer, step: Step) -> StepFn: ...

    def cost(self, layer: AttentionLayer, *, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None) -> Cost: ...


@dataclass(frozen=True)
class KernelImplementation:
    name: str
    path: str
    kernel: Kernel
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)  # passed to the family's step_fn and cost
    devices: tuple[str, ...] | None = None  # None: any device type
    dtypes: tuple[torch.dtype, ...] | None = None  # None: any dtype

    def supports(self, layer: AttentionLayer, *, phase: Phase, device: torch.device,
                 dtype: torch.dtype) -> str | None:
        reason = path_unsupported(self.name, self.path, variant=layer.variant, paths=layer.paths)
        if reason is not None:
            return reason
        reason = layer.kernel_unsupported(self.kernel)
        if reason is not None:
            return reason
        if self.devices is not None and torch.device(device).type not in self.devices:
            return f"{self.name} runs on {', '.join(self.devices)} only, not {torch.device(device).type}"
        if self.dtypes is not None and dtype not in self.dtypes:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"{self.name} supports dtypes {allowed} only, not {str(dtype).removeprefix('torch.')}"
        return None

    def prepare(self, layer: AttentionLayer, step: Step) -> StepFn:
        return layer.step_fn(self.path, step, self.kernel, **self.options)

    def cost(self, layer: AttentionLayer, *, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None) -> Cost:
        return layer.cost(path=self.path, batch=batch, q_len=q_len, cached=cached, new_kv=new_kv,
                          dtype=dtype, **self.options)
