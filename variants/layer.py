"""What every attention layer offers: a preallocated cache, prefill and decode, prepared steps.

Legend: B batch, L new query tokens, M memory tokens (cross-attention), D hidden, T visible keys.

A family (``attnbench.variants.families``) supplies the math: its cache layout per *path* (the dataflow an
implementation runs: ``standard``, MLA's ``absorbed`` and ``expanded``), a step runner per path
with the attention kernel injected, and the analytic cost of each path beside that math.

Plan, then run (FlashInfer's ``plan``/``run``, tritonbench's closure factories): an implementation
*plans* once per layer (absorbed weights, compiled kernels, anything that does not depend on the
tokens) and returns a ``Plan``; the plan *binds* a step (its inputs and cache positions, plus any
per-step metadata such as block tables) into a zero-argument closure, the only thing ever timed.
``layer.decode``/``prefill`` keep their ``LayerPlan`` on the cache they run on, so a generation
loop plans once, not once per token; ``layer.plan(...)`` gives the same handle explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from attnbench.variants.cache import CacheLayout, KVCache
from attnbench.variants.core.step import COMPILE_MODES, PHASES, Phase, Step, StepRunner
from attnbench.variants.cost import Cost
from attnbench.variants.kernel import Kernel
from attnbench.variants.mask import CAUSAL, AttnMask, MaskFn, make_mask

# Implementation names resolve in the registry (the edge), which imports no family at import time.
from attnbench.variants.registry import implementation as resolve
from attnbench.variants.registry import path_unsupported
from attnbench.variants.shape import AttentionKind, check_choice

if TYPE_CHECKING:
    from attnbench.variants.core.plan import Implementation, Plan

__all__ = ["COMPILE_MODES", "PHASES", "AttentionLayer", "LayerPlan", "Phase", "Step", "StepRunner"]

class AttentionLayer(nn.Module):
    """Base of every family. Subclasses set ``paths`` and implement the three hooks below."""

    paths: ClassVar[tuple[str, ...]] = ("standard",)
    variant: str
    # How the cache stores what it keeps (``ModelShape.kv_dtype``): families apply it in
    # ``cache_layout`` through ``CacheLayout.stored_as``. A plain attribute, so that the numerics
    # gate can compare an fp8 cache against a reference that keeps full precision.
    kv_dtype: str = "auto"
    attention: AttentionKind
    hidden: int

    # -- hooks a family implements -------------------------------------------------------------
    def cache_layout(self, path: str) -> CacheLayout:
        raise NotImplementedError

    def step_runner(self, path: str, kernel: Kernel, **options: Any) -> StepRunner:
        """The function running one step on ``path`` with ``kernel``. Set-up work (absorbed weights,
        checks) happens here, once per plan; the returned function does only the step."""
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
        """None when ``kernel`` can run this layer's attention, else why not (learned sinks, an fp8
        cache for a kernel that reads the packed rows as one tensor)."""
        if self.kv_dtype != "auto" and getattr(kernel, "packed_cache", False):
            return (f"kv_dtype={self.kv_dtype}: the {kernel.name} kernel reads the packed cache rows as one "
                    "tensor of the compute dtype; an fp8 cache is dequantized per field (use absorbed or "
                    "absorbed_fold_o)")
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

    def new_cache(self, batch: int, max_len: int | Sequence[int], *, impl: str | Implementation = "eager",
                  page_size: int | None = None) -> KVCache:
        """A cache preallocated for ``max_len`` positions in the layout ``impl`` runs on; with
        ``page_size``, paged (``max_len`` may then be one capacity per sequence)."""
        implementation = resolve(impl)
        path = implementation.path
        reason = path_unsupported(implementation.name, path, variant=self.variant, paths=self.paths)
        if reason is not None:
            raise ValueError(reason)
        kernel_reason = self.kernel_unsupported(implementation.kernel)
        if kernel_reason is not None:
            raise ValueError(kernel_reason)
        cache = KVCache(self.cache_layout(path), batch=batch, max_len=max_len, dtype=self.dtype,
                        device=self.device, page_size=page_size)
        if getattr(self, "rope", None) is not None:
            self.rope.reserve(cache.max_len, dtype=self.dtype, device=self.device)
        return cache

    def plan(self, impl: str | Implementation = "eager", *, compile: str | None = None) -> LayerPlan:
        """Plan ``impl`` on this layer once: the handle runs any number of steps without set-up.

        The plan snapshots what the implementation derives from the weights (MLA's absorbed
        W_UK, W_UV, W_O·W_UV): plan again after changing the weights.
        """
        implementation = resolve(impl)
        if compile is not None and compile not in COMPILE_MODES:
            raise ValueError(f"compile={compile!r} is not one of: {', '.join(COMPILE_MODES)} (or None)")
        reason = path_unsupported(implementation.name, implementation.path, variant=self.variant, paths=self.paths)
        if reason is None:
            reason = self.kernel_unsupported(implementation.kernel)
        if reason is not None:
            raise ValueError(reason)
        return LayerPlan(self, implementation, compile, implementation.plan(self, compile=compile))

    def prefill(self, x_BLD: Tensor, cache: KVCache, *, impl: str | Implementation = "eager",
                compile: str | None = None, memory_BMD: Tensor | None = None) -> Tensor:
        """Run L tokens from position 0 and fill the cache (cross-attention: cache ``memory``)."""
        return self._cached_plan(cache, impl, compile).prefill(x_BLD, cache, memory_BMD=memory_BMD)

    def decode(self, x_BLD: Tensor, cache: KVCache, *, impl: str | Implementation = "eager",
               compile: str | None = None) -> Tensor:
        """Append L_new >= 1 tokens after the S the cache holds; token i sees positions <= S + i.

        Called in a loop, it plans once: the plan is kept on ``cache`` (one per implementation
        and compile mode), so no token pays the set-up again."""
        return self._cached_plan(cache, impl, compile).decode(x_BLD, cache)

    def prepare(self, phase: Phase, x_BLD: Tensor, cache: KVCache, *, impl: str | Implementation = "eager",
                compile: str | None = None, memory_BMD: Tensor | None = None) -> Callable[[], Tensor]:
        """A zero-argument closure running one step at the cache's current length (a fresh plan).

        The closure writes its new cache entries at fixed positions and does not advance
        ``cache.length``, so the harness can call it repeatedly at the same context length.
        """
        return self.plan(impl, compile=compile).bind(phase, x_BLD, cache, memory_BMD=memory_BMD)

    def _cached_plan(self, cache: KVCache, impl: str | Implementation, compile: str | None) -> LayerPlan:
        _check_cache(cache)
        implementation = resolve(impl)
        key = (id(self), implementation.name, compile)
        plan = cache.plans.get(key)
        if plan is None or plan.layer is not self or plan.implementation is not implementation:
            plan = cache.plans[key] = self.plan(implementation, compile=compile)
        return plan

    # -- helpers ----------------------------------------------------------------------------------
    def _make_step(self, phase: Phase, x_BLD: Tensor, cache: KVCache, memory_BMD: Tensor | None,
                   kernel: Kernel) -> Step:
        check_choice("phase", phase, PHASES)
        if not _same_device(x_BLD.device, self.device):
            raise ValueError(f"x is on {x_BLD.device} but the layer on {self.device}; move one to the other")
        if getattr(cache, "dtype", self.dtype) != self.dtype:
            raise ValueError(f"the cache holds {cache.dtype} but the layer {self.dtype}; make the cache with "
                             "layer.new_cache")
        if getattr(self, "rope", None) is not None:  # a cache made elsewhere (KVCache(...), a twin layer's)
            self.rope.reserve(cache.max_len, dtype=self.dtype, device=self.device)
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
            if cache.seq_lens is not None and phase == "decode":
                return self._ragged_step(x_BLD, cache, kernel)
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
            if not isinstance(memory_BMD, Tensor) or memory_BMD.dim() != 3:
                raise ValueError(f"memory_BMD must be a tensor [batch={cache.batch}, M, hidden={self.hidden}]")
            M = memory_BMD.shape[1]
            if memory_BMD.shape[0] != cache.batch or memory_BMD.shape[-1] != self.hidden or M < 1:
                raise ValueError(f"memory has shape {tuple(memory_BMD.shape)}; expected [batch={cache.batch}, M >= 1, "
                                 f"hidden={self.hidden}]")
            if memory_BMD.dtype != self.dtype or not _same_device(memory_BMD.device, self.device):
                raise ValueError(f"memory is {memory_BMD.dtype} on {memory_BMD.device} but the layer {self.dtype} "
                                 f"on {self.device}")
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

    def _ragged_step(self, x_BLD: Tensor, cache: KVCache, kernel: Kernel) -> Step:
        """Decode on a ragged batch: sequence b's tokens go at positions ``seq_lens[b] + i``.

        The kernels see the keys ``[0, T)`` with T the longest sequence's end, and a boolean mask
        ``[B, 1, L, T]`` hiding each shorter sequence's padding (the built-in kernels attend on the
        padded batch; the cost model counts that work)."""
        assert cache.seq_lens is not None
        L, device = x_BLD.shape[1], x_BLD.device
        for b, (n, cap) in enumerate(zip(cache.seq_lens, cache.capacities, strict=True)):
            if n + L > cap:
                raise ValueError(f"decode of {L} tokens after seq_lens[{b}]={n} exceeds that sequence's "
                                 f"capacity {cap}")
        start_B = torch.tensor(cache.seq_lens, device=device)
        end = max(cache.seq_lens) + L
        q_pos_B1L1 = (start_B.view(-1, 1) + torch.arange(L, device=device)).view(-1, 1, L, 1)
        keep_B1LT = torch.arange(end, device=device).view(1, 1, 1, end) <= q_pos_B1L1
        # One offset cannot describe the batch; the dense mask can (never "full" or "square causal").
        mask = AttnMask(L, end, min(cache.seq_lens), keep_B1LT)
        assert not mask.full and not mask.square_causal or len(set(cache.seq_lens)) == 1
        return Step("decode", x_BLD, cache, start_B, x_BLD, start_B, end, mask)


class LayerPlan:
    """An implementation planned on one layer: binds steps into closures, runs prefill and decode.

    Set-up happened when the plan was made (``Implementation.plan``); ``bind`` does only the
    per-step work (input checks, the mask, the implementation's per-step metadata) and returns the
    closure the harness times.
    """

    def __init__(self, layer: AttentionLayer, implementation: Implementation, compile: str | None,
                 plan: Plan) -> None:
        self.layer = layer
        self.implementation = implementation
        self.compile = compile
        self.plan = plan

    def bind(self, phase: Phase, x_BLD: Tensor, cache: KVCache, *,
             memory_BMD: Tensor | None = None) -> Callable[[], Tensor]:
        layer, implementation = self.layer, self.implementation
        if not isinstance(x_BLD, Tensor):
            raise ValueError(f"x is a {type(x_BLD).__name__}; give a torch.Tensor [batch, L, hidden={layer.hidden}]")
        _check_cache(cache)
        reason = implementation.supports(layer, phase=phase, device=x_BLD.device, dtype=x_BLD.dtype)
        if reason is not None:
            raise ValueError(reason)
        if cache.layout != layer.cache_layout(implementation.path):
            raise ValueError("this cache was made for another path; "
                             f"use layer.new_cache(..., impl={implementation.name!r})")
        step = layer._make_step(phase, x_BLD, cache, memory_BMD, implementation.kernel)
        return self.plan.bind(step)

    def prefill(self, x_BLD: Tensor, cache: KVCache, *, memory_BMD: Tensor | None = None) -> Tensor:
        y_BLD = self.bind("prefill", x_BLD, cache, memory_BMD=memory_BMD)()
        cache.seq_lens = None  # every sequence now holds the prefill's tokens
        cache.length = memory_BMD.shape[1] if self.layer.attention == "cross" else x_BLD.shape[1]
        return y_BLD

    def decode(self, x_BLD: Tensor, cache: KVCache) -> Tensor:
        y_BLD = self.bind("decode", x_BLD, cache)()
        if self.layer.attention == "self":
            cache.advance(x_BLD.shape[1])
        return y_BLD


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Same type, and the same index where both name one (``cuda`` and ``cuda:0`` agree)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_cache(cache: object) -> None:
    if not isinstance(getattr(cache, "plans", None), dict):
        raise ValueError(f"cache is a {type(cache).__name__}; give a cache made by layer.new_cache(batch, max_len)")
