"""A preallocated KV cache, written in place, as a serving engine holds it.

Legend: B batch, S cache positions (``max_len`` allocated, ``length`` filled), L new tokens,
P page size (positions per page), Q pages in the pool.

A variant describes what it caches per token as a ``CacheLayout``: named fields, each with a
per-token shape. Fields are either separate buffers ``[B, S, *shape]`` or, when ``packed``, side by
side in one ``[B, S, sum(widths)]`` buffer (MLA keeps ``[c_kv; k_rope]`` contiguous so that the
absorbed path reads it as one key without a copy, as FlashMLA does); a packed layout may keep a
field ``apart``, in a buffer of its own (DeepSeek-V3.2's indexer keys beside MLA's packed latent,
as FlashMLA's sparse kernels and the indexer read them). A new variant (sliding
window, indexer keys for sparse attention, a compressed block cache) declares its own layout;
nothing here knows about any variant.

The cache's size is a function of its layout and the context (``CacheLayout.nbytes``). A field
keeps one row per position (``positions``, which a layout keeping a ring of ``w`` positions
overrides, as swa's ``RingLayout`` does), or rows of its own: ``ring=R``, the last R positions'
rows (a sliding window, the bounded state of a compressor's open windows), or ``every=m``, one
entry per m positions, written when the m-th arrives (a compressed cache: DeepSeek-V4's CSA and
HCA). ``nbytes``/``bytes_at`` count each field's real rows. Memory prediction, the capacity table
and the cost model ask the layout, never ``tokens x bytes``.

Two options a serving engine has: a *paged* cache (``page_size``: fixed-size pages in one pool
and a block table ``[B, pages]`` saying which pages hold each sequence, as vLLM, FlashInfer and
FlashMLA keep it), and a *ragged* batch (``seq_lens``: each sequence at its own length; a decode
step appends at each sequence's own position).

Storage (``kv_dtype``): a field is kept in the compute dtype, or with ``storage="fp8_e4m3"`` as e4m3
values plus float32 scales per tile of each token (``attnbench.variants.quant``); ``write`` quantizes and
``read`` dequantizes, so a family's step reads the same tensors either way. Fields with
``quantize=False`` (rotary keys, as FlashMLA keeps them in bf16) stay in the compute dtype. A
quantized layout is never packed: its fields have different dtypes (each in a buffer of its own).
``storage="fp8_model1"`` (DeepSeek-V4's entries, ``attnbench.variants.fp8_model1``): a field that names its
trailing ``rope`` dims is kept in FlashMLA's MODEL1 blocks of bytes (584 per entry, blocks padded to
576 bytes); ``nbytes`` and ``bytes_per_token`` count the blocks as allocated.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from attnbench.variants import fp8_model1, quant
from attnbench.variants.cache_view import CacheView, FieldSlot, ViewLayout
from attnbench.variants.shape import KV_DTYPES, check_choice


@dataclass(frozen=True)
class CacheField:
    name: str
    shape: tuple[int, ...]  # per row, e.g. (K, H) for GQA keys or (C,) for MLA's latent
    quantize: bool = True  # whether kv_dtype=fp8_e4m3 applies (False: kept in the compute dtype)
    storage: str = "auto"  # "auto": the compute dtype; "fp8_e4m3": e4m3 values + float32 scales per tile
    # Rows of their own (at most one of the two; neither: one row per position of the layout):
    ring: int | None = None  # the last ``ring`` positions' rows: min(context, ring)
    every: int | None = None  # one entry per ``every`` positions, closed ones only: context // every
    apart: bool = False  # in a packed layout, kept in a buffer of its own rather than in the packed rows
    rope: int = 0  # trailing rotary dims, kept in bf16 by kv_dtype=fp8_model1 (0: that storage does not apply)

    def __post_init__(self) -> None:
        assert self.ring is None or self.every is None, f"cache field {self.name}: a ring or compressed, not both"
        assert self.ring is None or self.ring > 0, f"cache field {self.name}: ring={self.ring}"
        assert self.every is None or self.every > 0, f"cache field {self.name}: every={self.every}"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def fp8(self) -> bool:
        return self.storage == "fp8_e4m3"

    @property
    def tile(self) -> int:
        """Elements per scale of an fp8 field (``attnbench.variants.quant.tile_for`` of its last dimension)."""
        return quant.tile_for(self.shape[-1])

    @property
    def model1(self) -> fp8_model1.Model1Format | None:
        """The byte layout of a field stored as ``fp8_model1`` (None: stored otherwise)."""
        return fp8_model1.Model1Format(self.numel, self.rope) if self.storage == fp8_model1.KV_DTYPE else None

    def bytes_for_rows(self, rows: int, dtype: torch.dtype) -> int:
        """Bytes the field's storage takes for ``rows`` rows (fp8_model1: whole padded blocks)."""
        fmt = self.model1
        return rows * self.bytes_per_row(dtype) if fmt is None else fmt.nbytes(rows)

    def bytes_per_row_long_run(self, dtype: torch.dtype) -> Fraction:
        """Bytes a row adds as rows accumulate (fp8_model1: a padded block per ``block`` rows, 585 at V4)."""
        fmt = self.model1
        return Fraction(self.bytes_per_row(dtype)) if fmt is None else Fraction(fmt.block_bytes, fmt.block)

    def bytes_per_row(self, dtype: torch.dtype) -> int:
        """Bytes of one row of the field as stored (``dtype``: the compute dtype; fp8_model1: one
        entry's 584 bytes at V4's shape, the block's padding apart)."""
        if self.model1 is not None:
            return self.model1.entry_bytes
        if self.fp8:
            return self.numel * quant.FP8.itemsize + self.numel // self.tile * quant.SCALE_DTYPE.itemsize
        return self.numel * dtype.itemsize

    @property
    def per_position(self) -> bool:
        """Whether the field keeps the layout's rows (one per position it holds), not rows of its own."""
        return self.ring is None and self.every is None


