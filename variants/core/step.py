"""One step of a layer, as a plan binds it: its phase, inputs and cache positions, fixed at set-up.

Legend: B batch, L new query tokens, M memory tokens (cross-attention), D hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import Tensor

if TYPE_CHECKING:
    from attnbench.variants.cache import KVCache
    from attnbench.variants.mask import AttnMask

Phase = Literal["prefill", "decode"]
PHASES: tuple[str, ...] = ("prefill", "decode")
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune")
StepRunner = Callable[["Step"], Tensor]  # one step's math, set-up done; what a plan calls


@dataclass(frozen=True)
class Step:
    """One step's inputs and cache positions, fixed at set-up; running it twice does the same work."""

    phase: Phase
    x_BLD: Tensor
    cache: KVCache
    # RoPE position of the first query (a ragged batch: one per sequence, [B]); None in
    # cross-attention (no RoPE)
    q_start: int | Tensor | None
    kv_x_BMD: Tensor | None  # tokens whose keys/values this step computes and writes, if any
    kv_start: int | Tensor  # cache position of the first of them (a ragged batch: [B])
    kv_len: int  # T: keys the step attends to, cache positions [0, T)
    mask: AttnMask
