"""What every attention layer offers: a preallocated cache, prefill and decode, prepared steps.

Legend: B batch, L new query tokens, M memory tokens (cross-attention), D hidden, T visible keys.

A family (``variants.families``) supplies the math: its cache layout per *path* (the dataflow an
implementation runs: ``standard``, MLA's ``absorbed`` and ``expanded``), a step function per path
with the attention kernel injected, and the analytic cost of each path beside that math. This base
class turns those into the public API and into zero-argument closures for the harness, so set-up
(masks, folded weights, compilation wrappers) happens once and is never inside a timed call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from variants.cache import CacheLayout, KVCache
from variants.cost import Cost
from variants.kernel import Kernel
from variants.mask import CAUSAL, AttnMask, MaskFn, make_mask
# Implementation names resolve in the registry (the edge), which imports no family at import time.
from variants.registry import implementation as resolve
from variants.registry import path_unsupported
from variants.shape import AttentionKind, check_choice

if TYPE_CHECKING:
    from variants.implementation import Implementation

Phase = Literal["prefill", "decode"]
PHASES: tuple[str, ...] = ("prefill", "decode")
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune")
StepFn = tuple[Callable[..., Tensor], tuple[Any, ...]]


@dataclass(frozen=True)
class Step:
    """One step's inputs and cache positions, fixed at set-up; running it twice does the same work."""

    phase: Phase
    x_BLD: Tensor
    cache: KVCache
    q_start: int | None  # RoPE position of the first query; None in cross-attention (no RoPE)
    kv_x_BMD: Tensor | None  # tokens whose keys/values this step computes and writes, if any
    kv_start: int  # cache position of the first of them
    kv_len: int  # T: keys the step attends to, cache positions [0, T)
    mask: AttnMask


