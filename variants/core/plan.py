"""Plan, then run: what an implementation sets up once on a layer, and the protocol every implementation meets.

An implementation *plans* once per layer (``Implementation.plan``) and returns a ``Plan``; the plan
*binds* a step (``attnbench.variants.core.step.Step``) into the zero-argument closure that is timed. The layer
is seen here only as ``LayerLike`` (what an implementation reads of it), so the core imports no layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from attnbench.variants.core.step import Phase, Step, StepRunner
    from attnbench.variants.cost import Cost
    from attnbench.variants.kernel import Kernel


class LayerLike(Protocol):
    """What an implementation reads of a layer (``attnbench.variants.layer.AttentionLayer`` meets it)."""

    variant: str
    paths: tuple[str, ...]

    def kernel_unsupported(self, kernel: Kernel) -> str | None: ...

    def step_runner(self, path: str, kernel: Kernel, **options: Any) -> StepRunner: ...

    def cost(self, *, path: str, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None, **options: Any) -> Cost: ...


class Plan(Protocol):
    """What an implementation set up once on a layer; binds steps into timed closures."""

    def bind(self, step: Step) -> Callable[[], Tensor]:
        """Per-step set-up here (never timed); the closure runs the step and nothing else."""
        ...


@dataclass(frozen=True)
class StepPlan:
    """A plan whose per-step set-up is nothing: the closure calls ``run(step)``."""

    run: StepRunner

    def bind(self, step: Step) -> Callable[[], Tensor]:
        run = self.run

        def closure() -> Tensor:
            # Inference: no autograd graph (it would hold every activation and slow each step).
            with torch.no_grad():
                return run(step)

        return closure


class Implementation(Protocol):
    name: str
    path: str
    kernel: Kernel
    description: str

    def supports(self, layer: LayerLike, *, phase: Phase, device: torch.device,
                 dtype: torch.dtype) -> str | None:
        """None when this implementation runs the case, else the reason it doesn't."""
        ...

    def plan(self, layer: LayerLike, *, compile: str | None = None) -> Plan:
        """Set-up done once per layer (``compile``: a ``torch.compile`` mode or None)."""
        ...

    def cost(self, layer: LayerLike, *, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None) -> Cost: ...
