"""Every allocation of a case, counted without allocating: its set-up and one step on fake tensors.

Legend: B batch, L new query tokens, M memory tokens (cross-attention), D hidden.

A hand-written estimate of a step's intermediates drifts from the code (a kernel that stops
expanding grouped keys, a new mask, a folded weight held by the closure); running the harness's own
set-up and step under ``FakeTensorMode`` on the case's device (so SDPA picks the backend it would pick
there) follows the code exactly. A ``TorchDispatchMode`` sees each op's outputs: a storage not seen
before is an allocation, released when the last tensor on it dies (CPython frees at refcount zero, as
eager PyTorch does). Buffers a fused kernel allocates inside itself are invisible to it; those of
PyTorch's CPU flash attention are added from the kernel's own sizing (``_cpu_flash_scratch``), and
``attnbench.harness.measure.predict`` adds a small margin for anything else.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from attnbench import variants
from attnbench.harness.measure.case import Case


@dataclass(frozen=True)
class DryRun:
    weight_bytes: int  # parameters and buffers of the layer
    cache_bytes: int  # the preallocated cache
    input_bytes: int  # x (and cross-attention memory)
    prepared_bytes: int  # what the prepared step holds beyond its inputs (masks, folded weights)
    setup_peak_bytes: int  # most held during fill, inputs and prepare, beyond weights and cache
    step_peak_bytes: int  # most allocated during one step beyond everything above, its output included


class _Allocations(TorchDispatchMode):
    """Live bytes of storages created by ops seen while active (``known`` storages excluded)."""

    def __init__(self, known: set[int]) -> None:
        super().__init__()
        self.known = known
        self.live: dict[int, int] = {}  # storage id -> bytes
        self.refs: dict[int, int] = {}  # storage id -> live tensors on it
        self.current = 0
        self.peak = 0

    def reset_peak(self) -> None:
        self.peak = self.current

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= self.live.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        scratch = _SCRATCH.get(func)
        extra = 0 if scratch is None else scratch(*args)  # allocated after the op's outputs, freed in it
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue  # a meta tensor holds no memory (hf builds transformers' module on meta, then shares weights)
            key = _storage_id(tensor)
            if key in self.known:
                continue
            if key not in self.live:
                self.live[key] = tensor.untyped_storage().nbytes()
                self.refs[key] = 0
                self.current += self.live[key]
                self.peak = max(self.peak, self.current)
            self.refs[key] += 1
            weakref.finalize(tensor, self._release, key)
        self.peak = max(self.peak, self.current + extra)
        return out


def _cpu_flash_scratch(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *_: Any) -> int:
    """Scratch of ``aten/src/ATen/native/cpu/FlashAttentionKernel.cpp``: per thread, one query block's
    scores against one key block, its running max and sum and its output accumulator, in the
    accumulation dtype, plus a reduced-precision copy of the scores for bf16/fp16; the blocks are
    256 x 512 from 768 queries on, 64 x 512 from 192, else 32 x 512, capped at the sizes."""
    q_len, kv_len, v_dim = query.shape[-2], key.shape[-2], value.shape[-1]
    q_block = min(q_len, 256 if q_len >= 768 else 64 if q_len >= 192 else 32)
    kv_block = min(kv_len, 512)
    reduced = query.dtype in (torch.bfloat16, torch.float16)
    acc_bytes = 4 if reduced else query.dtype.itemsize
    per_thread = (q_block * kv_block + 2 * q_block + q_block * v_dim) * acc_bytes
    if reduced:
        per_thread += q_block * kv_block * query.dtype.itemsize
    return torch.get_num_threads() * per_thread


def _safe_softmax_scratch(scores: torch.Tensor, dim: int, *_: Any) -> int:
    """``aten._safe_softmax`` (SDPA's math path) masks rows that are all -inf: a bool per score and one
    per row, allocated inside the op (measured on CPU: exactly these sizes)."""
    return scores.numel() + scores.numel() // max(1, scores.shape[dim])


# Ops whose kernels allocate buffers the dispatch mode cannot see, and their sizes.
_SCRATCH = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default: _cpu_flash_scratch,
            torch.ops.aten._safe_softmax.default: _safe_softmax_scratch}


def _storage_id(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata  # the StorageImpl's address: shared by every view of it


def _bytes(tensors: list[torch.Tensor]) -> tuple[int, set[int]]:
    seen: dict[int, int] = {}
    for tensor in tensors:
        seen.setdefault(_storage_id(tensor), tensor.untyped_storage().nbytes())
    return sum(seen.values()), set(seen)


def case_inputs(case: Case, hidden: int, device: torch.device, dtype: torch.dtype,
                seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The step's inputs, as the runner makes them: ``x_BLD`` and, for cross-attention prefill, ``memory_BMD``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    x_BLD = torch.randn(case.batch, case.q_len, hidden, generator=generator, device=device, dtype=dtype)
    memory_BMD = None
    if case.attention == "cross" and case.phase == "prefill":
        memory_BMD = torch.randn(case.batch, case.seq, hidden, generator=generator, device=device, dtype=dtype)
    return x_BLD, memory_BMD


def dry_run(case: Case, *, seed: int = 0) -> DryRun:
    """Run ``case``'s set-up and one uncompiled step as the runner does, on fake tensors.

    Raises whatever the step raises on fake tensors (e.g. an op that reads tensor values on the host).
    """
    device = torch.device(case.device)
    meta = variants.build(case.variant, case.shape, attention=case.attention, dtype=case.torch_dtype,
                          device="meta")
    # allow_non_fake_inputs: to_empty turns the meta parameters into fake ones on ``device``.
    with FakeTensorMode(allow_non_fake_inputs=True):
        layer = meta.to_empty(device=device)
        cache = layer.new_cache(case.batch, case.capacities, impl=case.impl, page_size=case.page_size)
        weight_bytes, known_weights = _bytes([*layer.parameters(), *layer.buffers()])
        # The block table of a paged cache belongs to the cache (KVCache.nbytes counts it too).
        table = [] if cache.block_table is None else [cache.block_table]
        cache_bytes, known_cache = _bytes([*cache.buffers.values(), *table])
        tracker = _Allocations(known_weights | known_cache)
        with tracker:
            if case.phase == "decode":
                cache.fill_random_(case.seq, seed=seed, sequences=1)  # in place: one shows what all allocate
                if case.seq_lens is not None:
                    cache.set_seq_lens(case.seq_lens)
            x_BLD, memory_BMD = case_inputs(case, layer.hidden, device, case.torch_dtype, seed)
            input_bytes, _ = _bytes([t for t in (x_BLD, memory_BMD) if t is not None])
            step = layer.prepare(case.phase, x_BLD, cache, impl=case.impl, memory_BMD=memory_BMD)
            setup_peak, held = tracker.peak, tracker.current
            tracker.reset_peak()
            out: Any = step()
            step_peak = tracker.peak - held
            del out
    return DryRun(weight_bytes=weight_bytes, cache_bytes=cache_bytes, input_bytes=input_bytes,
                  prepared_bytes=held - input_bytes, setup_peak_bytes=setup_peak, step_peak_bytes=step_peak)
