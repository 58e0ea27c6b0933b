"""DeepSeek-V4's fp8 cache as FlashMLA stores it (``kv_dtype=fp8_model1``; FlashMLA's ``MODEL1_FP8Sparse``).

Legend: B batch, N blocks, P entries per block, R rows (entries), X an entry's width (nope + rope),
Y nope values, Z rope values, G scale tiles per entry, K picked rows.

One entry (a 512-wide V4 head, its last 64 dims rotary) is stored as 448 "nope" values in e4m3, in
7 tiles of 64, each tile with a power-of-two scale (ue8m0: an 8-bit exponent, no mantissa), and
the 64 rotary values in bf16, not quantized: 448 + 64·2 + 7 scale bytes + 1 pad byte = 584 bytes.
The bytes of a block of P entries are not interleaved per entry: first the P entries' values
(448 e4m3 then 128 bytes of bf16, 576 bytes each), then the P entries' scales (8 bytes each: 7
ue8m0, 1 unused), and the block is padded to a multiple of 576 bytes (FlashMLA's ``tests/quant.py``,
``quantize_k_cache``; its kernels load the block with 576-byte rows). At P = 64: 64·584 = 37,376
bytes, padded to 65·576 = 37,440, 585 bytes per entry in the long run.

A scale is ``2^ceil(log2(max(amax / 448, 1e-4)))`` (FlashMLA's ``_cast_scale_inv_to_ue8m0``): the
smallest power of two that keeps the tile's largest value within e4m3's 448, so a tile uses at
least half the format's range; never below 2^-13. Round-off: a nope value in e4m3's normal range is
off by at most 2^-4 of itself, below it by at most half the subnormal step, 2^-10 · scale; a rotary
value by bf16's 2^-8 of itself (8 significant bits) (``round_trip_bound``).

Other widths (tiny test shapes) keep the same scheme: tiles of ``gcd(64, nope)``, a scale slot of
``G + 1`` bytes, blocks padded to 576 bytes; V4's 512 = 448 + 64 gives exactly the figures above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

KV_DTYPE = "fp8_model1"
FP8 = torch.float8_e4m3fn
SCALE = torch.float8_e8m0fnu  # ue8m0: 2^(byte - 127)
ROPE = torch.bfloat16  # the rotary values are kept in bf16 whatever the compute dtype (FlashMLA's layout)
E4M3_MAX = 448.0
TILE = 64  # nope values per scale (FlashMLA MODEL1: d=512, d_nope=448, d_rope=64, tile 64, 7 tiles)
ALIGN = 576  # a block's bytes are padded to a multiple of this
BLOCK = 64  # entries per block (FlashMLA's MODEL1 tests use 64 for the window's cache, 256 for the main one)
MIN_SCALE = 1e-4  # FlashMLA clamps amax / 448 to this before rounding up to a power of two


@dataclass(frozen=True)
class Model1Format:
    """The byte layout of one field: ``width`` values per entry, the trailing ``rope`` kept in bf16."""

    width: int  # X
    rope: int  # Z
    block: int = BLOCK  # P

    def __post_init__(self) -> None:
        nope = self.width - self.rope
        if nope <= 0 or nope % 2 or self.rope % 2 or self.block <= 0:
            raise ValueError(f"kv_dtype=fp8_model1 needs an even number of nope dims and of rotary dims; a "
                             f"{self.width}-wide entry with {self.rope} rotary dims has {nope} nope dims")

    @property
    def nope(self) -> int:  # Y
        return self.width - self.rope

    @property
    def tile(self) -> int:
        return math.gcd(TILE, self.nope)

    @property
    def tiles(self) -> int:  # G
        return self.nope // self.tile

    @property
    def value_bytes(self) -> int:
        """Bytes of one entry's values: nope e4m3 then rope bf16 (576 at V4's shape)."""
        return self.nope * FP8.itemsize + self.rope * ROPE.itemsize

    @property
    def scale_bytes(self) -> int:
        """Bytes of one entry's scale slot: its ue8m0 scales and one pad byte (8 at V4's shape)."""
        return self.tiles + 1

    @property
    def entry_bytes(self) -> int:
        """Bytes one entry occupies in a block, padding excluded: 584 at V4's shape."""
        return self.value_bytes + self.scale_bytes

    @property
    def block_bytes(self) -> int:
        """Bytes of one block of ``block`` entries, padded to a multiple of 576."""
        return math.ceil(self.block * self.entry_bytes / ALIGN) * ALIGN

    def blocks(self, rows: int) -> int:
        return math.ceil(rows / self.block)

    def nbytes(self, rows: int) -> int:
        """Bytes of storage for ``rows`` entries: whole padded blocks."""
        return self.blocks(rows) * self.block_bytes

    # -- the three regions of a block buffer [..., N, block_bytes] (uint8), as views -----------------
    def values(self, blocks_NW: Tensor) -> Tensor:
        """``[..., N, P, value_bytes]``: each entry's nope bytes then rope bytes."""
        P = self.block
        return blocks_NW[..., :P * self.value_bytes].unflatten(-1, (P, self.value_bytes))

    def scales(self, blocks_NW: Tensor) -> Tensor:
        """``[..., N, P, scale_bytes]``: each entry's ue8m0 scale bytes, then its pad byte."""
        P, v = self.block, self.value_bytes
        return blocks_NW[..., P * v:P * (v + self.scale_bytes)].unflatten(-1, (P, self.scale_bytes))