@dataclass(frozen=True)
class CacheLayout:
    fields: tuple[CacheField, ...]
    packed: bool = False  # the fields (all but those ``apart``) 1-D and stored side by side in one buffer

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        assert len(set(names)) == len(names), f"duplicate cache field in {names}"
        assert not self.packed or all(len(f.shape) == 1 and f.per_position for f in self.fields if not f.apart), \
            "packed fields are 1-D, one row per position"
        assert all(f.per_position for f in self.fields if f.apart), "a field kept apart has a row per position"

    @property
    def elements_per_token(self) -> int:
        """Elements a token adds in the long run: a row of each per-position field (a ring layout's
        rows included, as before), ``numel / every`` of each compressed field (rounded up), and
        nothing for ring fields, whose rows are bounded."""
        per_position = sum(f.numel for f in self.fields if f.per_position)
        return per_position + math.ceil(sum(Fraction(f.numel, f.every) for f in self.fields if f.every))

    def bytes_per_token(self, dtype: torch.dtype) -> int:
        """Bytes a token adds in the long run, the fields stored as they are (``dtype``: the compute
        dtype), counted as ``elements_per_token`` counts elements."""
        per_position = sum(f.bytes_per_row_long_run(dtype) for f in self.fields if f.per_position)
        return math.ceil(per_position + sum(f.bytes_per_row_long_run(dtype) / f.every for f in self.fields if f.every))

    @property
    def packed_width(self) -> int:
        """Elements per token of the packed buffer (the packed fields, not those kept apart)."""
        return sum(f.numel for f in self.fields if not f.apart) if self.packed else 0

    @property
    def quantized(self) -> bool:
        return any(f.fp8 for f in self.fields)

    def stored_as(self, kv_dtype: str) -> CacheLayout:
        """This layout with its quantizable fields stored as ``kv_dtype`` (``auto``: unchanged)."""
        check_choice("kv_dtype", kv_dtype, KV_DTYPES)
        if kv_dtype == "auto":
            return self
        if kv_dtype == fp8_model1.KV_DTYPE:
            return self._stored_as_model1()
        fields = tuple(dataclasses.replace(f, storage=kv_dtype) if f.quantize else f for f in self.fields)
        return dataclasses.replace(self, fields=fields, packed=False)

    def _stored_as_model1(self) -> CacheLayout:
        """Fields with rotary dims in FlashMLA's MODEL1 layout; other quantizable ones as fp8_e4m3 (V4's
        indexer keys, kept as DeepSeek-V3.2 keeps its indexer's)."""
        if not any(f.quantize and f.rope for f in self.fields):
            names = ", ".join(f.name for f in self.fields)
            raise ValueError(f"kv_dtype=fp8_model1 is DeepSeek-V4's cache layout (csa, hca); this cache's fields "
                             f"({names}) have no rotary tail it applies to: use kv_dtype=auto or fp8_e4m3")
        fields = tuple(dataclasses.replace(f, storage=fp8_model1.KV_DTYPE if f.rope else "fp8_e4m3")
                       if f.quantize else f for f in self.fields)
        return dataclasses.replace(self, fields=fields, packed=False)

    def positions(self, context: int) -> int:
        """Positions a sequence of ``context`` tokens keeps in the per-position fields. All of them
        here; a layout keeping a ring of ``w`` positions returns ``min(w, context)``."""
        return context

    def rows(self, field: CacheField, context: int) -> int:
        """Rows ``field`` holds for a sequence of ``context`` tokens."""
        if field.ring is not None:
            return min(context, field.ring)
        if field.every is not None:
            return context // field.every
        return self.positions(context)

    @property
    def growing(self) -> bool:
        """Whether the cache grows with the context without bound (False: rings only)."""
        unbounded = 2 ** 62
        return any(f.every or (f.per_position and self.positions(unbounded) == unbounded) for f in self.fields)

    def bytes_at(self, context: int, dtype: torch.dtype) -> int:
        """Bytes one sequence's cache holds at ``context`` tokens, each field's real rows."""
        return sum(f.bytes_for_rows(self.rows(f, context), dtype) for f in self.fields)

    def check_pageable(self, page_size: int) -> None:
        """Pages hold positions: fields with rows of their own (a ring, compressed entries: swa, csa,
        hca) are not paged. A user's setting, so a ValueError (the case is skipped with it)."""
        if not all(f.per_position for f in self.fields):
            raise _not_paged(page_size)

    def nbytes(self, *, batch: int, context: int | Sequence[int], dtype: torch.dtype,
               page_size: int | None = None) -> int:
        """Bytes of a cache of ``batch`` sequences holding ``context`` tokens each (one number, or
        one per sequence: a ragged batch). Contiguous: every sequence gets the longest one's
        rows. Paged: each sequence whole pages of its own, plus the int32 block table."""
        # One context for all: arithmetic, not a list per sequence (a batch of 2^31-1 built 17 GB of lists).
        lengths = [context] if isinstance(context, int) else _lengths(batch, context)
        if page_size is None:
            return batch * self.bytes_at(max(lengths), dtype)
        self.check_pageable(page_size)
        per_token = self.bytes_per_token(dtype)
        check_page_size(page_size)
        pages = [math.ceil(self.positions(n) / page_size) for n in lengths]
        total = batch * pages[0] if isinstance(context, int) else sum(pages)
        return total * page_size * per_token + batch * max(pages) * _TABLE_DTYPE.itemsize


