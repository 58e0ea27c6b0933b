"""A preallocated KV cache, written in place, as a serving engine holds it.

Legend: B batch, S cache positions (``max_len`` allocated, ``length`` filled).

A variant describes what it caches per token as a ``CacheLayout``: named fields, each with a
per-token shape. Fields are either separate buffers ``[B, S, *shape]`` or, when ``packed``, side by
side in one ``[B, S, sum(widths)]`` buffer (MLA keeps ``[c_kv; k_rope]`` contiguous so that the
absorbed path reads it as one key without a copy, as FlashMLA does). A new variant (sliding
window, indexer keys for sparse attention, a compressed block cache) declares its own layout;
nothing here knows about any variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class CacheField:
    name: str
    shape: tuple[int, ...]  # per token, e.g. (K, H) for GQA keys or (C,) for MLA's latent

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class CacheLayout:
    fields: tuple[CacheField, ...]
    packed: bool = False  # all fields 1-D and stored side by side in one buffer

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        assert len(set(names)) == len(names), f"duplicate cache field in {names}"
        assert not self.packed or all(len(f.shape) == 1 for f in self.fields), "packed fields are 1-D"

    @property
    def elements_per_token(self) -> int:
        return sum(f.numel for f in self.fields)

    def bytes_per_token(self, dtype: torch.dtype) -> int:
        return self.elements_per_token * dtype.itemsize

    def positions(self, context: int) -> int:
        """Cache rows held for ``context`` tokens (a ring layout holds fewer)."""
        return context

    def bytes_at(self, context: int, dtype: torch.dtype) -> int:
        """Bytes one sequence's cache holds at ``context`` tokens."""
        return self.positions(context) * self.bytes_per_token(dtype)


class KVCache:
    """Buffers of ``max_len`` positions allocated once; ``write`` copies into a slice, never grows.

    ``length`` is how many positions hold valid entries. The harness reads and resets it so that a
    timed decode step can be repeated at the same context length.
    """

    def __init__(self, layout: CacheLayout, *, batch: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        if batch <= 0 or max_len <= 0:
            raise ValueError(f"cache batch={batch}, max_len={max_len}: both must be positive integers")
        self.layout = layout
        self.batch = batch
        self.max_len = max_len
        self.length = 0
        rows = layout.positions(max_len)  # a ring layout keeps fewer rows than positions
        self.buffers: dict[str, Tensor] = {}
        self.fields: dict[str, Tensor] = {}
        if layout.packed:
            width = layout.elements_per_token
            packed_BSW = torch.zeros(batch, rows, width, dtype=dtype, device=device)
            self.buffers["packed"] = packed_BSW
            offset = 0
            for field in layout.fields:
                self.fields[field.name] = packed_BSW[..., offset:offset + field.numel]
                offset += field.numel
        else:
            for field in layout.fields:
                buf = torch.zeros(batch, rows, *field.shape, dtype=dtype, device=device)
                self.buffers[field.name] = buf
                self.fields[field.name] = buf

    def __getitem__(self, name: str) -> Tensor:
        """The whole preallocated field ``[B, rows, *shape]`` (a view when packed)."""
        return self.fields[name]

    @property
    def packed(self) -> Tensor:
        assert self.layout.packed, "this cache layout is not packed"
        return self.buffers["packed"]

    def write(self, start: int, **entries_BL: Tensor) -> None:
        """Copy new entries into positions [start, start + L) of each named field, in place."""
        for name, value in entries_BL.items():
            end = start + value.shape[1]
            assert end <= self.max_len, f"cache overflow: writing up to {end} > max_len {self.max_len}"
            self.fields[name][:, start:end].copy_(value)

    def read(self, name: str, end: int) -> Tensor:
        """Positions [0, end) of a field, as a view of the buffer (no copy)."""
        return self.fields[name][:, :end]

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors, measured from the tensors themselves."""
        return sum(buf.numel() * buf.element_size() for buf in self.buffers.values())

    def fill_random_(self, length: int, *, seed: int = 0) -> None:
        """Fill [0, length) with unit-normal values, drawn on the cache's device, and mark it valid.

        Stands in for a long prefill when only the decode step is measured: the step's cost does
        not depend on the cached values, and a 128k-token prefill would dominate a CPU sweep.
        """
        if not 0 <= length <= self.max_len:
            raise ValueError(f"fill length {length} is outside [0, max_len={self.max_len}]")
        for buf in self.buffers.values():
            generator = torch.Generator(device=buf.device).manual_seed(seed)
            view = buf[:, :self.layout.positions(length)]
            view.copy_(torch.randn(view.shape, generator=generator, device=buf.device, dtype=buf.dtype))
        self.length = length
