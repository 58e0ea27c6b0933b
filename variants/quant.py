"""fp8 (e4m3) storage of cache entries with per-token scales, as FlashMLA and DeepSeek-V3.2 keep them.

Legend: R rows (tokens), X elements per row, G scale groups per row (tiles of ``tile`` elements).

Each row is split into tiles of ``tile`` consecutive elements; a tile is stored as e4m3 values
``round(x / s)`` with one float32 scale ``s = amax(|x|) / 448`` (448 is e4m3's largest finite value),
so every tile uses the format's full range. FlashMLA's sparse decode layout for DeepSeek-V3.2 is this
with tiles of 128 over the 512-wide latent (4 scales), the rotary key kept in bf16 beside it:
512 + 4·4 + 64·2 = 656 bytes per token. Reading dequantizes ``values · s`` in the compute dtype.

Round-off: e4m3 has 3 mantissa bits, so a value in the normal range is off by at most 2^-4 of
itself; below the smallest normal (2^-6 · s) the error is at most half the subnormal step,
2^-10 · s. ``round_trip_bound`` states that per element.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # largest finite e4m3fn value
SCALE_DTYPE = torch.float32
TILE = 128  # elements per scale (FlashMLA, DeepSeek-V3.2's block size)


def tile_for(width: int) -> int:
    """Elements per scale for a row whose last dimension is ``width``: 128 where it divides, else the
    largest divisor of ``width`` that also divides 128 (one scale per head of 64, say)."""
    return math.gcd(TILE, width)


def quantize(x_RX: Tensor, tile: int) -> tuple[Tensor, Tensor]:
    """e4m3 values ``[R, X]`` and float32 scales ``[R, X / tile]`` of ``x`` (any leading dims)."""
    assert x_RX.shape[-1] % tile == 0, (x_RX.shape, tile)
    x_RGT = x_RX.float().unflatten(-1, (-1, tile))
    amax_RG1 = x_RGT.abs().amax(-1, keepdim=True)
    # An all-zero tile keeps scale 1 (any scale reproduces zeros; 1 avoids a division by zero).
    scale_RG1 = torch.where(amax_RG1 > 0, amax_RG1 / E4M3_MAX, torch.ones_like(amax_RG1))
    values_RX = (x_RGT / scale_RG1).clamp(-E4M3_MAX, E4M3_MAX).to(FP8).flatten(-2)
    return values_RX, scale_RG1.squeeze(-1).to(SCALE_DTYPE)


def dequantize(values_RX: Tensor, scale_RG: Tensor, dtype: torch.dtype) -> Tensor:
    """``values · scale`` per tile, in ``dtype`` (the compute dtype of the step reading the cache)."""
    tile = values_RX.shape[-1] // scale_RG.shape[-1]
    x_RGT = values_RX.to(SCALE_DTYPE).unflatten(-1, (-1, tile)) * scale_RG.unsqueeze(-1)
    return x_RGT.flatten(-2).to(dtype)


def round_trip_bound(x_RX: Tensor, tile: int) -> Tensor:
    """The largest error ``|dequantize(quantize(x)) - x|`` the format allows, per element."""
    x_RGT = x_RX.double().unflatten(-1, (-1, tile))
    scale_RG1 = x_RGT.abs().amax(-1, keepdim=True) / E4M3_MAX
    bound_RGT = torch.maximum(x_RGT.abs() * 2.0 ** -4, scale_RG1 * 2.0 ** -10)
    return bound_RGT.flatten(-2)