def _not_paged(page_size: object) -> ValueError:
    return ValueError(f"page_size={page_size}: a ring (sliding-window) or compressed cache is not paged; "
                      "leave page_size unset for this layout")


_TABLE_DTYPE = torch.int32  # block tables are int32 in vLLM, FlashInfer and FlashMLA


def check_page_size(page_size: object) -> int:
    """A page size is a positive power of two (kernels index pages with shifts; FlashMLA takes 64)."""
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size <= 0 \
            or page_size & (page_size - 1):
        raise ValueError(f"page_size={page_size!r} is not allowed: a page size is a positive power of two "
                         "(e.g. 16, 64)")
    return page_size


def _is_integer(n: object) -> bool:
    """An int, a numpy or 0-dim torch integer (what ``operator.index`` takes); not a bool, a float or text."""
    if isinstance(n, bool):
        return False
    try:
        operator.index(n)
    except TypeError:
        return False
    return True


def _check_sizes(batch: object, max_len: object) -> None:
    """A positive integer batch, and a positive integer capacity or a list of them (never a float
    truncated, a bool, or a string read as a list of characters)."""
    def positive(n: object) -> bool:
        return _is_integer(n) and operator.index(n) > 0

    sizes = max_len if isinstance(max_len, Sequence) and not isinstance(max_len, (str, bytes)) else [max_len]
    if not positive(batch) or not sizes or not all(positive(n) for n in sizes):
        raise ValueError(f"cache batch={batch!r}, max_len={max_len!r}: both must be positive integers "
                         "(max_len may be one per sequence in a paged cache)")


