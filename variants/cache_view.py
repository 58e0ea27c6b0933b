"""What a kernel reads: the cache where it lies (storage plus metadata), never a copy gathered for it.

Legend: B batch, S rows per sequence of a contiguous buffer, Q pages in a pool, P page size,
J block-table columns (pages per sequence), T rows the step reads (the longest sequence), t rows of
one chunk, W a buffer's row width, F a field's width, G fp8 scale groups per row.

FlashMLA's and FlashInfer's decode kernels take the page pool (or the contiguous cache), a block
table, per-sequence lengths and fp8 scales, and read what they need. A ``CacheView`` is that
contract in torch: the storage tensors as the cache allocated them, the block table, the lengths,
the scales, and a ``ViewLayout`` saying where each field sits (which buffer, at which column of its
row: MLA's packed latent row is ``c_kv`` at 0..C then ``k_rope`` at C..C+J). A kernel decides how to
read it: ``rows`` gives a chunk of every sequence's rows (a view of a contiguous buffer, or that
chunk's pages copied out of the pool, dequantized if fp8: per-chunk temporaries only), ``gather``
the whole prefix as one tensor (the adapter for kernels that want contiguous tensors: a view when
the cache is contiguous in the compute dtype, else a copy of the whole cache).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from attnbench.variants import quant


@dataclass(frozen=True)
class FieldSlot:
    """Where one cached field lies: ``buffer`` (``"packed"``, the shared rows, or the field's own name),
    columns ``[offset, offset + width)`` of that buffer's rows; ``tile``: elements per fp8 scale (None:
    stored in the compute dtype)."""

    name: str
    buffer: str
    offset: int
    width: int
    tile: int | None = None


@dataclass(frozen=True)
class ViewLayout:
    """How the storage is laid out: contiguous ``[B, S, W]`` buffers (``page_size`` None) or pools
    ``[Q, P, W]`` read through the block table; and each field's slot."""

    page_size: int | None
    slots: tuple[FieldSlot, ...]

    @property
    def paged(self) -> bool:
        return self.page_size is not None

    def slot(self, name: str) -> FieldSlot:
        for slot in self.slots:
            if slot.name == name:
                return slot
        raise KeyError(f"no cache field {name!r} in this view; fields: {[s.name for s in self.slots]}")

    def shares_buffer(self, *names: str) -> bool:
        """Whether the named fields sit side by side, in this order, in one buffer in the compute
        dtype (one read of that buffer's rows serves them all)."""
        slots = [self.slot(n) for n in names]
        offsets = [s.offset for s in slots]
        return (len({s.buffer for s in slots}) == 1 and all(s.tile is None for s in slots)
                and offsets == [slots[0].offset + sum(s.width for s in slots[:i]) for i in range(len(slots))])


@dataclass(frozen=True, eq=False)
class CacheView:
    """One step's read of a cache: rows ``[0, kv_len)`` of each sequence (fewer where ``seq_lens_B``
    says so: the rest is padding a kernel masks or skips)."""

    layout: ViewLayout
    storage: Mapping[str, Tensor]  # buffer name -> [B, S, W] or the pool [Q, P, W], as allocated
    scales: Mapping[str, Tensor]  # fp8 field -> float32 scales [B, S, G] or [Q, P, G]
    block_table_BJ: Tensor | None  # int32, paged only: page of sequence b's rows [j·P, (j+1)·P)
    seq_lens_B: Tensor | None  # int32 valid rows per sequence; None: every sequence holds kv_len
    kv_len: int  # T
    batch: int  # B
    dtype: torch.dtype  # the compute dtype fp8 fields dequantize to

    def chunks(self, tokens: int) -> Iterator[tuple[int, int]]:
        """Row ranges ``[t0, t1)`` covering ``[0, kv_len)``, ``tokens`` rows each (the last shorter); on a
        paged cache a whole number of pages each, so no page is read twice."""
        P = self.layout.page_size
        step = max(tokens, 1) if P is None else max(P, tokens // P * P)
        for t0 in range(0, self.kv_len, step):
            yield t0, min(t0 + step, self.kv_len)

    def scratch(self, buffer: str, tokens: int) -> Tensor | None:
        """Room for one chunk of ``tokens`` rows of a paged buffer, to pass to ``buffer_rows`` for every
        chunk of a step (one allocation per step, not one per chunk: a fresh multi-MiB tensor per
        chunk costs its page faults each time); None for a contiguous cache, read in place."""
        P = self.layout.page_size
        if P is None:
            return None
        pool = self.storage[buffer]
        return pool.new_empty(self.batch * math.ceil(tokens / P), *pool.shape[1:])

    def buffer_rows(self, buffer: str, t0: int, t1: int, scratch: Tensor | None = None) -> Tensor:
        """``[B, t, W]``: rows ``[t0, t1)`` of one storage buffer, a view (contiguous) or the pages
        holding them copied out of the pool by one ``index_select`` (paged; into ``scratch`` if given)."""
        buf = self.storage[buffer]
        return self._rows(buf, t0, t1, scratch)

    def rows(self, name: str, t0: int, t1: int, buffer_rows: Tensor | None = None) -> Tensor:
        """``[B, t, F]``: field ``name`` at rows ``[t0, t1)``, in the compute dtype (fp8: dequantized,
        a chunk-sized copy). ``buffer_rows``: that field's buffer rows, if already read."""
        slot = self.layout.slot(name)
        rows_BtW = self.buffer_rows(slot.buffer, t0, t1) if buffer_rows is None else buffer_rows
        values_BtF = rows_BtW[..., slot.offset:slot.offset + slot.width]
        if slot.tile is None:
            return values_BtF
        scale_BtG = self._rows(self.scales[name], t0, t1)
        return quant.dequantize(values_BtF, scale_BtG, self.dtype)

    def gather(self, name: str) -> Tensor:
        """``[B, T, F]``: field ``name`` over the whole prefix. A view when the cache is contiguous and in
        the compute dtype; otherwise a copy of the whole prefix (the adapter for kernels that take
        contiguous tensors, ``attnbench.variants.families.mla.kernel.attend_latent``)."""
        return self.rows(name, 0, self.kv_len)

    def gather_buffer(self, buffer: str) -> Tensor:
        """``[B, T, W]``: a storage buffer's rows over the whole prefix (a view, or a copy when paged)."""
        return self.buffer_rows(buffer, 0, self.kv_len)

    def _rows(self, buf: Tensor, t0: int, t1: int, scratch: Tensor | None = None) -> Tensor:
        P = self.layout.page_size
        if P is None:
            return buf[:, t0:t1]
        assert self.block_table_BJ is not None
        j0, j1 = t0 // P, math.ceil(t1 / P)
        pages_N = self.block_table_BJ[:, j0:j1].reshape(-1)  # int32; a copy of B·(j1 - j0) entries
        if scratch is None:
            pages_NPW = buf.index_select(0, pages_N)
        else:
            pages_NPW = torch.index_select(buf, 0, pages_N, out=scratch[:pages_N.numel()])
        chunk_BtW = pages_NPW.view(self.batch, (j1 - j0) * P, *buf.shape[2:])
        return chunk_BtW[:, t0 - j0 * P:t1 - j0 * P]