def ue8m0_scale(amax: Tensor) -> Tensor:
    """The power-of-two scale of tiles with largest magnitude ``amax`` (float32)."""
    return torch.pow(2.0, torch.log2(torch.clamp_min(amax.float() / E4M3_MAX, MIN_SCALE)).ceil())


def quantize(x_RX: Tensor, fmt: Model1Format) -> tuple[Tensor, Tensor, Tensor]:
    """e4m3 nope ``[R, Y]``, ue8m0 scales ``[R, G]`` and bf16 rope ``[R, Z]`` of entries ``x`` (any leading dims)."""
    x_RX = x_RX.float()
    nope_RGT = x_RX[..., :fmt.nope].unflatten(-1, (fmt.tiles, fmt.tile))
    scale_RG1 = ue8m0_scale(nope_RGT.abs().amax(-1, keepdim=True))
    # x / scale is exact (a power of two); the cast rounds to e4m3; |x / scale| <= 448 by the choice of scale.
    nope_RY = (nope_RGT / scale_RG1).clamp(-E4M3_MAX, E4M3_MAX).to(FP8).flatten(-2)
    return nope_RY, scale_RG1.squeeze(-1).to(SCALE), x_RX[..., fmt.nope:].to(ROPE)


def dequantize(nope_RY: Tensor, scale_RG: Tensor, rope_RZ: Tensor, dtype: torch.dtype) -> Tensor:
    """``[R, X]`` in ``dtype``: nope values times their tile's scale (exact in float32: a power of two), then rope."""
    G = scale_RG.shape[-1]
    nope_RGT = nope_RY.float().unflatten(-1, (G, -1)) * scale_RG.float().unsqueeze(-1)
    return torch.cat([nope_RGT.flatten(-2).to(dtype), rope_RZ.to(dtype)], dim=-1)


def round_trip_bound(x_RX: Tensor, fmt: Model1Format) -> Tensor:
    """The largest error ``|dequantize(quantize(x)) - x|`` the format allows, per element."""
    x_RX = x_RX.double()
    nope_RGT = x_RX[..., :fmt.nope].unflatten(-1, (fmt.tiles, fmt.tile))
    scale_RG1 = ue8m0_scale(nope_RGT.abs().amax(-1, keepdim=True)).double()
    nope_bound = torch.maximum(nope_RGT.abs() * 2.0 ** -4, scale_RG1 * 2.0 ** -10).flatten(-2)
    return torch.cat([nope_bound, x_RX[..., fmt.nope:].abs() * 2.0 ** -8], dim=-1)


def encode(x_RX: Tensor, fmt: Model1Format) -> tuple[Tensor, Tensor]:
    """The bytes of entries ``x``: values ``[R, value_bytes]`` and scale slots ``[R, scale_bytes]`` (uint8)."""
    nope_RY, scale_RG, rope_RZ = quantize(x_RX, fmt)
    values = torch.cat([nope_RY.view(torch.uint8), rope_RZ.contiguous().view(torch.uint8)], dim=-1)
    pad = scale_RG.new_zeros(*scale_RG.shape[:-1], 1, dtype=torch.uint8)
    return values, torch.cat([scale_RG.view(torch.uint8), pad], dim=-1)


