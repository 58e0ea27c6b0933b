"""A linear-attention layer's cache: a fixed-size state per sequence, written in place, never reallocated.

Legend: B batch, N value heads (one state each), K key dim, V value dim, C conv channels (q, k, v
concatenated), W = conv kernel - 1 (the inputs the short convolution still needs).

Per sequence and layer (Qwen3-Next's and Kimi Linear's caches hold the same two tensors):
- ``state``: the delta rule's recurrent state ``[N, K, V]`` in float32, as both models keep it
  (float64 when the layer computes in float64: the numerics reference);
- ``conv``: the last W inputs of the causal convolution over q, k, v, ``[C, W]``, in the compute dtype.

Its size is a function of the layout, never of the context: at Qwen3-Next's shape (N=32, K=V=128)
the state is 32·128·128·4 B = 2 MiB, at Kimi Linear's (N=32, K=V=128) also 2 MiB. ``length`` only
counts tokens seen (the harness reads and resets it). fp8 storage is refused: both models keep the
state in float32, and no kernel reads a quantized delta-rule state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import copy
from typing import Any

import torch
from torch import Tensor

from attnbench.variants.cache import CacheLayout


def state_dtype(compute: torch.dtype) -> torch.dtype:
    """float32 for any compute dtype up to float32 (as the models keep it), float64 for float64."""
    return torch.promote_types(compute, torch.float32)


@dataclass(frozen=True)
class StateLayout(CacheLayout):
    """A fixed-size state: no per-token fields (``fields`` stays empty), bytes independent of context."""

    fields: tuple = ()
    heads: int = 1  # N
    k_dim: int = 1  # K
    v_dim: int = 1  # V
    conv_dim: int = 1  # C
    conv_kernel: int = 4  # W + 1

    @property
    def elements_per_token(self) -> int:
        return 0

    def bytes_per_token(self, dtype: torch.dtype) -> int:
        return 0

    def stored_as(self, kv_dtype: str) -> CacheLayout:
        if kv_dtype != "auto":
            raise ValueError(f"kv_dtype={kv_dtype!r} is not supported by a linear-attention state (kept in "
                             "float32 as Qwen3-Next and Kimi Linear keep it); valid: auto")
        return self

    def positions(self, context: int) -> int:
        return 0

    @property
    def growing(self) -> bool:
        return False

    def state_bytes(self, dtype: torch.dtype) -> int:
        """Recurrent state of one sequence, ``N·K·V`` in float32 (float64 for a float64 layer)."""
        return self.heads * self.k_dim * self.v_dim * state_dtype(dtype).itemsize

    def conv_bytes(self, dtype: torch.dtype) -> int:
        return self.conv_dim * (self.conv_kernel - 1) * dtype.itemsize

    def bytes_at(self, context: int, dtype: torch.dtype) -> int:
        """One sequence's cache at any ``context``: the state and the conv window, nothing per token."""
        return self.state_bytes(dtype) + self.conv_bytes(dtype)

    def nbytes(self, *, batch: int, context: int | Sequence[int], dtype: torch.dtype,
               page_size: int | None = None) -> int:
        if page_size is not None:
            raise ValueError(f"page_size={page_size}: a linear-attention state has no pages; leave page_size unset")
        return batch * self.bytes_at(0, dtype)


class StateCache:
    """The state of ``batch`` sequences for one layer, allocated once.

    Offers what ``attnbench.variants.layer.LayerPlan`` and the harness use of a ``KVCache`` (``layout``,
    ``length``, ``advance``, ``fill_random_``, ``nbytes``, ``plans``); ``max_len`` only bounds the
    ``length`` counter (a state holds any context)."""

    page_size = None
    block_table = None
    paged = False

    def __init__(self, layout: StateLayout, *, batch: int, max_len: int | Sequence[int], dtype: torch.dtype,
                 device: torch.device | str, page_size: int | None = None) -> None:
        if page_size is not None:
            raise ValueError(f"page_size={page_size}: a linear-attention state has no pages; leave page_size unset")
        capacities = [max_len] * batch if isinstance(max_len, int) else [int(n) for n in max_len]
        if batch <= 0 or len(capacities) != batch or min(capacities) <= 0:
            raise ValueError(f"cache batch={batch}, max_len={max_len}: both must be positive integers")
        self.layout = layout
        self.batch = batch
        self.capacities = capacities
        self.max_len = max(capacities)
        self.dtype = dtype
        self.length = 0
        self.seq_lens: list[int] | None = None
        self.plans: dict[tuple[object, ...], Any] = {}
        L = layout
        self.state = torch.zeros(batch, L.heads, L.k_dim, L.v_dim, dtype=state_dtype(dtype), device=device)
        self.conv = torch.zeros(batch, L.conv_dim, L.conv_kernel - 1, dtype=dtype, device=device)
        self.buffers: dict[str, Tensor] = {"state": self.state, "conv": self.conv}
        # Where a step writes the next state: the state itself (in place), except in ``repeatable()``.
        self.state_out, self.conv_out = self.state, self.conv

    def set_seq_lens(self, seq_lens: Sequence[int]) -> None:
        lengths = [int(n) for n in seq_lens]
        if len(lengths) != self.batch:
            raise ValueError(f"seq_lens={lengths} has {len(lengths)} lengths for a cache of batch={self.batch}; "
                             f"give exactly {self.batch}")
        for b, n in enumerate(lengths):  # as KVCache.set_seq_lens: a length the cache can't have held is refused
            if not 0 <= n <= self.max_len:
                raise ValueError(f"seq_lens[{b}]={n} is outside [0, {self.max_len}], that sequence's capacity")
        self.seq_lens = lengths
        self.length = max(lengths)

    def advance(self, new: int) -> None:
        self.length += new
        if self.seq_lens is not None:
            self.seq_lens = [n + new for n in self.seq_lens]

    def reset_(self) -> None:
        """A fresh sequence: zero state and conv window (prefill starts here)."""
        self.state.zero_()
        self.conv.zero_()

    def nbytes(self) -> int:
        """Bytes held, measured from the tensors themselves."""
        return sum(buf.numel() * buf.element_size() for buf in self.buffers.values())

    def fill_random_(self, length: int, *, seed: int = 0) -> None:
        """Stand in for a prefill of ``length`` tokens (any length: the state does not grow).

        The state is drawn unit-normal, scaled by 1/sqrt(K) so that reads keep unit size, and the conv
        window unit-normal, straight into the storage; nothing is allocated."""
        if not 0 <= length <= self.max_len:
            raise ValueError(f"fill length {length} is outside [0, max_len={self.max_len}]")
        for name, buf in self.buffers.items():
            generator = torch.Generator(device=buf.device).manual_seed(seed + (name == "conv"))
            buf.normal_(generator=generator)
        self.state.mul_(self.layout.k_dim ** -0.5)
        self.length = length
        self.seq_lens = None

    def repeatable(self) -> StateCache:
        """This cache as a step repeated at one context reads it: the same ``state`` and ``conv``,
        the next state written into twin buffers allocated here (never while timed). Each call then
        reads and writes the same bytes as an in-place step and returns the same output, which the
        harness's repeated timing and its full-shape comparison need; ``layer.decode`` writes in place."""
        twin = copy.copy(self)
        twin.state_out, twin.conv_out = torch.empty_like(self.state), torch.empty_like(self.conv)
        twin.plans = {}
        return twin

    def view(self, end: int | None = None, seq_lens_B: Any = None) -> StateCache:
        """What a kernel gets: the cache itself (``state`` and ``conv`` read and written in place)."""
        return self