def _lengths(batch: int, context: int | Sequence[int]) -> list[int]:
    if isinstance(context, int):
        return [context] * batch
    lengths = [int(n) for n in context]
    if len(lengths) != batch:
        raise ValueError(f"{len(lengths)} sequence lengths {lengths} for a batch of {batch}; "
                         f"give one length per sequence ({batch})")
    return lengths


class KVCache:
    """Buffers of ``max_len`` positions allocated once; ``write`` copies into a slice, never grows.

    ``length`` is how many positions hold valid entries. The harness reads and resets it so that a
    timed decode step can be repeated at the same context length. ``seq_lens`` (None: every
    sequence holds ``length``) makes the batch ragged; ``length`` is then the longest.

    ``page_size``: the buffers are pools of pages ``[Q, P, *shape]`` and ``block_table[b, j]`` is
    the page holding sequence b's positions ``[j·P, (j+1)·P)``. ``max_len`` may then be one
    capacity per sequence, and each sequence gets only its own pages. Pages are handed out in
    reverse order so that no sequence's pages are adjacent (a kernel that ignored the table would
    read the wrong entries). Reads gather the pages into ``[B, T, *shape]`` (a copy, made by the
    CPU kernels; a paged kernel reads ``pool(name)`` and ``block_table`` instead).
    """

    def __init__(self, layout: CacheLayout, *, batch: int, max_len: int | Sequence[int], dtype: torch.dtype,
                 device: torch.device | str, page_size: int | None = None) -> None:
        _check_sizes(batch, max_len)
        batch = operator.index(batch)
        if not isinstance(max_len, Sequence):
            max_len = operator.index(max_len)
        if page_size is None and not isinstance(max_len, int):
            raise ValueError(f"max_len={list(max_len)}: one capacity per sequence needs a paged cache "
                             "(page_size=...)")
        uniform = isinstance(max_len, int)
        # One capacity for all: no list of `batch` entries (a batch of 10^9 raised MemoryError building it).
        capacities = [max_len] if uniform else _lengths(batch, max_len)
        self.layout = layout
        self.batch = batch
        self.max_len = max(capacities)
        self._capacities = None if uniform else capacities
        self.page_size = None if page_size is None else check_page_size(page_size)
        self.length = 0
        self.seq_lens: list[int] | None = None
        # Plans ``layer.decode``/``prefill`` made on this cache, kept so that a loop plans once.
        self.plans: dict[tuple[object, ...], Any] = {}
        self.block_table: Tensor | None = None
        if self.page_size is None:
            rows: tuple[int, ...] = (batch, layout.positions(self.max_len))  # a ring keeps fewer rows
        elif layout.positions(2 ** 62) != 2 ** 62:  # a ring layout, even while the context fits its window
            raise _not_paged(page_size)
        else:
            layout.check_pageable(self.page_size)
            P = self.page_size
            pages = [math.ceil(n / P) for n in capacities]
            if uniform:  # sequence b's pages, in reverse order as below: one arange, no loop over the batch
                num_pages = batch * pages[0]
                table = (num_pages - 1 - torch.arange(num_pages, dtype=torch.int64)).to(_TABLE_DTYPE).view(batch, -1)
            else:
                num_pages = sum(pages)
                order = list(range(num_pages - 1, -1, -1))
                table = torch.zeros(batch, max(pages), dtype=_TABLE_DTYPE)  # unused slots: page 0, never read
                for b, n in enumerate(pages):
                    table[b, :n] = torch.tensor(order[:n], dtype=_TABLE_DTYPE)
                    del order[:n]
            self.block_table = table.to(device)
            rows = (num_pages, P)
        self.dtype = dtype
        self.buffers: dict[str, Tensor] = {}
        self.fields: dict[str, Tensor] = {}
        self.scales: dict[str, Tensor] = {}  # fp8 fields' float32 scales [*rows, numel / tile]
        self.model1: dict[str, fp8_model1.Model1Rows] = {}  # fp8_model1 fields: blocks [B, N, bytes]
        if layout.packed:
            packed = torch.zeros(*rows, layout.packed_width, dtype=dtype, device=device)
            self.buffers["packed"] = packed
            offset = 0
            for field in layout.fields:
                if not field.apart:
                    self.fields[field.name] = packed[..., offset:offset + field.numel]
                    offset += field.numel
        for field in layout.fields:
            if layout.packed and not field.apart:
                continue  # a view of the packed buffer
            # A ring or compressed field keeps rows of its own (never paged: checked above).
            own = rows if field.per_position else (batch, layout.rows(field, self.max_len))
            if field.model1 is not None:
                assert not self.paged, "a compressed or ring field is never paged"
                self.model1[field.name] = fp8_model1.Model1Rows(field.model1, batch=batch, rows=own[1], device=device)
                self.buffers[field.name] = self.fields[field.name] = self.model1[field.name].blocks_BNW
                continue
            buf = torch.zeros(*own, *field.shape, dtype=quant.FP8 if field.fp8 else dtype, device=device)
            self.buffers[field.name] = buf
            self.fields[field.name] = buf
            if field.fp8:
                scale = torch.ones(*own, field.numel // field.tile, dtype=quant.SCALE_DTYPE, device=device)
                self.buffers[f"{field.name}.scale"] = scale
                self.scales[field.name] = scale
        self._field = {f.name: f for f in layout.fields}

    @property
    def paged(self) -> bool:
        return self.page_size is not None

    def rows_of(self, name: str) -> int:
        """Rows field ``name`` holds per sequence (a ring's size, a compressed field's entries, max_len)."""
        return self.layout.rows(self._field[name], self.max_len)

    def __getitem__(self, name: str) -> Tensor:
        """The whole preallocated field ``[B, rows, *shape]``: rows = max_len, or a ring's positions (a view
        of the buffer when stored in the compute dtype and contiguous; an fp8 field: dequantized, a copy)."""
        return self.read(name, self.max_len)

    def pool(self, name: str) -> Tensor:
        """A paged field's pool ``[Q, P, *shape]`` as allocated (``"packed"``: the packed rows; an fp8
        field: its e4m3 values, with ``scale_pool``)."""
        assert self.paged, "this cache is not paged"
        return self.buffers["packed"] if name == "packed" else self.fields[name]

    def scale_pool(self, name: str) -> Tensor:
        """A paged fp8 field's scales ``[Q, P, numel / tile]``."""
        assert self.paged and name in self.scales, f"{name} is not a paged fp8 field"
        return self.scales[name]

    @property
    def packed(self) -> Tensor:
        assert self.layout.packed, "this cache layout is not packed"
        if self.paged:
            return self._gather(self.buffers["packed"], self.max_len)
        return self.buffers["packed"]

    @property
    def capacities(self) -> list[int]:
        """Positions each sequence can hold: ``max_len`` for all, or a paged cache's own per sequence."""
        return [self.max_len] * self.batch if self._capacities is None else self._capacities

    def set_seq_lens(self, seq_lens: Sequence[int]) -> None:
        """Make the batch ragged: sequence b holds ``seq_lens[b]`` valid positions."""
        items = list(seq_lens) if isinstance(seq_lens, Iterable) and not isinstance(seq_lens, (str, bytes)) else None
        if items is None or not all(_is_integer(n) for n in items):
            raise ValueError(f"seq_lens={seq_lens!r} is not allowed: one integer length per sequence "
                             f"({self.batch})")
        lengths = [operator.index(n) for n in items]
        if len(lengths) != self.batch:
            raise ValueError(f"seq_lens={lengths} has {len(lengths)} lengths for a cache of batch={self.batch}; "
                             f"give exactly {self.batch}")
        for b, (n, cap) in enumerate(zip(lengths, self.capacities, strict=True)):
            if not 0 <= n <= cap:
                raise ValueError(f"seq_lens[{b}]={n} is outside [0, {cap}], that sequence's capacity")
        self.seq_lens = lengths
        self.length = max(lengths)

    def advance(self, new: int) -> None:
        """Mark ``new`` more positions valid in every sequence (after a decode step)."""
        self.length += new
        if self.seq_lens is not None:
            self.seq_lens = [n + new for n in self.seq_lens]

    def _stored(self, name: str, value_BL: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(buffer, value) pairs that store ``value`` in field ``name``: itself, or e4m3 values and scales."""
        if name not in self.scales:
            return [(self.fields[name], value_BL)]
        field = self._field[name]
        values_BLX, scale_BLG = quant.quantize(value_BL.flatten(2), field.tile)
        return [(self.fields[name], values_BLX.view(value_BL.shape)), (self.scales[name], scale_BLG)]

    def write(self, start: int | Tensor, **entries_BL: Tensor) -> None:
        """Copy new entries into positions [start, start + L) of each named field, in place;
        ``start`` is one position or one per sequence ``[B]`` (a ragged batch)."""
        for name, entry_BL in entries_BL.items():
            L = entry_BL.shape[1]
            if name in self.model1:
                pos = torch.as_tensor(start, device=entry_BL.device).view(-1, 1)
                self.model1[name].write_rows(pos + torch.arange(L, device=entry_BL.device), entry_BL)
                continue
            for field, value_BL in self._stored(name, entry_BL):
                if isinstance(start, int) and not self.paged:
                    end = start + L
                    assert end <= self.max_len, f"cache overflow: writing up to {end} > max_len {self.max_len}"
                    field[:, start:end].copy_(value_BL)
                    continue
                pos_BL = torch.as_tensor(start, device=value_BL.device).view(-1, 1) \
                    + torch.arange(L, device=value_BL.device)
                pos_BL = pos_BL.expand(self.batch, L)
                if not self.paged:
                    field[torch.arange(self.batch, device=pos_BL.device).unsqueeze(1), pos_BL] = value_BL
                    continue
                P = self.page_size
                assert P is not None and self.block_table is not None
                page_BL = self.block_table.to(pos_BL.device).gather(1, pos_BL // P).long()
                field.flatten(0, 1)[page_BL * P + pos_BL % P] = value_BL

    def write_rows(self, rows_R: Tensor, **entries_BR: Tensor) -> None:
        """Copy entries into the given rows of each named field (a ring cache's write slots), in place."""
        assert not self.paged, "rows are positions of a contiguous cache"
        for name, entry_BR in entries_BR.items():
            if name in self.model1:
                self.model1[name].write_rows(rows_R, entry_BR)
                continue
            for field, value_BR in self._stored(name, entry_BR):
                if field.dtype == quant.FP8:  # no index_copy_ kernel for float8: copy the bytes
                    field, value_BR = field.view(torch.uint8), value_BR.view(torch.uint8)
                field.index_copy_(1, rows_R, value_BR)

    def gather(self, name: str, index_BK: Tensor) -> Tensor:
        """Rows ``index_BK[b, k]`` of field ``name`` for each sequence b: ``[B, K, *shape]``. A sparse
        step's read (the indexer's picks): only those rows are copied, and of an fp8 field only those
        are dequantized. One ``index_select`` on the flattened rows (a third of the time of ``gather``
        with an expanded index: [1, 32768, 512] float32, 512 picks, one thread, 0.53 vs 1.55 ms)."""
        B, K = index_BK.shape
        if name in self.model1:
            return self.model1[name].gather(index_BK, self.dtype)
        if self.paged:
            P = self.page_size
            assert P is not None and self.block_table is not None
            page_BK = self.block_table.to(index_BK.device).gather(1, index_BK // P).long()
            flat_N = (page_BK * P + index_BK % P).flatten()
        else:
            rows = self.fields[name].shape[1] if name != "packed" else self.buffers[name].shape[1]
            flat_N = (index_BK + torch.arange(B, device=index_BK.device).unsqueeze(1) * rows).flatten()

        def pick(buffer: Tensor) -> Tensor:
            return buffer.flatten(0, 1).index_select(0, flat_N).unflatten(0, (B, K))

        # "packed": the packed rows [c_kv; k_rope] whole (a kernel reading FlashMLA's layout).
        values_BKX = pick(self.buffers[name] if name == "packed" else self.fields[name])
        if name not in self.scales:
            return values_BKX
        return quant.dequantize(values_BKX.flatten(2), pick(self.scales[name]), self.dtype).view(values_BKX.shape)

    def view(self, end: int, seq_lens_B: Tensor | None = None) -> CacheView:
        """What a kernel reads for a step over positions ``[0, end)``: the storage as allocated, the
        block table, the per-sequence lengths (``seq_lens_B``, a ragged step's; None: all ``end``)
        and fp8 scales, and where each per-position field lies (``attnbench.variants.cache_view``). Nothing
        is copied; the kernel decides how to read it."""
        slots, offset = [], 0
        for field in self.layout.fields:
            if not field.per_position:
                continue
            in_packed = self.layout.packed and not field.apart
            slots.append(FieldSlot(field.name, "packed" if in_packed else field.name,
                                   offset if in_packed else 0, field.numel, field.tile if field.fp8 else None))
            offset += field.numel if in_packed else 0
        storage = {name: buf for name, buf in self.buffers.items() if not name.endswith(".scale")}
        return CacheView(ViewLayout(self.page_size, tuple(slots)), storage, dict(self.scales), self.block_table,
                         seq_lens_B, end, self.batch, self.dtype)

    def read(self, name: str, end: int) -> Tensor:
        """Positions [0, end) of a field: a view of the buffer (no copy), or the pages gathered; an fp8
        field dequantized to the cache's compute dtype (a copy, as a kernel without fp8 support needs)."""
        if name in self.model1:
            return self.model1[name].read(end, self.dtype)
        values = self._gather(self.fields[name], end) if self.paged else self.fields[name][:, :end]
        if name not in self.scales:
            return values
        scale = self._gather(self.scales[name], end) if self.paged else self.scales[name][:, :end]
        return quant.dequantize(values.flatten(2), scale, self.dtype).view(values.shape)

    def _gather(self, pool_QP: Tensor, end: int) -> Tensor:
        P = self.page_size
        assert P is not None and self.block_table is not None
        pages = math.ceil(end / P)
        table_BJ = self.block_table[:, :pages].long()
        return pool_QP[table_BJ].flatten(1, 2)[:, :end]

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors (and its block table), measured from the tensors themselves."""
        table = [] if self.block_table is None else [self.block_table]
        return sum(buf.numel() * buf.element_size() for buf in [*self.buffers.values(), *table])

    def fill_random_(self, length: int, *, seed: int = 0, sequences: int | None = None) -> None:
        """Fill [0, length) with unit-normal values, drawn on the cache's device, and mark it valid.

        Stands in for a long prefill when only the decode step is measured: the step's cost does
        not depend on the cached values, and a 128k-token prefill would dominate a CPU sweep.
        The values are drawn straight into the cache's storage (``normal_`` on a view), one batch
        row at a time so that each view is contiguous (the vectorised path): nothing beside the
        cache is allocated, so the memory a case is predicted to need holds during set-up too.
        Seeded per buffer, so the same seed gives the same values. ``sequences``: draw into the first
        that many batch rows only, the rest left as they are (the memory dry run: an in-place draw
        allocates nothing, one row shows it, and a loop over a 100000-sequence batch on fake tensors
        took minutes).
        """
        if not 0 <= length <= self.max_len:
            raise ValueError(f"fill length {length} is outside [0, max_len={self.max_len}]")
        by_name = {f.name: f for f in self.layout.fields}
        for name, buf in self.buffers.items():
            # Each field's own rows at ``length`` (the packed buffer: the layout's positions).
            field = by_name.get(name.removesuffix(".scale"))
            rows = self.layout.positions(length) if field is None else self.layout.rows(field, length)
            generator = torch.Generator(device=buf.device).manual_seed(seed)
            if name in self.model1:
                self.model1[name].fill_random_(rows, generator, sequences)
                continue
            for row_SX in buf[:sequences, :rows]:
                if buf.dtype == quant.FP8:
                    # Bytes below 0x7F are the finite non-negative e4m3 values (0x7F is NaN); the
                    # scale rows below keep them about unit-sized, as normal_ does for the others.
                    row_SX.view(torch.uint8).random_(0, 0x7F, generator=generator)
                elif name.endswith(".scale"):
                    row_SX.fill_(1 / quant.E4M3_MAX)
                else:
                    row_SX.normal_(generator=generator)
        self.length = length
        self.seq_lens = None  # every sequence now holds ``length``: an earlier ragged batch's lengths would hide the fill