def decode(values_RV: Tensor, scales_RS: Tensor, fmt: Model1Format, dtype: torch.dtype) -> Tensor:
    """Entries ``[R, X]`` in ``dtype`` from their value bytes and scale slots (as ``encode`` wrote them)."""
    nope_RY = values_RV[..., :fmt.nope].contiguous().view(FP8)
    rope_RZ = values_RV[..., fmt.nope:].contiguous().view(ROPE)
    scale_RG = scales_RS[..., :fmt.tiles].contiguous().view(SCALE)
    return dequantize(nope_RY, scale_RG, rope_RZ, dtype)


def pack_blocks(x_NPX: Tensor, fmt: Model1Format) -> Tensor:
    """``[N, block_bytes]`` uint8: blocks of ``P`` entries in FlashMLA's byte layout (padding zeroed)."""
    N = x_NPX.shape[0]
    blocks_NW = torch.zeros(N, fmt.block_bytes, dtype=torch.uint8, device=x_NPX.device)
    values, scales = encode(x_NPX, fmt)
    fmt.values(blocks_NW).copy_(values)
    fmt.scales(blocks_NW).copy_(scales)
    return blocks_NW


def unpack_blocks(blocks_NW: Tensor, fmt: Model1Format, dtype: torch.dtype) -> Tensor:
    """``[N, P, X]``: every entry of the blocks, dequantized."""
    return decode(fmt.values(blocks_NW), fmt.scales(blocks_NW), fmt, dtype)


class Model1Rows:
    """One cache field's rows stored as blocks ``[B, N, block_bytes]`` (uint8), one sequence's rows
    ``[j·P, (j+1)·P)`` in its block j: what ``KVCache`` keeps for a field with ``storage="fp8_model1"``."""

    def __init__(self, fmt: Model1Format, *, batch: int, rows: int, device: torch.device | str) -> None:
        self.fmt, self.rows = fmt, rows
        self.blocks_BNW = torch.zeros(batch, fmt.blocks(rows), fmt.block_bytes, dtype=torch.uint8, device=device)

    def _where(self, rows_R: Tensor) -> tuple[Tensor, Tensor]:
        return rows_R // self.fmt.block, rows_R % self.fmt.block

    def write_rows(self, rows_R: Tensor, x_BRX: Tensor) -> None:
        """Store entries ``x`` at rows ``rows_R`` of every sequence (``rows_R``: [R], or [B, R] per sequence)."""
        values, scales = encode(x_BRX, self.fmt)
        block, slot = self._where(rows_R.to(self.blocks_BNW.device).long())
        batch = torch.arange(self.blocks_BNW.shape[0], device=block.device).unsqueeze(1)
        self.fmt.values(self.blocks_BNW)[batch, block, slot] = values
        self.fmt.scales(self.blocks_BNW)[batch, block, slot] = scales

    def read(self, end: int, dtype: torch.dtype) -> Tensor:
        """``[B, end, X]``: rows [0, end), dequantized (a copy)."""
        used = self.fmt.blocks(end)
        entries_BNPX = unpack_blocks(self.blocks_BNW[:, :used], self.fmt, dtype)
        return entries_BNPX.flatten(1, 2)[:, :end]

    def gather(self, index_BK: Tensor, dtype: torch.dtype) -> Tensor:
        """``[B, K, X]``: rows ``index_BK[b, k]`` of each sequence, only those dequantized."""
        block, slot = self._where(index_BK.long())
        batch = torch.arange(index_BK.shape[0], device=index_BK.device).unsqueeze(1)
        values = self.fmt.values(self.blocks_BNW)[batch, block, slot]
        scales = self.fmt.scales(self.blocks_BNW)[batch, block, slot]
        return decode(values, scales, self.fmt, dtype)

    def fill_random_(self, rows: int, generator: torch.Generator, sequences: int | None = None) -> None:
        """Rows [0, rows) of every sequence (or of the first ``sequences``): unit-normal entries, quantized
        and stored (a benchmark's prefill)."""
        for b in range(self.blocks_BNW.shape[0])[:sequences]:  # one sequence at a time: a transient of one sequence's rows
            self._write_one(b, torch.randn(rows, self.fmt.width, generator=generator, device=self.blocks_BNW.device))

    def _write_one(self, b: int, x_RX: Tensor) -> None:
        values, scales = encode(x_RX, self.fmt)
        block, slot = self._where(torch.arange(x_RX.shape[0], device=x_RX.device))
        self.fmt.values(self.blocks_BNW)[b, block, slot] = values
        self.fmt.scales(self.blocks_BNW)[b, block, slot] = scales