class AttentionLayer(nn.Module):
    """Base of every family. Subclasses set ``paths`` and implement the three hooks below."""

    paths: ClassVar[tuple[str, ...]] = ("standard",)
    variant: str
    attention: AttentionKind
    hidden: int

    # -- hooks a family implements -------------------------------------------------------------
    def cache_layout(self, path: str) -> CacheLayout:
        raise NotImplementedError

    def step_fn(self, path: str, step: Step, kernel: Kernel, **options: Any) -> StepFn:
        """The function and arguments of one step on ``path``; set-up work happens here."""
        raise NotImplementedError

    def cost(self, *, path: str, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None, **options: Any) -> Cost:
        """Cost of a step: ``q_len`` queries, ``cached`` keys read from the cache, ``new_kv`` keys
        computed and written (self-attention: ``new_kv == q_len``)."""
        raise NotImplementedError

    def mask_fn(self) -> MaskFn:
        """Which keys a query sees, as a mask function of positions: the family's decision."""
        return CAUSAL

    def kernel_unsupported(self, kernel: Kernel) -> str | None:
        """None when ``kernel`` can run this layer's attention, else why not (learned sinks)."""
        return None

    def step_mask(self, *, q_len: int, start: int, cache: KVCache, device: torch.device,
                  dense_causal: bool) -> AttnMask:
        """A self-attention step's mask over the cache rows it reads (a ring cache overrides it)."""
        return make_mask(q_len=q_len, kv_len=start + q_len, q_offset=start, device=device,
                         dense_causal=dense_causal, fn=self.mask_fn())

    # -- the public API --------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def kv_bytes_per_token(self, path: str = "standard", dtype: torch.dtype | None = None) -> int:
        return self.cache_layout(path).bytes_per_token(dtype or self.dtype)

    def new_cache(self, batch: int, max_len: int, *, impl: str | Implementation = "eager") -> KVCache:
        """A cache preallocated for ``max_len`` positions in the layout ``impl`` runs on."""
        implementation = resolve(impl)
        path = implementation.path
        reason = path_unsupported(implementation.name, path, variant=self.variant, paths=self.paths)
        if reason is not None:
            raise ValueError(reason)
        kernel_reason = self.kernel_unsupported(implementation.kernel)
        if kernel_reason is not None:
            raise ValueError(kernel_reason)
        if getattr(self, "rope", None) is not None:
            self.rope.reserve(max_len, dtype=self.dtype, device=self.device)
        return KVCache(self.cache_layout(path), batch=batch, max_len=max_len, dtype=self.dtype,
                       device=self.device)

    def prefill(self, x_BLD: Tensor, cache: KVCache, *, impl: str | Implementation = "eager",
                compile: str | None = None, memory_BMD: Tensor | None = None) -> Tensor:
        """Run L tokens from position 0 and fill the cache (cross-attention: cache ``memory``)."""
        y_BLD = self.prepare("prefill", x_BLD, cache, impl=impl, compile=compile, memory_BMD=memory_BMD)()
        cache.length = memory_BMD.shape[1] if self.attention == "cross" else x_BLD.shape[1]
        return y_BLD

    def decode(self, x_BLD: Tensor, cache: KVCache, *, impl: str | Implementation = "eager",
               compile: str | None = None) -> Tensor:
        """Append L_new >= 1 tokens after the S the cache holds; token i sees positions <= S + i."""
        y_BLD = self.prepare("decode", x_BLD, cache, impl=impl, compile=compile)()
        if self.attention == "self":
            cache.length += x_BLD.shape[1]
        return y_BLD

    def prepare(self, phase: Phase, x_BLD: Tensor, cache: KVCache, *, impl: str | Implementation = "eager",
                compile: str | None = None, memory_BMD: Tensor | None = None) -> Callable[[], Tensor]:
        """A zero-argument closure running one step at the cache's current length.

        The closure writes its new cache entries at fixed positions and does not advance
        ``cache.length``, so the harness can call it repeatedly at the same context length.
        """
        implementation = resolve(impl)
        reason = implementation.supports(self, phase=phase, device=x_BLD.device, dtype=x_BLD.dtype)
        if reason is not None:
            raise ValueError(reason)
        if compile is not None and compile not in COMPILE_MODES:
            raise ValueError(f"compile={compile!r} is not one of: {', '.join(COMPILE_MODES)} (or None)")
        if cache.layout != self.cache_layout(implementation.path):
            raise ValueError("this cache was made for another path; "
                             f"use layer.new_cache(..., impl={implementation.name!r})")
        step = self._make_step(phase, x_BLD, cache, memory_BMD, implementation.kernel)
        fn, args = implementation.prepare(self, step)
        if compile is not None:
            # Wraps this closure only; nothing is rebound globally.
            fn = torch.compile(fn, mode=compile)

        def run() -> Tensor:
            # Inference: no autograd graph (it would hold every activation and slow each step).
            with torch.no_grad():
                return fn(*args)

        return run

    # -- helpers ----------------------------------------------------------------------------------
    def _make_step(self, phase: Phase, x_BLD: Tensor, cache: KVCache, memory_BMD: Tensor | None,
                   kernel: Kernel) -> Step:
        check_choice("phase", phase, PHASES)
        if x_BLD.dim() != 3 or x_BLD.shape[-1] != self.hidden or x_BLD.shape[0] != cache.batch:
            raise ValueError(f"x has shape {tuple(x_BLD.shape)}; expected [batch={cache.batch}, L, hidden={self.hidden}]")
        if x_BLD.dtype != self.dtype:
            raise ValueError(f"x has dtype {x_BLD.dtype} but the layer holds {self.dtype}")
        L = x_BLD.shape[1]
        if L < 1:
            raise ValueError("a step needs at least one query token")
        device = x_BLD.device
        if self.attention == "self":
            if memory_BMD is not None:
                raise ValueError("memory_BMD is for cross-attention; this layer is self-attention")
            start = 0 if phase == "prefill" else cache.length
            end = start + L
            if end > cache.max_len:
                raise ValueError(f"{phase} of {L} tokens after {start} cached exceeds the cache's max_len={cache.max_len}")
            mask = self.step_mask(q_len=L, start=start, cache=cache, device=device,
                                  dense_causal=kernel.dense_causal)
            return Step(phase, x_BLD, cache, start, x_BLD, start, end, mask)
        if phase == "prefill":
            if memory_BMD is None:
                raise ValueError("cross-attention prefill needs memory_BMD, the sequence to attend to")
            M = memory_BMD.shape[1]
            if memory_BMD.shape[0] != cache.batch or memory_BMD.shape[-1] != self.hidden:
                raise ValueError(f"memory has shape {tuple(memory_BMD.shape)}; expected [batch={cache.batch}, M, hidden={self.hidden}]")
            if M > cache.max_len:
                raise ValueError(f"memory of {M} tokens exceeds the cache's max_len={cache.max_len}")
            mask = make_mask(q_len=L, kv_len=M, q_offset=None, device=device)
            return Step(phase, x_BLD, cache, None, memory_BMD, 0, M, mask)
        if memory_BMD is not None:
            raise ValueError("cross-attention decode reads the memory cached at prefill; pass no memory")
        if cache.length == 0:
            raise ValueError("cross-attention decode needs a cache filled by prefill(memory_BMD=...)")
        mask = make_mask(q_len=L, kv_len=cache.length, q_offset=None, device=device)
        return Step(phase, x_BLD, cache, None, None, 0, cache.length, mask)
